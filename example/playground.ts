/*
 * `npm run example` (example:express, example:https) without deployment
 * settings: the real server (server.ts, express.ts, https.ts), run as a child
 * process against a local Pebble (Let's Encrypt's test CA) and a local Azurite
 * (Azure Blob Storage emulator), then checked over real HTTPS.
 * Pebble's DNS answers 127.0.0.1 for every name, so *.example.test works offline.
 *
 * EXAMPLE_EXIT_AFTER_CHECK=1 exits right after the check, for CI: 0 when it passed
 * and the server, sent SIGTERM as a supervisor would, then ended by itself
 * (nothing left open), 1 when not. Otherwise it serves until Ctrl-C.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { accessSync, constants } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import { createServer, type AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { createInterface } from 'node:readline'
import type { PeerCertificate, TLSSocket } from 'node:tls'
import { BlobServiceClient } from '@azure/storage-blob'
import { startAzurite, type Azurite } from '../test/support/azurite'
import { startPebble, type Pebble } from '../test/support/pebble'
import { canConnect, waitUntil } from '../test/support/proc'

const DOMAINS = ['www.example.test', 'api.example.test']
const CONTAINER = 'autocertcache'

/** Runs `serverFile` (an example whose deploy mode takes the variables of server.ts) in the playground. */
export async function playground (serverFile: string): Promise<void> {
  const name = `example/${path.basename(serverFile)}`
  ensurePebble(name)
  const t0 = performance.now()
  const since = (): string => `${Math.round(performance.now() - t0)} ms`
  const exitAfterCheck = process.env.EXAMPLE_EXIT_AFTER_CHECK === '1'

  console.log(`fastify-autocert playground: ${name} against a local Pebble (ACME CA) and Azurite (Blob Storage)`)
  // Held while Pebble and Azurite pick their own free ports, so they cannot pick these.
  const reserved = await Promise.all([reservePort(), reservePort()])
  const [httpsPort, httpPort] = reserved.map((r) => r.port)
  const [azurite, pebble] = await startServices(httpPort).finally(() => Promise.all(reserved.map((r) => r.release())))
  console.log(`  Azurite  ${azurite.blobEndpoint}`)
  console.log(`  Pebble   ${pebble.directoryUrl} (validates HTTP-01 on port ${httpPort})`)
  const servicesUp = since()

  const tmp = await mkdtemp(path.join(os.tmpdir(), 'autocert-playground-'))
  const rootFile = path.join(tmp, 'pebble-root.pem')
  const root = await pebble.root()
  await writeFile(rootFile, root)

  let server: ChildProcess | undefined
  let stopping: Promise<void> | undefined
  // `verify`: the run fails unless the server ends by itself on SIGTERM.
  const stop = (code: number, verify = false): Promise<void> => {
    stopping ??= (async () => {
      const ended = server === undefined || await stopServer(server, verify)
      await Promise.all([pebble.stop(), azurite.stop(), rm(tmp, { recursive: true, force: true })])
      console.log('stopped: server, Pebble, Azurite')
      process.exit(ended ? code : 1)
    })()
    return stopping
  }
  const onSignal = (): void => { void stop(0) }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  // Pebble and Azurite die with us through the helpers; the server is ours to kill.
  process.on('exit', () => { server?.kill('SIGKILL') })

  console.log(`starting the server: HTTPS on 127.0.0.1:${httpsPort}, HTTP on 127.0.0.1:${httpPort}, DOMAINS=${DOMAINS.join(',')}`)
  // The same entry point and loader (tsx) this process runs with; the variables
  // put the server in deploy mode.
  server = spawn(process.execPath, [...process.execArgv, serverFile], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      DOMAINS: DOMAINS.join(','),
      ACME_EMAIL: 'playground@example.test',
      ACME_DIRECTORY_URL: pebble.directoryUrl,
      AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
      AZURE_STORAGE_CONTAINER: CONTAINER,
      HOST: '127.0.0.1',
      HTTPS_PORT: String(httpsPort),
      HTTP_PORT: String(httpPort),
      // The server trusts Pebble's API through Node's standard variable, as a deployment would.
      NODE_EXTRA_CA_CERTS: pebble.caFile
    }
  })
  for (const stream of [server.stdout, server.stderr]) {
    if (stream !== null) createInterface({ input: stream }).on('line', (line) => console.log(`  server | ${pretty(line)}`))
  }
  server.once('exit', (code, signal) => {
    if (stopping !== undefined) return
    console.error(`the server exited (${code ?? signal}) on its own`)
    void stop(1)
  })

  try {
    await waitUntil('the server', () => canConnect(httpsPort), server, () => 'see its log above', 30_000)
    const listening = since()
    const checkStart = performance.now()
    const [domain, other] = DOMAINS
    const res = await get(httpsPort, domain, root)
    const cert = res.cert
    if (res.status !== 200 || cert.subject.CN !== domain) throw new Error(`unexpected answer: ${res.status}, certificate for ${cert.subject.CN}`)
    const checkMs = Math.round(performance.now() - checkStart)
    const properties = await BlobServiceClient.fromConnectionString(azurite.connectionString)
      .getContainerClient(CONTAINER).getBlobClient(domain).getProperties()
    const second = await get(httpsPort, other, root)
    if (second.status !== 200 || second.cert.subject.CN !== other) throw new Error(`unexpected answer for ${other}: ${second.status}`)
    console.log(`
self-check: GET https://${domain}:${httpsPort}/ -> ${res.status} ${JSON.stringify(res.body.trim())}
  certificate  subject CN=${cert.subject.CN}, issuer CN=${cert.issuer.CN}
               serial ${cert.serialNumber.toUpperCase()}, valid to ${new Date(cert.valid_to).toISOString()}
  TLS          verified: the chain verifies against this run's Pebble root and names ${domain}
  stored in    container ${CONTAINER}, blob ${domain} (${properties.contentLength} bytes: key and chain, shared by every instance)
               ${azurite.blobEndpoint}/${CONTAINER}/${domain}
  also         ${other}: serial ${second.cert.serialNumber.toUpperCase()}, verified, ${second.status}
self-check passed: Pebble + Azurite up after ${servicesUp}, server listening after ${listening}, first HTTPS answer (issuance included) ${checkMs} ms later`)
  } catch (err) {
    console.error(`self-check FAILED: ${err instanceof Error ? err.message : String(err)}`)
    await stop(1)
  }

  if (exitAfterCheck) {
    await stop(0, true)
    return
  }
  const resolve = (name: string): string => `--resolve ${name}:${httpsPort}:127.0.0.1`
  console.log(`
Try it (Ctrl-C stops everything):
  curl ${resolve(DOMAINS[0])} --cacert ${rootFile} https://${DOMAINS[0]}:${httpsPort}/
  curl ${resolve(DOMAINS[1])} --cacert ${rootFile} https://${DOMAINS[1]}:${httpsPort}/status
  curl -i --resolve ${DOMAINS[0]}:${httpPort}:127.0.0.1 http://${DOMAINS[0]}:${httpPort}/   (redirects to https)
`)
}

