// The core both front ends share (createAutocert): builds the store, issuer, challenges and manager, and answers HTTP-01, TLS-ALPN-01 and SNI.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http'
import type { Http2ServerRequest } from 'node:http2'
import type { AddressInfo } from 'node:net'
import type { SecureContext, Server as TlsServerBase, TLSSocket } from 'node:tls'
import { CHALLENGE_LOOKUP_LIMITS } from './acme/challenge-lookups'
import { Http01Challenges, type ChallengeSolver, type ChallengeType } from './acme/challenges'
import { Dns01Challenges } from './acme/dns-01'
import { FallbackIssuer } from './acme/fallback'
import { Issuer } from './acme/issuer'
import { alpnCallback, isValidation, TlsAlpn01Challenges, type ALPNCallbackFn } from './acme/tls-alpn'
import type { Certificate } from './certificate'
import { systemClock } from './clock'
import { FST_AUTOCERT_NO_CHALLENGE, FST_AUTOCERT_REVOKE_FAILED } from './errors'
import { errorFields, printable, type AutocertEvents, type DomainStatus, type Logger } from './events'
import { FleetLocks } from './fleet/locks'
import { CertificateManager, MANAGER_SETTINGS } from './manager'
import { isAddress, normalizeHost } from './names'
import { validate, type AutocertOptions, type Settings } from './options'
import { buildStore, type BuiltStore } from './store/build'
import { storeKeys, storeLimits } from './store/keys'
import type { Lock } from './store/store'

export const CHALLENGE_PATH = '/.well-known/acme-challenge/'

/**
 * Limits of the `http01` listener. A CA's validation is one small GET, answered
 * at once: a client that takes longer to send its headers or request (10 s),
 * idles on a kept-alive connection (5 s) or arrives while 1,000 others are
 * connected is cut off, instead of Node's defaults (60 s, 300 s, no cap).
 * Expired connections are looked for every second (Node: 30 s).
 */
export const HTTP01_LIMITS = {
  headersTimeout: 10_000,
  requestTimeout: 10_000,
  keepAliveTimeout: 5_000,
  connectionsCheckingInterval: 1_000,
  maxConnections: 1_000
} as const

/**
 * A challenge request's answer, as every path sends it: the key authorization
 * (200), none (404), too many lookups waiting on the connection (429) or in the
 * instance (503), or a store failure (503). `headers` come on top of the
 * content type.
 */
export interface ChallengeReply {
  status: 200 | 404 | 429 | 503
  body: string
  headers: Record<string, string>
}

/** A certificate as the API shows it: the chain, never the private key. */
export interface CertificateInfo {
  domain: string
  serial: string
  notBefore: Date
  notAfter: Date
  /** PEM chain, leaf first. */
  chain: string
}

/** The revocation reasons a CA accepts from a subscriber (RFC 5280 CRLReason; Let's Encrypt takes these five), by name or code. */
export type RevocationReason = 'unspecified' | 'keyCompromise' | 'affiliationChanged' | 'superseded' | 'cessationOfOperation' | 0 | 1 | 3 | 4 | 5

/** The RFC 5280 code of each revocation reason a subscriber may give, by name. */
export const REVOCATION_REASONS: Readonly<Record<Exclude<RevocationReason, number>, number>> = { unspecified: 0, keyCompromise: 1, affiliationChanged: 3, superseded: 4, cessationOfOperation: 5 }

/** The RFC 5280 code of `reason`; FST_AUTOCERT_REVOKE_FAILED for anything else, before the CA is asked. */
function reasonCode (domain: string, reason: RevocationReason | undefined): number | undefined {
  if (reason === undefined) return undefined
  const code = typeof reason === 'number' ? reason : REVOCATION_REASONS[reason]
  if (!Object.values(REVOCATION_REASONS).includes(code)) {
    throw new FST_AUTOCERT_REVOKE_FAILED(printable(domain), `${JSON.stringify(reason)} is not a revocation reason; use one of ${Object.keys(REVOCATION_REASONS).join(', ')} (or its RFC 5280 code)`)
  }
  return code
}

