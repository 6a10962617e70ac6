import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { SecureContext, TLSSocket } from 'node:tls'
import * as acme from 'acme-client'
import type { FastifyInstance, FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { Http01Challenges } from './acme/challenges'
import { ACCOUNT_KEY, Issuer, type KeyType } from './acme/issuer'
import type { Certificate } from './certificate'
import {
  FST_AUTOCERT_INVALID_DIRECTORY_URL, FST_AUTOCERT_INVALID_DOMAIN, FST_AUTOCERT_INVALID_KEY_TYPE,
  FST_AUTOCERT_INVALID_OPTION, FST_AUTOCERT_INVALID_STORE, FST_AUTOCERT_NO_DOMAINS,
  FST_AUTOCERT_NOT_REGISTERED, FST_AUTOCERT_TOS_NOT_AGREED
} from './errors'
import { CertificateManager, type DomainStatus } from './manager'
import { normalizeName } from './names'
import { AzureBlobStore, type AzureBlobStoreOptions } from './store/azure-blob'
import { EncryptedStore, type EncryptionOptions } from './store/encrypted'
import { isCertStore, type CertStore } from './store/store'

export interface AutocertOptions {
  /** Host names to serve and keep certificates for. Normalised: lower case, no trailing dot, punycode. */
  domains: string[]
  /**
   * Where certificates, the account key, challenges, locks and failure records
   * live, shared by the fleet: a store you built (you close it), or the options
   * of an AzureBlobStore that the plugin builds and closes with the app.
   */
  store: CertStore | AzureBlobStoreOptions
  /** Must be `true`: you accept the CA's terms of service. */
  termsOfServiceAgreed: boolean
  /** Contact address for the ACME account (expiry notices, CA announcements). Default: none. */
  email?: string
  /** `'production'` (Let's Encrypt, the default), `'staging'` (Let's Encrypt staging) or an https:// ACME directory URL. */
  directoryUrl?: string
  /** Key of each certificate: `'ecdsa'` (P-256, the default) or `'rsa'` (2048 bits). The account key is always P-256. */
  keyType?: KeyType
  /** Renew when this much validity remains (milliseconds). Default: a third of the lifetime, at most 30 days. */
  renewBefore?: number
  /** Waits after 1, 2, 3... consecutive failed orders (milliseconds; the last repeats). Default: 1 min, 10 min, 20 min, 30 min, 1 h, 2 h, 6 h. */
  retryDelays?: number[]
  /** How many domains are loaded from the store or ordered at once at start-up. Default: 8. */
  concurrency?: number
  /**
   * New orders the whole fleet may place in any hour, counted in the store, so
   * no client, bug or restart loop can exhaust the CA's limits (Let's Encrypt:
   * 300 new orders per account per 3 hours). Default: 100.
   */
  maxOrdersPerHour?: number
  /** Encrypts everything written to the store with AES-256-GCM (see EncryptedStore). Default: none. */
  encryption?: EncryptionOptions
  /**
   * For an HTTPS app: a companion plain-HTTP listener, started when the app is
   * ready and closed with it, that answers HTTP-01 challenges and redirects
   * everything else to https. The CA always validates on port 80. Default: none.
   */
  http01?: { port: number, host?: string }
  /** External account binding, for CAs that require it (ZeroSSL, Google). */
  externalAccountBinding?: { kid: string, hmacKey: string }
}

/** A certificate as the decorator shows it: the chain, never the private key. */
export interface CertificateInfo {
  domain: string
  serial: string
  notBefore: Date
  notAfter: Date
  /** PEM chain, leaf first. */
  chain: string
}

/** `fastify.autocert` */
export interface Autocert {
  /** The certificate served for `domain`, obtaining it first if needed. */
  certificate (domain: string): Promise<CertificateInfo>
  /** Orders a new certificate for `domain` now and serves it from then on. */
  renew (domain: string): Promise<CertificateInfo>
  /** Per listed domain: serial, expiry, next renewal, last error. */
  status (): DomainStatus[]
}

declare module 'fastify' {
  interface FastifyInstance {
    autocert: Autocert
  }
}

export const CHALLENGE_PATH = '/.well-known/acme-challenge/'

const OPTION_KEYS = new Set([
  'domains', 'store', 'termsOfServiceAgreed', 'email', 'directoryUrl', 'keyType', 'renewBefore',
  'retryDelays', 'concurrency', 'maxOrdersPerHour', 'encryption', 'http01', 'externalAccountBinding'
])

// Which manager serves a TLS server: SNICallback finds it through the socket.
const managers = new WeakMap<object, CertificateManager>()
// Fastify listening on 'localhost' adds a second server (::1 next to 127.0.0.1)
// that the plugin never sees: with one manager in the process, it serves there too.
const registered = new Set<CertificateManager>()
const warned = new WeakSet<object>()

/**
 * Pass to Fastify's `https` options: `Fastify({ https: { SNICallback } })`.
 * It finds the plugin registered on that server, so it closes over nothing.
 */
export function SNICallback (this: TLSSocket, servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void {
  const server = (this as { server?: object }).server ?? {}
  const manager = managers.get(server) ?? (registered.size === 1 ? registered.values().next().value : undefined)
  if (manager === undefined) {
    const err = new FST_AUTOCERT_NOT_REGISTERED()
    // Once per server: every handshake fails the same way.
    if (!warned.has(server)) process.emitWarning(err.message, { code: err.code })
    warned.add(server)
    cb(err)
    return
  }
  manager.resolve(servername, cb)
}

const autocert: FastifyPluginAsync<AutocertOptions> = async (fastify, options) => {
  const opts = validate(options)
  const store = opts.encryption === undefined ? opts.store : new EncryptedStore(opts.store, opts.encryption)
  // Any well-formed host is looked up, listed here or not: instances of a fleet
  // may list different names, and the CA's request may reach any of them.
  const challenges = new Http01Challenges(store)
  const issuer = new Issuer({
    directoryUrl: opts.directoryUrl,
    email: opts.email,
    keyType: opts.keyType,
    externalAccountBinding: opts.externalAccountBinding,
    store,
    challenges
  })
  const manager = new CertificateManager({
    domains: opts.domains,
    store,
    issuer,
    log: fastify.log,
    renewBefore: opts.renewBefore,
    retryDelays: opts.retryDelays,
    concurrency: opts.concurrency,
    maxOrdersPerHour: opts.maxOrdersPerHour
  })
  managers.set(fastify.server, manager)
  registered.add(manager)

  fastify.decorate<Autocert>('autocert', {
    certificate: async (domain) => info(await manager.certificate(domain)),
    renew: async (domain) => info(await manager.renew(domain)),
    status: () => manager.status()
  })

  // A wildcard, not `:token`: Fastify caps a parameter at 100 characters (maxParamLength), tokens may have 128.
  fastify.route<{ Params: { '*': string } }>({
    method: ['GET', 'HEAD'],
    url: `${CHALLENGE_PATH}*`,
    handler: async (request, reply) => {
      const answer = await answerChallenge(challenges, request.params['*'], request.host, fastify)
      return reply.code(answer.status).type('text/plain').send(answer.body)
    }
  })

  let companion: Server | undefined
  fastify.addHook('onReady', async () => {
    // The account key is written once: after a key rotation it must be sealed anew.
    if (store instanceof EncryptedStore) {
      await store.reseal(ACCOUNT_KEY).catch((err: unknown) => {
        fastify.log.warn({ error: { message: (err as Error).message } }, 'could not re-seal the account key')
      })
    }
    await manager.prewarm()
    if (opts.http01 !== undefined) companion = await listenHttp01(opts.http01, challenges, fastify)
  })
  // Orders need a listening server: the CA's validation request must find it.
  fastify.addHook('onListen', async () => { manager.start() })
  fastify.addHook('onClose', async () => {
    managers.delete(fastify.server)
    registered.delete(manager)
    await manager.close()
    if (companion !== undefined) {
      const closed = new Promise((resolve) => companion?.close(resolve))
      // A client holding a connection open must not hold the app's close.
      companion.closeAllConnections()
      await closed
    }
    if (opts.ownsStore) await opts.store.close?.()
  })
}

async function answerChallenge (challenges: Http01Challenges, token: string, host: string | undefined, fastify: FastifyInstance): Promise<{ status: number, body: string }> {
  try {
    const answer = await challenges.answer(token, host)
    return answer === undefined ? { status: 404, body: 'Not Found' } : { status: 200, body: answer }
  } catch (err) {
    fastify.log.error({ error: { message: (err as Error).message } }, 'ACME challenge lookup failed')
    return { status: 503, body: 'Service Unavailable' }
  }
}

/** autocert's HTTPHandler(nil): challenges are answered, GET and HEAD go to https, the rest is refused. */
async function listenHttp01 (where: { port: number, host?: string }, challenges: Http01Challenges, fastify: FastifyInstance): Promise<Server> {
  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = req.url ?? '/'
    const isRead = req.method === 'GET' || req.method === 'HEAD'
    if (isRead && url.startsWith(CHALLENGE_PATH)) {
      const token = url.slice(CHALLENGE_PATH.length).split(/[?#]/, 1)[0]
      const answer = await answerChallenge(challenges, token, req.headers.host, fastify)
      res.writeHead(answer.status, { 'content-type': 'text/plain' }).end(answer.body)
      return
    }
    const host = normalizeName((req.headers.host ?? '').replace(/:\d+$/, ''))
    if (!isRead || host === undefined) {
      res.writeHead(400, { 'content-type': 'text/plain' }).end('Use HTTPS')
      return
    }
    const port = (fastify.server.address() as AddressInfo | null)?.port
    const authority = port === undefined || port === 443 ? host : `${host}:${port}`
    res.writeHead(302, { location: `https://${authority}${url}` }).end()
  }
  const server = createServer((req, res) => { void handle(req, res) })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(where.port, where.host, () => { server.off('error', reject); resolve() })
  })
  fastify.log.info({ address: server.address() }, 'HTTP-01 listener started')
  return server
}

function info (cert: Certificate): CertificateInfo {
  return {
    domain: cert.name,
    serial: cert.serial,
    notBefore: new Date(cert.notBefore),
    notAfter: new Date(cert.notAfter),
    chain: cert.chain
  }
}

interface ResolvedOptions extends Omit<AutocertOptions, 'store' | 'directoryUrl' | 'keyType' | 'concurrency' | 'maxOrdersPerHour'> {
  store: CertStore
  /** The plugin built the store, so it closes it. */
  ownsStore: boolean
  directoryUrl: string
  keyType: KeyType
  concurrency: number
  maxOrdersPerHour: number
}

function validate (options: AutocertOptions): ResolvedOptions {
  const unknown = Object.keys(options ?? {}).filter((k) => !OPTION_KEYS.has(k))
  if (unknown.length > 0) {
    throw new FST_AUTOCERT_INVALID_OPTION(unknown[0], `is not an option; the options are: ${[...OPTION_KEYS].join(', ')}`)
  }
  const { domains, termsOfServiceAgreed, email, renewBefore, retryDelays, http01, encryption } = options
  if (!Array.isArray(domains) || domains.length === 0) throw new FST_AUTOCERT_NO_DOMAINS()
  const names = domains.map((raw) => {
    const name = typeof raw === 'string' ? normalizeName(raw) : undefined
    if (name === undefined) throw new FST_AUTOCERT_INVALID_DOMAIN(JSON.stringify(raw))
    return name
  })
  if (termsOfServiceAgreed !== true) throw new FST_AUTOCERT_TOS_NOT_AGREED()
  if (email !== undefined && (typeof email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(email))) {
    throw new FST_AUTOCERT_INVALID_OPTION('email', 'must be an e-mail address such as ops@example.com')
  }
  const keyType = options.keyType ?? 'ecdsa'
  if (keyType !== 'ecdsa' && keyType !== 'rsa') throw new FST_AUTOCERT_INVALID_KEY_TYPE(JSON.stringify(keyType))
  if (renewBefore !== undefined && !(Number.isFinite(renewBefore) && renewBefore > 0)) {
    throw new FST_AUTOCERT_INVALID_OPTION('renewBefore', 'must be a positive number of milliseconds')
  }
  if (retryDelays !== undefined && !(Array.isArray(retryDelays) && retryDelays.length > 0 &&
      retryDelays.every((d) => Number.isFinite(d) && d >= 0))) {
    throw new FST_AUTOCERT_INVALID_OPTION('retryDelays', 'must be a non-empty array of milliseconds, e.g. [60000, 600000]')
  }
  const concurrency = options.concurrency ?? 8
  if (!Number.isInteger(concurrency) || concurrency < 1) {
    throw new FST_AUTOCERT_INVALID_OPTION('concurrency', 'must be a positive integer')
  }
  const maxOrdersPerHour = options.maxOrdersPerHour ?? 100
  if (!Number.isInteger(maxOrdersPerHour) || maxOrdersPerHour < 1) {
    throw new FST_AUTOCERT_INVALID_OPTION('maxOrdersPerHour', 'must be a positive integer')
  }
  if (encryption !== undefined) {
    if (encryption?.previousKeys !== undefined && !Array.isArray(encryption.previousKeys)) {
      throw new FST_AUTOCERT_INVALID_OPTION('encryption.previousKeys', 'must be an array of the keys used before, newest first')
    }
    for (const [i, key] of [encryption?.key, ...(encryption?.previousKeys ?? [])].entries()) {
      const bytes = typeof key === 'string' ? Buffer.from(key, 'base64') : key
      if (!Buffer.isBuffer(bytes) || bytes.length !== 32) {
        throw new FST_AUTOCERT_INVALID_OPTION(i === 0 ? 'encryption.key' : `encryption.previousKeys[${i - 1}]`,
          'must be 32 bytes: a Buffer, or a base64 string such as `openssl rand -base64 32` prints')
      }
    }
  }
  const { store, ownsStore } = resolveStore(options.store)
  if (http01 !== undefined && !(Number.isInteger(http01?.port) && http01.port >= 0 && http01.port < 65536)) {
    throw new FST_AUTOCERT_INVALID_OPTION('http01.port', 'must be a TCP port number, usually 80')
  }
  return {
    ...options,
    domains: [...new Set(names)],
    store,
    ownsStore,
    keyType,
    concurrency,
    maxOrdersPerHour,
    directoryUrl: directoryUrl(options.directoryUrl)
  }
}

/** A store instance is used as it is; plain options build an AzureBlobStore (whose option errors carry their own code). */
function resolveStore (value: unknown): { store: CertStore, ownsStore: boolean } {
  if (isCertStore(value)) return { store: value, ownsStore: false }
  // Something with some of a store's methods is a store that misses the others.
  const partial = typeof value === 'object' && value !== null &&
    ['get', 'put', 'delete', 'list', 'lock'].some((m) => typeof (value as Record<string, unknown>)[m] === 'function')
  if (typeof value !== 'object' || value === null || partial) throw new FST_AUTOCERT_INVALID_STORE()
  return { store: new AzureBlobStore(value as AzureBlobStoreOptions), ownsStore: true }
}

function directoryUrl (value: string | undefined): string {
  if (value === undefined || value === 'production') return acme.directory.letsencrypt.production
  if (value === 'staging') return acme.directory.letsencrypt.staging
  let url: URL | undefined
  try {
    url = new URL(value)
  } catch {}
  if (url?.protocol !== 'https:') throw new FST_AUTOCERT_INVALID_DIRECTORY_URL(JSON.stringify(String(value)))
  return value
}

export default fp(autocert, { name: 'fastify-autocert', fastify: '5.x' })