/**
 * SIGTERM, as a supervisor stops a server. With `verify`, true only when the
 * server then exits by itself with code 0 (its close left nothing open). Not
 * verified after Ctrl-C: the terminal sent the server SIGINT too, and a SIGTERM
 * that lands while it exits kills it. Still running 5 s later: killed, false.
 */
async function stopServer (server: ChildProcess, verify: boolean): Promise<boolean> {
  if (server.exitCode !== null || server.signalCode !== null) return !verify
  const exited = new Promise<string>((resolve) => server.once('exit', (code, signal) => resolve(code === null ? `signal ${signal}` : `code ${code}`)))
  server.kill('SIGTERM')
  let killed = false
  const timer = setTimeout(() => { killed = true; server.kill('SIGKILL') }, 5000)
  const how = await exited
  clearTimeout(timer)
  if (killed) {
    console.log('the server was still running 5 s after SIGTERM: killed')
    return false
  }
  if (!verify) return true
  console.log(`the server exited by itself after SIGTERM, ${how}`)
  return how === 'code 0'
}

async function reservePort (): Promise<{ port: number, release: () => Promise<void> }> {
  const holder = createServer()
  await new Promise<void>((resolve, reject) => holder.once('error', reject).listen(0, '127.0.0.1', resolve))
  return {
    port: (holder.address() as AddressInfo).port,
    release: () => new Promise((resolve) => holder.close(() => resolve()))
  }
}