/** What the Fastify decorator `fastify.autocert` offers; an AutocertServer offers it too. */
export interface Autocert {
  /** The certificate served for `domain`, obtaining it first if needed. */
  certificate (domain: string): Promise<CertificateInfo>
  /**
   * Orders a new certificate for `domain` now (each key type) and serves it
   * from then on. The other instances adopt it at their next look at the
   * renewal information, as after revoke() (see the README).
   */
  renew (domain: string): Promise<CertificateInfo>
  /**
   * Replaces the certificates of `domain` (each key type) with new ones, then
   * revokes the old ones at the CA with the fleet's account; resolves with the
   * replacement. The other instances adopt it at their next look at the
   * renewal information (see the README). `reason`: an RFC 5280 reason, by
   * name or code. Default: none given (unspecified).
   */
  revoke (domain: string, reason?: RevocationReason): Promise<CertificateInfo>
  /** Per domain in memory (listed, and on-demand names in use): serial, expiry, next renewal, last error, backoff, lock holder. */
  status (): DomainStatus[]
  /** Calls `listener` on each `event` (obtained, renewed, loaded, failed, backoff, lock-wait). A listener that throws is logged, never breaks the work that emitted. */
  on<E extends keyof AutocertEvents> (event: E, listener: (...args: AutocertEvents[E]) => void): this
  off<E extends keyof AutocertEvents> (event: E, listener: (...args: AutocertEvents[E]) => void): this
}

export type SNICallbackFn = (this: TLSSocket, servername: string, cb: (err: Error | null, ctx?: SecureContext) => void) => void

/** Node's `(req, res)` handler, or Express middleware when given `next`. */
export type ChallengeMiddleware = (req: IncomingMessage, res: ServerResponse, next?: (err?: unknown) => void) => void

/**
 * The whole of fastify-autocert without Fastify, for `https.createServer` or
 * an Express app; the Fastify plugin is a thin layer over it.
 */
export interface AutocertServer extends Autocert {
  /** Pass to `https.createServer({ SNICallback })`: selects each connection's certificate. */
  readonly SNICallback: SNICallbackFn
  /**
   * Pass to `https.createServer({ SNICallback, ALPNCallback })` for TLS-ALPN-01:
   * takes the CA's acme-tls/1 connections, and selects http/1.1 for the others
   * as https.createServer does by itself.
   */
  readonly ALPNCallback: ALPNCallbackFn
  /**
   * Answers `GET /.well-known/acme-challenge/<token>` and passes anything else
   * to `next` (Express), or answers it 404 when there is no `next`.
   */
  readonly middleware: ChallengeMiddleware
  /** Loads the listed domains' certificates from the store (never orders), and starts the `http01` listener. Call before listening. */
  ready (): Promise<void>
  /**
   * Orders what is missing and arms renewals. Call once `server` listens: the
   * CA's validation request must find it. `server` is the HTTPS server: its
   * port is where the `http01` listener redirects, and with an IP address
   * listed, its default certificate (served without SNI) is that address's.
   */
  start (server?: Server | { address (): AddressInfo | string | null }): void
  /** Stops renewals, ends orders in flight, closes the `http01` listener and a store the options built. */
  close (): Promise<void>
}

/**
 * Builds the certificate manager of `options` (validated here: a bad option
 * throws a coded TypeError). Nothing runs until ready() and start().
 */
export function createAutocert (options: AutocertOptions): AutocertServer {
  return new AutocertCore(validate(options), options.logger ?? stderrLogger)
}

/** What both front ends share: one manager, its issuer and challenges, the `http01` listener. */
export class AutocertCore implements AutocertServer {
  readonly manager: CertificateManager
  readonly SNICallback: SNICallbackFn
  readonly ALPNCallback: ALPNCallbackFn
  readonly middleware: ChallengeMiddleware
  readonly #opts: Settings
  readonly #log: Logger
  readonly #store: BuiltStore
  readonly #http01: Http01Challenges
  readonly #tlsAlpn01: TlsAlpn01Challenges
  readonly #dns01: Dns01Challenges | undefined
  readonly #locks: FleetLocks
  #server: { address (): AddressInfo | string | null } | undefined
  /** The listed IP address, if any: its certificate is the server's default. */
  readonly #address: string | undefined
  #companion: Server | undefined

