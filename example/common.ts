/*
 * What the examples share: their settings (the environment variables of
 * example/server.ts), the Fastify app of server.ts and metrics-server.ts, a
 * logger, the port-80 answer to anything that is not a challenge, signals, and
 * the choice between deploy mode and the playground. The createAutocert()
 * wiring of express.ts and https.ts stays in each of them, in full.
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Server } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import autocert, { AzureBlobStore, SNICallback, type AutocertServer, type Logger } from '../lib'

export interface Settings {
  domains: string[]
  connectionString: string
  container: string
  /** The CAs, in order of preference: the first, then its fallbacks. */
  directoryUrl: string[]
  /** The CA's certificate profile (Let's Encrypt: classic, tlsserver, shortlived); none: the CA's default. */
  profile: string | undefined
  email: string | undefined
  host: string
  httpsPort: number
  httpPort: number
}

/**
 * How long a client may take to finish its TLS handshake (ms), instead of
 * Node's 120 s: a connection that sends nothing costs a socket for that long.
 * Above the plugin's handshakeTimeout (20 s), the longest a first handshake
 * waits for its certificate, so that wait ends with the plugin's coded error.
 */
export const HANDSHAKE_TIMEOUT = 25_000

/**
 * The Fastify app of example/server.ts (and metrics-server.ts): HTTPS with the
 * plugin registered for `config`, `GET /` and `GET /status`; not listening yet.
 */
export async function fastifyServer (config: Settings): Promise<FastifyInstance> {
  const store = new AzureBlobStore({ connectionString: config.connectionString, container: config.container })
  const app = Fastify({ https: { SNICallback, handshakeTimeout: HANDSHAKE_TIMEOUT }, logger: true })
  app.addHook('onClose', () => store.close())
  await app.register(autocert, {
    domains: config.domains,
    email: config.email,
    directoryUrl: config.directoryUrl,
    profile: config.profile,
    termsOfServiceAgreed: true,
    store,
    http01: { port: config.httpPort, host: config.host }
  })
  app.get('/', async (request) => `Hello from ${request.hostname}, served over HTTPS by fastify-autocert.\n`)
  app.get('/status', async () => app.autocert.status())
  return app
}

/** The variables example/server.ts documents, with its defaults. */
export function settings (): Settings {
  const env = process.env
  return {
    domains: required('DOMAINS', 'the host names to serve, e.g. DOMAINS=example.com,www.example.com')
      .split(',').map((name) => name.trim()).filter((name) => name !== ''),
    connectionString: required('AZURE_STORAGE_CONNECTION_STRING', 'copy it from the storage account\'s "Access keys" page'),
    container: env.AZURE_STORAGE_CONTAINER || 'autocertcache',
    directoryUrl: (env.ACME_DIRECTORY_URL || 'staging').split(',').map((url) => url.trim()).filter((url) => url !== ''),
    profile: env.ACME_PROFILE || undefined,
    email: env.ACME_EMAIL || undefined,
    host: env.HOST || '0.0.0.0',
    httpsPort: Number(env.HTTPS_PORT || 443),
    httpPort: Number(env.HTTP_PORT || 80)
  }
}

/**
 * One JSON line per entry on stdout, as pino (Fastify's logger) writes them, so
 * the same log tooling reads every example. Debug entries are left out.
 */
export const logger: Logger = {
  debug () {},
  info (obj, msg) { write(30, obj, msg) },
  warn (obj, msg) { write(40, obj, msg) },
  error (obj, msg) { write(50, obj, msg) }
}

function write (level: number, obj: object, msg: string): void {
  process.stdout.write(`${JSON.stringify({ level, time: Date.now(), ...obj, msg })}\n`)
}

/**
 * Port 80's answer to everything but a challenge, as the `http01` option
 * gives it: GET and HEAD for a served name are redirected to https, the rest
 * gets 400. Only served names: the Host header is the client's to choose.
 */
export function redirectToHttps (autocert: AutocertServer, httpsPort: number): (req: IncomingMessage, res: ServerResponse) => void {
  // status() lists the names as createAutocert() normalised them.
  const served = new Set(autocert.status().map((s) => s.domain))
  const port = httpsPort === 443 ? '' : `:${httpsPort}`
  return (req, res) => {
    const host = (req.headers.host ?? '').replace(/:\d+$/, '').toLowerCase()
    if ((req.method !== 'GET' && req.method !== 'HEAD') || !served.has(host)) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('Use HTTPS\n')
      return
    }
    res.writeHead(302, { location: `https://${host}${port}${req.url ?? '/'}` }).end()
  }
}

export function listen (server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve()
    })
  })
}

/** Stops accepting connections and resolves once open requests have ended (idle keep-alive connections are closed at once). */
export function close (server: Server): Promise<void> {
  return new Promise((resolve, reject) => server.close((err) => err === undefined ? resolve() : reject(err)))
}

/**
 * Runs `shutdown` on the first SIGINT or SIGTERM (a terminal's Ctrl-C and a
 * supervisor's SIGTERM close once). The process then ends by itself, with no
 * process.exit(): whatever still held it would show as a process that stays.
 */
export function onSignal (shutdown: () => Promise<void>): void {
  let closing = false
  const handler = (signal: NodeJS.Signals): void => {
    if (closing) return
    closing = true
    logger.info({ signal }, 'shutting down')
    shutdown().catch((err: unknown) => {
      logger.error({ error: { message: err instanceof Error ? err.message : String(err) } }, 'shutdown failed')
      process.exitCode = 1
    })
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
}

/**
 * Runs `main` when a CA or a store is configured; with neither, runs `file`
 * in the local playground (playground.ts), which sets both for it, through
 * `inPlayground` when the example has more to show there.
 */
export function launch (file: string, main: () => Promise<void>, inPlayground?: (run: () => Promise<void>) => Promise<void>): void {
  if (!process.env.ACME_DIRECTORY_URL && !process.env.AZURE_STORAGE_CONNECTION_STRING) {
    // Loaded only here: a deployed server never loads the playground or its test helpers.
    const run = async (): Promise<void> => { await (await import('./playground.js')).playground(file) }
    ;(inPlayground === undefined ? run() : inPlayground(run)).catch(fail)
  } else {
    main().catch(fail)
  }
}

function required (name: string, hint: string): string {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: ${hint}`)
  return value
}

function fail (err: unknown): void {
  console.error(err instanceof Error ? err.message : err)
  process.exit(1)
}