// Both or neither: a half-started pair would outlive a failed start.
async function startServices (httpPort: number): Promise<[Azurite, Pebble]> {
  // The pebble on PATH that ensurePebble() checked for (Debian's package), whatever PEBBLE_VERSION says.
  const [azurite, pebble] = await Promise.allSettled([startAzurite(), startPebble({ httpPort, version: '2.4' })])
  if (azurite.status === 'fulfilled' && pebble.status === 'fulfilled') return [azurite.value, pebble.value]
  if (azurite.status === 'fulfilled') await azurite.value.stop()
  if (pebble.status === 'fulfilled') await pebble.value.stop()
  throw azurite.status === 'rejected' ? azurite.reason : (pebble as PromiseRejectedResult).reason
}

interface Answer { status: number | undefined, body: string, cert: PeerCertificate }

// A real HTTPS request that trusts Pebble's root only: an unverified chain rejects.
function get (port: number, servername: string, ca: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', servername, headers: { host: `${servername}:${port}` }, ca, agent: false, timeout: 60_000 }, (res) => {
      const cert = (res.socket as TLSSocket).getPeerCertificate()
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, body, cert }))
    })
    req.on('timeout', () => req.destroy(new Error(`no answer from 127.0.0.1:${port} within 60 s`)))
    req.on('error', reject)
  })
}

function ensurePebble (example: string): void {
  if (onPath('pebble') && onPath('pebble-challtestsrv')) return
  if (process.getuid?.() === 0 && onPath('apt-get')) {
    console.log('pebble is not installed: apt-get install -y pebble')
    const apt = (...args: string[]): boolean =>
      spawnSync('apt-get', args, { stdio: 'inherit', env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } }).status === 0
    if (apt('install', '-y', 'pebble') || (apt('update') && apt('install', '-y', 'pebble'))) return
  }
  console.error(`The playground needs Pebble, Let's Encrypt's test CA (pebble and pebble-challtestsrv on PATH):
  Debian/Ubuntu:  sudo apt-get install pebble
  elsewhere:      go install github.com/letsencrypt/pebble/v2/cmd/pebble@latest github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv@latest
To run the real server instead, set ACME_DIRECTORY_URL and AZURE_STORAGE_CONNECTION_STRING (see ${example}).`)
  process.exit(1)
}

function onPath (command: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      accessSync(path.join(dir, command), constants.X_OK)
      return true
    } catch {
      return false
    }
  })
}

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' }

// One pino JSON line as `time LEVEL message key=value ...` (pid and hostname left
// out); anything else as is.
function pretty (line: string): string {
  let entry: unknown
  try {
    entry = JSON.parse(line)
  } catch {
    return line
  }
  if (typeof entry !== 'object' || entry === null) return line
  const { level, time, msg, pid, hostname, ...fields } = entry as Record<string, unknown>
  const clock = typeof time === 'number' ? new Date(time).toISOString().slice(11, 23) : ''
  const text = (v: unknown): string =>
    typeof v === 'string' ? v : typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(1) : JSON.stringify(v)
  const rest = Object.entries(fields).map(([k, v]) => `${k}=${text(v)}`)
  return [clock, (LEVELS[level as number] ?? String(level)).padEnd(5), msg, ...rest].join(' ')
}