  /** `protocols`: the server's own ALPN protocols, preferred first (https.createServer's by default). */
  constructor (opts: Settings, log: Logger, protocols: readonly string[] = ['http/1.1']) {
    this.#opts = opts
    this.#log = log
    this.#store = buildStore(opts)
    const { store } = this.#store
    // Any well-formed host is looked up, listed here or not: instances of a fleet
    // may list different names, and the CA's request may reach any of them.
    this.#http01 = new Http01Challenges(store, log)
    this.#tlsAlpn01 = new TlsAlpn01Challenges(store, log)
    this.#dns01 = opts.dns01 && new Dns01Challenges(opts.dns01, log)
    const solvers: Record<ChallengeType, ChallengeSolver | undefined> = { 'http-01': this.#http01, 'tls-alpn-01': this.#tlsAlpn01, 'dns-01': this.#dns01 }
    const { email, profile } = opts
    const locks = this.#locks = new FleetLocks({ store, holder: opts.instanceId, timeout: opts.lockTimeout, clock: systemClock, log })
    // One issuer per CA, each with its own account in the store; several make a fallback list.
    const issuers = opts.directoryUrl.map(({ directoryUrl, externalAccountBinding }, i) => new Issuer({
      directoryUrl,
      externalAccountBinding,
      accountKey: i === 0 ? storeKeys.account : storeKeys.accountOf(directoryUrl),
      email,
      profile,
      store,
      locks,
      // validate() lists 'dns-01' only with options.dns01.
      solvers: opts.challenges.map((type) => solvers[type] as ChallengeSolver)
    }))
    const issuer = issuers.length === 1 ? issuers[0] : new FallbackIssuer(issuers, log)
    // Only the settings the manager reads: the others (the store's options, the encryption keys) stay here.
    const settings = Object.fromEntries(MANAGER_SETTINGS.map((name) => [name, opts[name]])) as Pick<Settings, typeof MANAGER_SETTINGS[number]>
    // Clients that connect by address send no SNI: the address's certificate is the server's default one.
    this.#address = opts.domains.find(isAddress)
    const adopted = (name: string): void => { if (name === this.#address) this.#serveAddress() }
    this.manager = new CertificateManager({ ...settings, store, issuer, log, adopted })
    const { manager } = this
    const validation = (servername: string, socket: TLSSocket): Promise<SecureContext> => this.#validation(servername, socket)
    this.SNICallback = function (servername, cb) {
      if (isValidation(this)) validation(servername, this).then((ctx) => cb(null, ctx), cb)
      else manager.resolve(servername, cb, this)
    }
    this.ALPNCallback = alpnCallback(protocols)
    this.middleware = (req, res, next) => {
      const token = challengeToken(req)
      if (token !== undefined) void this.#answer(token, req, res)
      else if (next !== undefined) next()
      else res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found')
    }
  }

  async certificate (domain: string): Promise<CertificateInfo> {
    return info(await this.manager.certificate(domain))
  }

  async renew (domain: string): Promise<CertificateInfo> {
    return info(await this.manager.renew(domain))
  }

  async revoke (domain: string, reason?: RevocationReason): Promise<CertificateInfo> {
    return info(await this.manager.revoke(domain, reasonCode(domain, reason)))
  }

  status (): DomainStatus[] {
    return this.manager.status()
  }

  on<E extends keyof AutocertEvents> (event: E, listener: (...args: AutocertEvents[E]) => void): this {
    this.manager.events.on(event, listener as never)
    return this
  }

  off<E extends keyof AutocertEvents> (event: E, listener: (...args: AutocertEvents[E]) => void): this {
    this.manager.events.off(event, listener as never)
    return this
  }

  async ready (): Promise<void> {
    // The account key is written once: after a key rotation it must be sealed anew,
    // under the account's lock as the fleet takes it (its deadline included).
    const { sealed } = this.#store
    if (sealed !== undefined) {
      const lock = (key: string): Promise<Lock> => this.#locks.take(key, new AbortController().signal)
      await sealed.reseal(storeKeys.account, { maxBytes: storeLimits.account, lock }).catch((err: unknown) => {
        this.#log.warn({ error: errorFields(err) }, 'could not re-seal the account key')
      })
    }
    await this.manager.prewarm()
    if (this.#opts.http01 !== undefined && this.#companion === undefined) this.#companion = await this.#listenHttp01(this.#opts.http01)
  }

  start (server?: { address (): AddressInfo | string | null }): void {
    this.#server = server
    this.#serveAddress()
    this.manager.start()
  }

  /**
   * Makes the listed address's certificates (each key type) the server's
   * default, which a handshake without SNI gets: at start, and whenever one
   * enters memory (renewed, or adopted from the fleet). The server's other TLS
   * settings and its session ticket keys are kept.
   */
  #serveAddress (): void {
    const server = this.#server as Partial<TlsServer> | undefined
    if (this.#address === undefined || typeof server?.setSecureContext !== 'function') return
    const certs = this.manager.current(this.#address)
    if (certs.length === 0) return
    const kept = Object.fromEntries(SERVER_TLS_SETTINGS.flatMap((name) => server[name] === undefined ? [] : [[name, server[name]]]))
    try {
      server.setSecureContext({ ...kept, ticketKeys: (server as TlsServer).getTicketKeys(), key: certs.map((c) => c.key), cert: certs.map((c) => c.chain) })
    } catch (err) {
      // A stored bundle whose key does not match: handshakes with SNI find it too, and replace it.
      this.#log.warn({ domain: this.#address, error: errorFields(err) }, 'could not make the address\'s certificate the server\'s default')
    }
  }

  async close (): Promise<void> {
    await this.manager.close()
    // The orders just ended remove their DNS records: the app closes once they are gone.
    await this.#dns01?.close()
    const companion = this.#companion
    if (companion !== undefined) {
      const closed = new Promise((resolve) => companion.close(resolve))
      // A client holding a connection open must not hold the app's close.
      companion.closeAllConnections()
      await closed
    }
    await this.#store.close()
  }

  /**
   * The answer to a challenge request `req` for `token` with the Host header
   * `host`, within CHALLENGE_LOOKUP_LIMITS. A refused request's HTTP/1
   * connection is closed after the answer (HTTP/2 has no such header); one
   * that asks too much at once is read no further meanwhile, and reset if it
   * goes on.
   */
  async answerChallenge (token: string, host: string | undefined, req: IncomingMessage | Http2ServerRequest): Promise<ChallengeReply> {
    let answer
    try {
      answer = await this.#http01.answer(token, host, connectionOf(req))
    } catch {
      // Logged by the lookups, once per burst of failures.
      return { status: 503, body: 'Service Unavailable', headers: {} }
    }
    if (answer === undefined) return { status: 404, body: 'Not Found', headers: {} }
    if ('keyAuthorization' in answer) return { status: 200, body: answer.keyAuthorization, headers: {} }
    const http1 = req.httpVersionMajor < 2
    const close: Record<string, string> = http1 ? { connection: 'close' } : {}
    if (answer.refused === 'instance') {
      return { status: 503, body: 'Service Unavailable', headers: { ...close, 'retry-after': String(CHALLENGE_LOOKUP_LIMITS.retryAfter) } }
    }
    // The 429 waits for the answers pipelined before it, and so does every request Node has
    // parsed after it: stop reading (Node would parse the next 64 KiB read, 500 requests more
    // of a flood), and reset a connection that pipelined far past its 429 (what it sent is dropped).
    // Over HTTP/2 each stream is answered at once.
    if (http1 && answer.refused === 'reset') req.socket.destroy()
    else if (http1) req.socket.pause()
    return { status: 429, body: 'Too Many Requests', headers: close }
  }

  /** The TLS-ALPN-01 challenge certificate for the CA's acme-tls/1 connection; a rejection fails the handshake (a store failure is logged by the lookups, once per interval). */
  async #validation (servername: string, socket: TLSSocket): Promise<SecureContext> {
    const context = await this.#tlsAlpn01.context(servername, socket)
    if (context === undefined) throw new FST_AUTOCERT_NO_CHALLENGE()
    return context
  }

  async #answer (token: string, req: IncomingMessage, res: ServerResponse): Promise<void> {
    const answer = await this.answerChallenge(token, req.headers.host, req)
    res.writeHead(answer.status, { 'content-type': 'text/plain; charset=utf-8', ...answer.headers }).end(answer.body)
  }

  /** autocert's HTTPHandler(nil): challenges are answered, GET and HEAD go to https, the rest is refused. */
  async #listenHttp01 (where: { port: number, host?: string }): Promise<Server> {
    const { maxConnections, ...timeouts } = HTTP01_LIMITS
    const server = createServer(timeouts, (req, res) => {
      const token = challengeToken(req)
      if (token !== undefined) {
        void this.#answer(token, req, res)
        return
      }
      const host = normalizeHost(req.headers.host)
      if ((req.method !== 'GET' && req.method !== 'HEAD') || host === undefined) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end('Use HTTPS')
        return
      }
      const address = this.#server?.address()
      const port = typeof address === 'object' && address !== null ? address.port : undefined
      const literal = host.includes(':') ? `[${host}]` : host
      const authority = port === undefined || port === 443 ? literal : `${literal}:${port}`
      res.writeHead(302, { location: `https://${authority}${req.url ?? '/'}` }).end()
    })
    server.maxConnections = maxConnections
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(where.port, where.host, () => { server.off('error', reject); resolve() })
    })
    this.#log.info({ address: server.address() }, 'HTTP-01 listener started')
    return server
  }
}

