import type { ChildProcess } from 'node:child_process'
import { execFile } from 'node:child_process'
import { createHmac, randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import { freePort } from './ports'
import { spawnTracked, stopChild, waitUntil } from './proc'

export interface AzuriteOptions {
  /**
   * HTTPS on a fresh self-signed certificate (`--cert`, `--key`) and bearer tokens
   * checked (`--oauth basic`): the `{ accountUrl, credential }` path. Azurite then
   * checks a JWT's `nbf`/`exp`/`iat`, its `iss` (https://sts.windows.net/...) and
   * its `aud` (https://storage.azure.com), not its signature. Use `trustAzurite()`
   * so this process's HTTPS clients accept the certificate.
   */
  oauth?: boolean
}

export interface Azurite {
  port: number
  accountName: string          // devstoreaccount1
  accountKey: string
  blobEndpoint: string         // http://127.0.0.1:PORT/devstoreaccount1 (https:// with oauth)
  connectionString: string
  caCert?: string              // oauth only: PEM of the HTTPS listener's self-signed certificate
  stop(): Promise<void>        // kill by pid, wait for exit
  start(): Promise<void>       // start again on the same port (after stop); in-memory data is lost
}

// Azurite's well-known development account (public, documented by Microsoft).
const ACCOUNT_NAME = 'devstoreaccount1'
const ACCOUNT_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

// The `azurite-blob` bin target. Run with node directly: through npx the pid we
// hold would be npx's, and killing it leaves Azurite running.
const MAIN = path.join(path.resolve(__dirname, '../..'), 'node_modules/azurite/dist/src/blob/main.js')

// Azurite answers any HTTP request once its listener is up (an unauthenticated
// GET gets a 4xx); we only care that a full HTTP round trip works.
function answers (port: number, ca?: string): Promise<boolean> {
  return new Promise(resolve => {
    const options = { host: '127.0.0.1', port, path: `/${ACCOUNT_NAME}?comp=list` }
    const onResponse = (res: http.IncomingMessage): void => {
      res.resume()
      resolve(true)
    }
    const req = ca === undefined ? http.get(options, onResponse) : https.get({ ...options, ca }, onResponse)
    req.on('error', () => resolve(false))
  })
}

// A self-signed certificate for 127.0.0.1 and localhost, as Pebble's listener gets.
async function selfSigned (): Promise<{ cert: string, key: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'azurite-cert-'))
  try {
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '7', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'
    ])
    return { cert: await readFile(path.join(dir, 'cert.pem'), 'utf8'), key: await readFile(path.join(dir, 'key.pem'), 'utf8') }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

export async function startAzurite (options: AzuriteOptions = {}): Promise<Azurite> {
  const port = await freePort()
  const tlsFiles = options.oauth === true ? await selfSigned() : undefined
  const blobEndpoint = `${tlsFiles === undefined ? 'http' : 'https'}://127.0.0.1:${port}/${ACCOUNT_NAME}`
  let child: ChildProcess | undefined

  const start = async (): Promise<void> => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) throw new Error('Azurite already running')
    // Azurite reads the certificate and key files once, at start: they live only until it answers.
    const dir = tlsFiles === undefined ? undefined : await mkdtemp(path.join(os.tmpdir(), 'azurite-'))
    const extra: string[] = []
    if (dir !== undefined && tlsFiles !== undefined) {
      await writeFile(path.join(dir, 'cert.pem'), tlsFiles.cert)
      await writeFile(path.join(dir, 'key.pem'), tlsFiles.key, { mode: 0o600 })
      extra.push('--oauth', 'basic', '--cert', path.join(dir, 'cert.pem'), '--key', path.join(dir, 'key.pem'))
    }
    // --disableTelemetry: otherwise it phones home; --skipApiVersionCheck:
    // otherwise the current SDK's x-ms-version gets 400 from Azurite 3.35.
    const c = spawnTracked(process.execPath, [
      MAIN, '--inMemoryPersistence', '--silent', '--disableTelemetry', '--skipApiVersionCheck',
      '--blobHost', '127.0.0.1', '--blobPort', String(port), ...extra
    ], { cwd: os.tmpdir() })
    child = c
    let out = ''
    c.stdout?.on('data', (d: Buffer) => { out += d.toString() })
    c.stderr?.on('data', (d: Buffer) => { out += d.toString() })
    try {
      await waitUntil('azurite', () => answers(port, tlsFiles?.cert), c, () => out, 30000)
    } catch (err) {
      await stopChild(c)
      throw err
    } finally {
      if (dir !== undefined) await rm(dir, { recursive: true, force: true })
    }
  }
  const stop = async (): Promise<void> => {
    if (child !== undefined) await stopChild(child)
  }

  await start()
  return {
    port,
    accountName: ACCOUNT_NAME,
    accountKey: ACCOUNT_KEY,
    blobEndpoint,
    connectionString: `DefaultEndpointsProtocol=${tlsFiles === undefined ? 'http' : 'https'};AccountName=${ACCOUNT_NAME};AccountKey=${ACCOUNT_KEY};BlobEndpoint=${blobEndpoint};`,
    ...(tlsFiles === undefined ? {} : { caCert: tlsFiles.cert }),
    stop,
    start
  }
}

