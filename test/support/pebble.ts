import { execFile } from 'node:child_process'
import { rmSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import * as acme from 'acme-client'
import { freePort } from './ports'
import { canConnect, onCrash, spawnTracked, stopChild, waitUntil } from './proc'

export interface PebbleOptions {
  httpPort: number             // port Pebble's VA sends HTTP-01 validation requests to (on 127.0.0.1)
  tlsPort?: number             // TLS-ALPN-01 port (default: a free port)
  validityPeriod?: number      // certificateValidityPeriod in seconds (default Pebble's)
  env?: Record<string, string> // extra env, e.g. PEBBLE_WFE_NONCEREJECT. Authorization reuse is off by default
  // (PEBBLE_AUTHZREUSE=0): every order is validated, so tests see real HTTP-01 traffic.
}

export interface Pebble {
  directoryUrl: string         // https://127.0.0.1:PORT/dir
  managementUrl: string        // https://127.0.0.1:MGMT
  caCert: string               // PEM of the self-signed cert of Pebble's own HTTPS listener
  caFile: string               // file holding caCert (for NODE_EXTRA_CA_CERTS in child processes); deleted by stop()
  root(): Promise<string>      // PEM of the current issuing root (changes at every start)
  orderCount(): number         // new-order requests Pebble accepted so far
  output(): string             // Pebble's stdout+stderr so far (for failure diagnostics)
  stop(): Promise<void>
}

// Pebble 2.4.0 logs exactly one line per accepted newOrder, from wfe.NewOrder
// after the order is stored: `Pebble <date> <time> Added order "<id>" to the db`.
// Reused/fetched orders and finalization do not log it, rejected ones never reach it.
const NEW_ORDER_LINE = /Added order "[^"]+" to the db/g

// GET over HTTPS trusting only Pebble's listener cert. Any status but 200 is an error.
function get (url: string, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    https.get(url, { ca }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: ${res.statusCode} ${body}`)))
    }).on('error', reject)
  })
}

export async function startPebble (opts: PebbleOptions): Promise<Pebble> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pebble-'))
  const forget = onCrash(() => rmSync(dir, { recursive: true, force: true }))
  const certFile = path.join(dir, 'cert.pem')
  const keyFile = path.join(dir, 'key.pem')
  // Pebble ships no listener cert; a fresh one per run keeps the trust scoped to this test.
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '7', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'
  ])
  const caCert = await readFile(certFile, 'utf8')

  const [port, mgmtPort, dnsPort, challMgmtPort, tlsPort] = await Promise.all([
    freePort(), freePort(), freePort(), freePort(), opts.tlsPort ?? freePort()
  ])
  const configFile = path.join(dir, 'pebble.json')
  await writeFile(configFile, JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${port}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: certFile,
      privateKey: keyFile,
      httpPort: opts.httpPort,
      tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
      ...(opts.validityPeriod !== undefined ? { certificateValidityPeriod: opts.validityPeriod } : {})
    }
  }))

  // challtestsrv only as a DNS server: every A query answers 127.0.0.1 (set
  // explicitly rather than trusting the default), no AAAA so the VA never tries ::1.
  const chall = spawnTracked('pebble-challtestsrv', [
    '-dns01', `127.0.0.1:${dnsPort}`, '-http01', '', '-https01', '', '-tlsalpn01', '',
    '-management', `127.0.0.1:${challMgmtPort}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''
  ], {})
  let challLog = ''
  chall.stdout?.on('data', (d: Buffer) => { challLog += d.toString() })
  chall.stderr?.on('data', (d: Buffer) => { challLog += d.toString() })

  const pebble = spawnTracked('pebble', ['-config', configFile, '-dnsserver', `127.0.0.1:${dnsPort}`, '-strict', 'false'], {
    cwd: dir,
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_AUTHZREUSE: '0', ...opts.env }
  })
  let log = ''
  pebble.stdout?.on('data', (d: Buffer) => { log += d.toString() })
  pebble.stderr?.on('data', (d: Buffer) => { log += d.toString() })

  const directoryUrl = `https://127.0.0.1:${port}/dir`
  const managementUrl = `https://127.0.0.1:${mgmtPort}`
  const stop = async (): Promise<void> => {
    await Promise.all([stopChild(pebble), stopChild(chall)])
    await rm(dir, { recursive: true, force: true })
    forget()
  }
  try {
    // challtestsrv has no readiness probe we can cheaply use over UDP; its
    // management port opens after the DNS listener, so poll that one.
    await waitUntil('pebble-challtestsrv', () => canConnect(challMgmtPort), chall, () => challLog)
    await waitUntil('pebble', async () => { await get(directoryUrl, caCert); return true }, pebble, () => log)
  } catch (err) {
    await stop()
    throw err
  }

  return {
    directoryUrl,
    managementUrl,
    caCert,
    caFile: certFile,
    root: () => get(`${managementUrl}/roots/0`, caCert),
    orderCount: () => log.match(NEW_ORDER_LINE)?.length ?? 0,
    output: () => log,
    stop
  }
}

// acme-client 5.4.0 sends every request through its own axios instance, exported
// as `acme.axios` (src/axios.js: `axios.create()`, adapter 'http'). It retries
// network/TLS errors 5 times with 5,10,15,20,25 s waits, so an untrusted listener
// looks like a 75 s hang: give that instance an agent that trusts Pebble too.
// keepAlive: a fresh TLS handshake per ACME request roughly doubled issuance time
// (~0.9 s -> ~0.4 s); idle sockets are unref'd by Node, so they hold no test open.
export function trustPebble (p: Pebble): void {
  acme.axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ca: [...tls.rootCertificates, p.caCert] })
}