/** What tls.Server.setSecureContext() reads besides the certificate: the server holds them as it last applied them. */
const SERVER_TLS_SETTINGS = [
  'ca', 'ciphers', 'sigalgs', 'ecdhCurve', 'dhparam', 'honorCipherOrder', 'secureOptions', 'sessionIdContext',
  'crl', 'minVersion', 'maxVersion', 'secureProtocol', 'clientCertEngine', 'privateKeyEngine', 'privateKeyIdentifier'
] as const

type TlsServer = TlsServerBase & Partial<Record<typeof SERVER_TLS_SETTINGS[number], unknown>>

/** The client connection a request came on: its socket, or over HTTP/2 its session (each stream has a socket of its own). */
function connectionOf (req: IncomingMessage | Http2ServerRequest): object {
  return 'stream' in req ? (req.stream.session ?? req.stream) : req.socket
}

/** The token of a challenge request (GET or HEAD under CHALLENGE_PATH), else undefined. */
function challengeToken (req: IncomingMessage): string | undefined {
  const url = req.url ?? '/'
  if ((req.method !== 'GET' && req.method !== 'HEAD') || !url.startsWith(CHALLENGE_PATH)) return undefined
  return url.slice(CHALLENGE_PATH.length).split(/[?#]/, 1)[0]
}

export function info (cert: Certificate): CertificateInfo {
  return {
    domain: cert.name,
    serial: cert.serial,
    notBefore: new Date(cert.notBefore),
    notAfter: new Date(cert.notAfter),
    chain: cert.chain
  }
}

/** createAutocert()'s default: warnings and errors on stderr, one line each. */
const stderrLogger: Logger = {
  debug () {},
  info () {},
  warn (obj, msg) { process.stderr.write(`fastify-autocert WARN ${msg} ${JSON.stringify(obj)}\n`) },
  error (obj, msg) { process.stderr.write(`fastify-autocert ERROR ${msg} ${JSON.stringify(obj)}\n`) }
}