/**
 * Makes this process's HTTPS clients trust an oauth Azurite's certificate, for
 * connections to its port only; returns the function that undoes it.
 *
 * `trustPebble()` can hand acme-client an agent; `@azure/storage-blob` builds its
 * own `https.Agent` (no CA option reaches it through the store), and
 * NODE_EXTRA_CA_CERTS is read once at process start. So every `https.Agent`
 * connecting to 127.0.0.1:<port> without a `ca` of its own is given the public
 * roots plus this certificate: the handshake is still fully verified.
 */
export function trustAzurite (azurite: Azurite): () => void {
  const caCert = azurite.caCert
  if (caCert === undefined) throw new Error('trustAzurite: this Azurite runs plain HTTP (start it with { oauth: true })')
  const proto = https.Agent.prototype as unknown as { createConnection: (options: tls.ConnectionOptions, ...rest: unknown[]) => unknown }
  const original = proto.createConnection
  proto.createConnection = function (this: https.Agent, options: tls.ConnectionOptions, ...rest: unknown[]) {
    const ours = options.ca === undefined && Number(options.port) === azurite.port &&
      (options.host === '127.0.0.1' || options.host === 'localhost')
    return original.call(this, ours ? { ...options, ca: [...tls.rootCertificates, caCert] } : options, ...rest)
  }
  return () => { proto.createConnection = original }
}

/** The claims of a token that an oauth Azurite accepts, overridable one by one. */
export interface TokenClaims {
  aud?: string
  iss?: string
  nbf?: number
  iat?: number
  exp?: number
}

/**
 * A JWT as Microsoft Entra ID issues for Azure Storage, signed HS256 with a random
 * secret (an oauth Azurite checks the claims, not the signature). Times in seconds.
 */
export function entraToken (claims: TokenClaims = {}): string {
  const now = Math.floor(Date.now() / 1000)
  const part = (o: object): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  const head = part({ alg: 'HS256', typ: 'JWT' })
  const body = part({
    aud: 'https://storage.azure.com',
    iss: 'https://sts.windows.net/00000000-0000-0000-0000-000000000000/',
    sub: 'managed-identity-under-test',
    nbf: now - 60,
    iat: now - 60,
    exp: now + 3600,
    ...claims
  })
  const signature = createHmac('sha256', randomBytes(32)).update(`${head}.${body}`).digest('base64url')
  return `${head}.${body}.${signature}`
}

/**
 * A TokenCredential (what `@azure/identity`'s ManagedIdentityCredential implements)
 * handing out `entraToken(claims)`; `issued` is every token it gave, so a test can
 * look for them where they must not be.
 */
export function entraCredential (claims: TokenClaims = {}): { getToken: () => Promise<{ token: string, expiresOnTimestamp: number }>, issued: string[] } {
  const issued: string[] = []
  return {
    issued,
    getToken: async () => {
      const token = entraToken(claims)
      issued.push(token)
      // When the SDK should fetch the next one: an hour from now, whatever the claims say.
      return { token, expiresOnTimestamp: Date.now() + 3600_000 }
    }
  }
}
