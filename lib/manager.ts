import { EventEmitter } from 'node:events'
import type { SecureContext } from 'node:tls'
import { decodeBundle, encodeBundle, toSecureContext, type Certificate } from './certificate'
import {
  FST_AUTOCERT_BACKOFF, FST_AUTOCERT_CLOSED, FST_AUTOCERT_LOCK_LOST, FST_AUTOCERT_NAME_NOT_ALLOWED,
  FST_AUTOCERT_ORDER_FAILED, FST_AUTOCERT_RATE_LIMITED
} from './errors'
import { normalizeName } from './names'
import { renewalTime, retryDelay } from './renewal'
import { untilAborted } from './signals'
import type { CertStore, Lock } from './store/store'

/** The subset of a pino / Fastify logger the manager writes to. */
export interface Logger {
  debug (obj: object, msg: string): void
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  error (obj: object, msg: string): void
}

/** Orders one certificate; the manager decides when and holds the lock. */
export interface CertificateSource {
  issue (name: string, signal: AbortSignal): Promise<{ key: string, chain: string }>
  /** Starts whatever issue() will need first (the account), without waiting. */
  prepare? (): void
}

export interface ManagerOptions {
  /** Normalised names this manager serves and orders. */
  domains: readonly string[]
  store: CertStore
  issuer: CertificateSource
  log: Logger
  /** Renew when this much validity remains (ms); default from renewalTime(). */
  renewBefore?: number
  /** Failure backoff steps (ms), see DEFAULT_RETRY_DELAYS. */
  retryDelays?: readonly number[]
  /** New orders the whole fleet may place in any hour. */
  maxOrdersPerHour: number
  /** How many domains are loaded or ordered at once by prewarm() and start(). */
  concurrency: number
  /** This instance's name in lock records, status() and `lock-wait` events. */
  instanceId: string
  /** Names not in `domains` that get a certificate at their first handshake when allow() says so. */
  onDemand?: OnDemandOptions
}

export interface OnDemandOptions {
  /** Whether `name` (normalised) may have a certificate. Throwing, or taking longer than `timeout`, means no. */
  allow (name: string): boolean | Promise<boolean>
  /** How long allow() may take (ms). */
  timeout: number
  /** How many on-demand names are kept in memory; the least recently used beyond it are dropped (the store keeps them). */
  cacheSize: number
}

/** A certificate, as events report it. */
export interface CertificateEvent {
  domain: string
  /** Upper-case hex. */
  serial: string
  notAfter: Date
}

/** The events of `fastify.autocert.on()` and `AutocertServer.on()`, with their payloads. */
export interface AutocertEvents {
  /** This instance ordered the first certificate it serves for `domain`. */
  obtained: [CertificateEvent]
  /** This instance ordered a certificate to replace the one it served (`previousSerial`). */
  renewed: [CertificateEvent & { previousSerial: string }]
  /** A certificate was taken from the store: at start-up, or one another instance obtained. */
  loaded: [CertificateEvent]
  /** An order failed, or the store could not be read; `retryAt` when a retry is scheduled. */
  failed: [{ domain: string, error: { message: string, code?: string }, retryAt?: Date }]
  /** No order for `domain` before `retryAt`: after failures (shared by the fleet), or the fleet's order budget is spent. */
  backoff: [{ domain: string, retryAt: Date, reason: 'failures' | 'budget' }]
  /** This instance waits for the lock on `domain`, held by `holder` (that instance's instanceId, when the store knows it). */
  'lock-wait': [{ domain: string, holder?: string }]
}

/** What status() reports for one domain. */
export interface DomainStatus {
  domain: string
  /** Serial of the certificate being served, upper-case hex; undefined before the first one. */
  serial?: string
  notAfter?: Date
  /** When this instance will next try to renew (or retry after a failure). */
  renewAt?: Date
  /** The last failure to load or obtain a certificate, cleared by the next success. */
  lastError?: { message: string, at: Date }
  /** Set while the fleet-wide failure backoff (or order budget) forbids a new order. */
  retryAfter?: Date
  /** While this instance holds the domain's lock (its own instanceId) or waits for it (the holder's, `'unknown'` if not recorded). */
  lockHolder?: string
  /** The name is not listed: allowed by onDemand.allow(). */
  onDemand?: true
}

/** A failed order, shared by the fleet through the store under `<name>+failure`. */
interface FailureRecord {
  failures: number
  error: string
  at: number
  retryAt: number
}

interface Domain {
  readonly name: string
  /** Not listed: allowed on demand, and dropped from memory when least recently used. */
  readonly onDemand?: true
  lockHolder?: string
  cert?: Certificate
  /** Built on the first handshake that needs it, not at load: most names of a big fleet stay idle. */
  context?: SecureContext
  renewAt?: number
  retryAt?: number
  lastError?: { message: string, at: number }
  /** The certificate in memory was issued but could not be written yet. */
  unsaved?: boolean
  /** An unusable or expired stored certificate was logged already (once is enough). */
  reported?: boolean
  /** Serial of a stored certificate whose key did not match it: not adopted again. */
  rejected?: string
  timer?: NodeJS.Timeout
  /** When `timer` fires (or will be armed for, before start()). */
  nextAt?: number
  /** When a handshake in backoff last looked at the store (at most once per BACKOFF_RECHECK). */
  checkedAt?: number
  /** The last failed store read, repeated to callers for READ_ERROR_TTL. */
  readError?: { err: unknown, at: number }
  loading?: Promise<Certificate | undefined>
  ordering?: Promise<Certificate>
}

const failureKey = (name: string): string => `${name}+failure`
/** Store key (and lock) of the fleet's log of recent orders. */
const ORDER_LOG = 'acme_orders+log'
const HOUR = 3_600_000
// setTimeout fires at once past 2^31-1 ms (24.8 days): longer waits are taken in steps.
const MAX_TIMER = 2 ** 31 - 1
const REFUSAL_LOG_INTERVAL = 10_000
const READ_ERROR_TTL = 1000
const BACKOFF_RECHECK = 10_000
/** How long an onDemand.allow() answer is trusted: yes for 10 minutes, no for 1 minute. */
export const ALLOWED_TTL = 10 * 60_000
export const DENIED_TTL = 60_000

/**
 * The framework-free core: name -> memory -> store -> lock -> order -> store -> memory.
 * Every step has one place: #load reads the store, #order holds the lock and
 * talks to the CA, #adopt puts a certificate in memory and schedules its renewal.
 */
export class CertificateManager {
  readonly events = new EventEmitter<AutocertEvents>()
  readonly #opts: ManagerOptions
  readonly #domains = new Map<string, Domain>()
  /** The on-demand names in memory, least recently used first. */
  readonly #recent = new Map<string, Domain>()
  /** onDemand.allow() answers (or the call in flight), oldest first. */
  readonly #decisions = new Map<string, { allowed: Promise<boolean>, until: number }>()
  readonly #closing = new AbortController()
  #refused = { count: 0, since: 0 }
  #started = false

  constructor (opts: ManagerOptions) {
    this.#opts = opts
    for (const name of opts.domains) this.#domains.set(name, { name })
  }

  /**
   * The TLS hot path. A name in memory with a live certificate answers
   * synchronously: one map lookup, no store call, no allocation.
   */
  resolve (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void {
    const domain = this.#domains.get(servername)
    if (domain?.context !== undefined && domain.cert !== undefined && domain.cert.notAfter > Date.now()) {
      if (domain.onDemand) this.#touch(domain)
      cb(null, domain.context)
      return
    }
    this.secureContext(servername).then((ctx) => cb(null, ctx), cb)
  }

  async secureContext (servername: string): Promise<SecureContext> {
    const domain = await this.#allowed(servername)
    const cert = await this.#certificate(domain)
    if (domain.context === undefined || domain.cert !== cert) {
      try {
        domain.context = toSecureContext(cert)
      } catch (err) {
        // A stored bundle whose key does not match: never served; a fresh order replaces it.
        this.#opts.log.warn({ domain: domain.name, blob: domain.name, error: errorFields(err) }, 'ignoring unusable stored certificate')
        domain.reported = true
        domain.rejected = cert.serial
        domain.cert = undefined
        domain.context = toSecureContext(await this.#order(domain, false))
      }
    }
    return domain.context
  }

  /** The certificate served for `name`, obtaining it if needed. */
  async certificate (name: string): Promise<Certificate> {
    return this.#certificate(await this.#allowed(name))
  }

  /** Orders a new certificate for `name` now, whatever the current one's validity. */
  async renew (name: string): Promise<Certificate> {
    return this.#order(await this.#allowed(name), true)
  }

  status (): DomainStatus[] {
    return [...this.#domains.values()].map((d) => ({
      domain: d.name,
      serial: d.cert?.serial,
      notAfter: date(d.cert?.notAfter),
      renewAt: date(d.nextAt ?? d.renewAt),
      lastError: d.lastError && { message: d.lastError.message, at: new Date(d.lastError.at) },
      retryAfter: d.retryAt !== undefined && d.retryAt > Date.now() ? new Date(d.retryAt) : undefined,
      lockHolder: d.lockHolder,
      onDemand: d.onDemand
    }))
  }

  /** Loads every listed domain from the store into memory. Never orders; never throws. */
  async prewarm (): Promise<void> {
    await this.#eachDomain(async (domain) => { await this.#load(domain).catch(() => undefined) })
  }

  /**
   * Orders, in the background, every listed domain that has no live certificate.
   * Call it once the server listens: the CA's validation request needs it.
   */
  start (): void {
    this.#started = true
    for (const domain of this.#domains.values()) {
      if (domain.nextAt !== undefined && domain.timer === undefined) this.#schedule(domain, domain.nextAt)
    }
    void this.#eachDomain(async (domain) => {
      if (!live(domain.cert)) await this.#background(domain, this.#certificate(domain))
    })
  }

  /**
   * Stops timers and ends orders in flight: they stop waiting for the CA and
   * release their locks. Store reads still in flight finish on their own.
   */
  async close (): Promise<void> {
    this.#closing.abort(new FST_AUTOCERT_CLOSED())
    const ordering: Array<Promise<unknown>> = []
    for (const domain of this.#domains.values()) {
      clearTimeout(domain.timer)
      if (domain.ordering !== undefined) ordering.push(domain.ordering)
    }
    await Promise.allSettled(ordering)
  }

  /** The domain `servername` names: listed, or allowed on demand. Anything else is refused. */
  async #allowed (servername: string): Promise<Domain> {
    const name = this.#domains.has(servername) ? servername : normalizeName(servername)
    const known = name === undefined ? undefined : this.#domains.get(name)
    if (known !== undefined) {
      if (known.onDemand) this.#touch(known)
      return known
    }
    // A name that fails normalisation never reaches allow().
    if (name === undefined || this.#opts.onDemand === undefined || !(await this.#decide(name))) {
      this.#logRefusal(servername)
      throw new FST_AUTOCERT_NAME_NOT_ALLOWED(printable(servername))
    }
    this.#closing.signal.throwIfAborted()
    // Another handshake for the name may have added it while allow() ran.
    let domain = this.#domains.get(name)
    if (domain === undefined) {
      domain = { name, onDemand: true }
      this.#domains.set(name, domain)
      this.#recent.set(name, domain)
      this.#evict()
    }
    return domain
  }

  /** allow()'s answer for `name`: cached (yes for ALLOWED_TTL, no for DENIED_TTL), one call in flight per name. */
  #decide (name: string, fresh = false): Promise<boolean> {
    const cached = this.#decisions.get(name)
    if (cached !== undefined && cached.until > Date.now() && !fresh) return cached.allowed
    const decision = { allowed: this.#ask(name), until: Infinity }
    void decision.allowed.then((yes) => { decision.until = Date.now() + (yes ? ALLOWED_TTL : DENIED_TTL) })
    this.#decisions.delete(name)
    this.#decisions.set(name, decision)
    // Bounded like the names: a flood of new SNI names cannot grow it without end.
    for (const oldest of this.#decisions.keys()) {
      if (this.#decisions.size <= (this.#opts.onDemand as OnDemandOptions).cacheSize) break
      this.#decisions.delete(oldest)
    }
    return decision.allowed
  }

  async #ask (name: string): Promise<boolean> {
    const { allow, timeout } = this.#opts.onDemand as OnDemandOptions
    try {
      const answer = await untilAborted(Promise.resolve().then(() => allow(name)), AbortSignal.timeout(timeout))
      return answer === true
    } catch (err) {
      this.#opts.log.warn({ domain: name, error: errorFields(err) }, 'onDemand.allow() failed or timed out: the name is refused')
      return false
    }
  }

  /** Marks an on-demand name as just used. */
  #touch (domain: Domain): void {
    this.#recent.delete(domain.name)
    this.#recent.set(domain.name, domain)
  }

  /** Drops the least recently used on-demand names beyond cacheSize; the store still has their certificates. */
  #evict (): void {
    const { cacheSize } = this.#opts.onDemand as OnDemandOptions
    for (const domain of this.#recent.values()) {
      if (this.#recent.size <= cacheSize) return
      // Work in flight finishes first; the next name added evicts it.
      if (domain.ordering === undefined && domain.loading === undefined) this.#drop(domain)
    }
  }

  #drop (domain: Domain): void {
    clearTimeout(domain.timer)
    domain.timer = undefined
    this.#recent.delete(domain.name)
    this.#domains.delete(domain.name)
  }

  /** A live certificate: memory, then store, then a new order. */
  async #certificate (domain: Domain): Promise<Certificate> {
    if (live(domain.cert)) return domain.cert
    // In backoff (or waiting for the order budget): refuse from memory. The store
    // is still looked at now and then, since another instance may have succeeded.
    const now = Date.now()
    if (domain.retryAt !== undefined && domain.retryAt > now) {
      if (now - (domain.checkedAt ?? 0) < BACKOFF_RECHECK) throw new FST_AUTOCERT_BACKOFF(domain.name, new Date(domain.retryAt).toISOString())
      domain.checkedAt = now
      const stored = await this.#load(domain)
      if (stored !== undefined) return stored
      throw new FST_AUTOCERT_BACKOFF(domain.name, new Date(domain.retryAt).toISOString())
    }
    const cert = await this.#load(domain)
    if (cert !== undefined && live(cert)) return cert
    return this.#order(domain, false)
  }

  /** Reads the store (one read in flight per name) and adopts a live certificate found there. */
  #load (domain: Domain): Promise<Certificate | undefined> {
    domain.loading ??= this.#read(domain).finally(() => { domain.loading = undefined })
    return domain.loading
  }

  async #read (domain: Domain): Promise<Certificate | undefined> {
    const { store, log } = this.#opts
    // A read that just failed is not repeated for every handshake that follows.
    if (domain.readError !== undefined && Date.now() - domain.readError.at < READ_ERROR_TTL) throw domain.readError.err
    let cert: Certificate
    try {
      const data = await store.get(domain.name)
      if (data === undefined) return undefined
      cert = decodeBundle(domain.name, domain.name, data)
    } catch (err) {
      if (isCorrupt(err)) {
        // Never served; the next order replaces it. Logged once, not at every read.
        if (!domain.reported) log.warn({ domain: domain.name, blob: domain.name, error: errorFields(err) }, 'ignoring unusable stored certificate')
        domain.reported = true
        return undefined
      }
      // An unreachable store is an error, never a miss: no order on an outage.
      this.#fail(domain, err)
      domain.readError = { err, at: Date.now() }
      log.error({ domain: domain.name, error: errorFields(err) }, 'certificate store read failed')
      throw err
    }
    domain.readError = undefined
    if (cert.serial === domain.rejected) return undefined
    if (!live(cert)) {
      if (!domain.reported) log.info({ ...certFields(cert), blob: domain.name }, 'stored certificate has expired')
      domain.reported = true
      return undefined
    }
    if (domain.cert === undefined || newer(cert, domain.cert)) {
      this.#adopt(domain, cert)
      log.info(certFields(cert), 'certificate loaded')
      this.#emit('loaded', certEvent(cert))
    }
    return domain.cert
  }

  /** One order in flight per name, in this process; the store lock makes it one per fleet. */
  #order (domain: Domain, force: boolean): Promise<Certificate> {
    domain.ordering ??= this.#orderLocked(domain, force).finally(() => { domain.ordering = undefined })
    return domain.ordering
  }

  async #orderLocked (domain: Domain, force: boolean): Promise<Certificate> {
    const { store, issuer, log } = this.#opts
    const { name } = domain
    const closing = this.#closing.signal
    closing.throwIfAborted()
    if (!force && domain.retryAt !== undefined && domain.retryAt > Date.now()) {
      throw new FST_AUTOCERT_BACKOFF(name, new Date(domain.retryAt).toISOString())
    }
    const had = domain.cert
    // The account lookup (CA round trips) overlaps the wait for the lock.
    issuer.prepare?.()
    const lock = await this.#lock(domain)
    let issued: Certificate | undefined
    // A first certificate has a handshake waiting: the budget's lock is taken while
    // the name's records are read, a few round trips less before the CA is asked
    // (and a few store calls more when the records show no order is needed).
    // Renewals wait in the background and open it only to order. Either way the
    // name's lock is taken first, so the two locks cannot deadlock.
    let budget = had === undefined ? this.#openOrderLog() : undefined
    budget?.catch(() => {})
    try {
      // Another instance may have obtained it while we waited for the lock, or failed.
      const [stored, failure] = await Promise.all([
        this.#read(domain),
        force ? undefined : readRecord(store, failureKey(name))
      ])
      if (stored !== undefined && (force ? stored !== had : !due(domain))) {
        // A retry timer may have replaced the renewal timer: arm it again.
        if (domain.timer === undefined) this.#schedule(domain, domain.renewAt as number)
        return stored
      }
      if (!force) this.#checkBackoff(domain, parseFailure(failure))
      budget ??= this.#openOrderLog()
      await this.#takeOrderSlot(domain, await budget)

      log.info({ domain: name }, 'ordering certificate')
      try {
        // acme-client cannot be cancelled: on close, stop waiting for it and let it finish unobserved.
        const { key, chain } = await untilAborted(issuer.issue(name, AbortSignal.any([closing, lock.signal])), closing)
        issued = decodeBundle(name, name, encodeBundle({ key, chain }))
      } catch (err) {
        if (closing.aborted) throw closing.reason
        await this.#recordFailure(domain, err, lock.signal)
        throw Object.assign(new FST_AUTOCERT_ORDER_FAILED(name, errorMessage(err)), { cause: err })
      }
      // Served from now on, whatever happens to the write.
      this.#adopt(domain, issued)
      log.info(certFields(issued), had === undefined ? 'certificate obtained' : 'certificate renewed')
      if (had === undefined) this.#emit('obtained', certEvent(issued))
      else this.#emit('renewed', { ...certEvent(issued), previousSerial: had.serial })
      if (lock.signal.aborted) throw new FST_AUTOCERT_LOCK_LOST(name)
      await store.put(name, encodeBundle(issued))
      domain.unsaved = false
      await store.delete(failureKey(name)).catch(() => {})
      return issued
    } catch (err) {
      if (issued === undefined) throw err
      // Issued but not stored (the store went away, or the lease lapsed): keep
      // it, serve it, and write it once the store answers — a second order would
      // cost the CA's rate limits. #persist checks no newer one arrived meanwhile.
      domain.unsaved = true
      log.warn({ domain: name, error: errorFields(err) }, 'certificate not stored yet; will retry')
      this.#schedule(domain, Date.now() + retryDelay(1, this.#opts.retryDelays))
      return issued
    } finally {
      await Promise.all([lock.release(), budget?.then((log) => log.lock.release(), () => {})])
    }
  }

  /** Writes a certificate issued while the store was unreachable, unless the store now holds a newer one. */
  async #persist (domain: Domain): Promise<void> {
    const cert = domain.cert as Certificate
    const lock = await this.#lock(domain)
    try {
      // #read adopts the stored certificate if it is newer than ours.
      await this.#read(domain)
      const ours = domain.cert === cert
      if (ours) {
        lock.signal.throwIfAborted()
        await this.#opts.store.put(domain.name, encodeBundle(cert))
        this.#schedule(domain, domain.renewAt as number)
      }
      domain.unsaved = false
      this.#opts.log.info(certFields(domain.cert as Certificate), ours ? 'certificate stored' : 'adopted a newer stored certificate')
    } finally {
      await lock.release()
    }
  }

  /**
   * The fleet-wide budget of new orders is a log of the last hour's orders in
   * the store, under its own lock: opened (locked and read) here, and released
   * by #orderLocked whether or not an order is placed.
   */
  async #openOrderLog (): Promise<{ lock: Lock, recent: number[] }> {
    const { store } = this.#opts
    const lock = await store.lock(ORDER_LOG, this.#closing.signal, { holder: this.#opts.instanceId })
    try {
      const now = Date.now()
      return { lock, recent: parseOrderLog(await readRecord(store, ORDER_LOG)).filter((at) => at > now - HOUR) }
    } catch (err) {
      await lock.release()
      throw err
    }
  }

  /** Counts this order in the budget, or postpones it when the hour's budget is spent. */
  async #takeOrderSlot (domain: Domain, { lock, recent }: { lock: Lock, recent: number[] }): Promise<void> {
    const { store, maxOrdersPerHour } = this.#opts
    if (recent.length >= maxOrdersPerHour) {
      // Not the domain's failure (no failure record): it waits for the next free slot.
      const retryAt = recent[0] + HOUR
      const err = new FST_AUTOCERT_RATE_LIMITED(domain.name, maxOrdersPerHour, new Date(retryAt).toISOString())
      domain.lastError = { message: err.message, at: Date.now() }
      this.#backoff(domain, retryAt, 'budget')
      this.#opts.log.warn({ domain: domain.name, retryAt: new Date(retryAt), maxOrdersPerHour }, 'order budget used up: order postponed')
      throw err
    }
    lock.signal.throwIfAborted()
    await store.put(ORDER_LOG, JSON.stringify([...recent, Date.now()]))
    // Free for the next order of the fleet before this one talks to the CA.
    void lock.release()
  }

  /** Honours a failure record another instance (or an earlier run) left in the store. */
  #checkBackoff (domain: Domain, record: FailureRecord | undefined): void {
    if (record !== undefined && record.retryAt > Date.now()) {
      domain.lastError = { message: record.error, at: record.at }
      this.#backoff(domain, record.retryAt, 'failures')
      throw new FST_AUTOCERT_BACKOFF(domain.name, new Date(record.retryAt).toISOString())
    }
  }

  async #recordFailure (domain: Domain, err: unknown, lockSignal: AbortSignal): Promise<void> {
    const { store, log, retryDelays } = this.#opts
    const previous = parseFailure(await store.get(failureKey(domain.name)).catch(() => undefined))
    const failures = (previous?.failures ?? 0) + 1
    const at = Date.now()
    const retryAt = at + retryDelay(failures, retryDelays)
    const record: FailureRecord = { failures, error: errorMessage(err), at, retryAt }
    if (!lockSignal.aborted) await store.put(failureKey(domain.name), JSON.stringify(record)).catch(() => {})
    this.#fail(domain, err, retryAt)
    this.#backoff(domain, retryAt, 'failures')
    log.error({ domain: domain.name, failures, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate order failed')
  }

  #adopt (domain: Domain, cert: Certificate): void {
    domain.cert = cert
    domain.context = undefined
    domain.reported = false
    domain.lastError = undefined
    domain.retryAt = undefined
    domain.renewAt = renewalTime(cert.notBefore, cert.notAfter, this.#opts.renewBefore)
    this.#schedule(domain, domain.renewAt)
  }

  /** The domain's lock, recorded as this instance's; status() shows who holds it while this instance holds or waits for it. */
  async #lock (domain: Domain): Promise<Lock> {
    const { store, instanceId } = this.#opts
    const onWait = (holder: string | undefined): void => {
      domain.lockHolder = holder ?? 'unknown'
      this.#emit('lock-wait', { domain: domain.name, holder })
    }
    let lock: Lock
    try {
      lock = await store.lock(domain.name, this.#closing.signal, { holder: instanceId, onWait })
    } finally {
      domain.lockHolder = undefined
    }
    domain.lockHolder = instanceId
    return {
      signal: lock.signal,
      release: async () => {
        domain.lockHolder = undefined
        await lock.release()
      }
    }
  }

  #fail (domain: Domain, err: unknown, retryAt?: number): void {
    domain.lastError = { message: errorMessage(err), at: Date.now() }
    const code = (err as { code?: unknown }).code
    this.#emit('failed', { domain: domain.name, error: { message: errorMessage(err), code: typeof code === 'string' ? code : undefined }, retryAt: date(retryAt) })
  }

  /** No order before `retryAt` (the shared failure backoff, or the order budget); a retry is scheduled for then. */
  #backoff (domain: Domain, retryAt: number, reason: 'failures' | 'budget'): void {
    domain.retryAt = retryAt
    this.#schedule(domain, retryAt)
    this.#emit('backoff', { domain: domain.name, retryAt: new Date(retryAt), reason })
  }

  /** A listener that throws must not break the work that emitted. */
  #emit<E extends keyof AutocertEvents> (event: E, ...args: AutocertEvents[E]): void {
    try {
      (this.events.emit as (event: E, ...args: AutocertEvents[E]) => boolean)(event, ...args)
    } catch (err) {
      this.#opts.log.error({ event, error: errorFields(err) }, 'an autocert event listener threw')
    }
  }

  /** One timer per domain: at `at`, renew (or retry) through the same path as a handshake. */
  #schedule (domain: Domain, at: number): void {
    clearTimeout(domain.timer)
    domain.timer = undefined
    domain.nextAt = at
    // Before start() (the server listens) timers are only noted: a CA validation would find no listener.
    if (this.#closing.signal.aborted || !this.#started) return
    const wait = Math.max(0, at - Date.now())
    domain.timer = setTimeout(() => {
      if (wait > MAX_TIMER) return this.#schedule(domain, at)
      domain.timer = undefined
      domain.nextAt = undefined
      void this.#background(domain, domain.unsaved === true ? this.#persist(domain) : this.#renewal(domain))
    }, Math.min(wait, MAX_TIMER)).unref()
  }

  /** A renewal (or retry) a timer asked for. An on-demand name is renewed only while allow() still says yes. */
  async #renewal (domain: Domain): Promise<void> {
    if (domain.onDemand && !(await this.#decide(domain.name, true))) {
      this.#opts.log.info({ domain: domain.name }, 'on-demand name no longer allowed: not renewed')
      this.#drop(domain)
      return
    }
    await this.#order(domain, false)
  }

  /**
   * Work nobody awaits (start-up orders, renewals). Its failure is already in
   * the log and in status(); when it left no retry scheduled (the store was
   * unreachable, say), try again after the first backoff step.
   */
  async #background (domain: Domain, work: Promise<unknown>): Promise<void> {
    try {
      await work
    } catch (err) {
      if (domain.timer !== undefined || this.#closing.signal.aborted) return
      const retryAt = Date.now() + retryDelay(1, this.#opts.retryDelays)
      this.#fail(domain, err, retryAt)
      this.#opts.log.warn({ domain: domain.name, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate work failed; will retry')
      this.#schedule(domain, retryAt)
    }
  }

  async #eachDomain (fn: (domain: Domain) => Promise<void>): Promise<void> {
    const queue = [...this.#domains.values()]
    const worker = async (): Promise<void> => {
      for (let d = queue.shift(); d !== undefined && !this.#closing.signal.aborted; d = queue.shift()) await fn(d)
    }
    await Promise.all(Array.from({ length: Math.min(this.#opts.concurrency, queue.length) }, worker))
  }

  // Refused names are client input: logged at most once per interval, with a count.
  #logRefusal (servername: string): void {
    const now = Date.now()
    this.#refused.count++
    if (now - this.#refused.since < REFUSAL_LOG_INTERVAL) return
    this.#opts.log.warn({ servername: printable(servername), refused: this.#refused.count }, 'refused TLS server name')
    this.#refused = { count: 0, since: now }
  }
}

function live (cert: Certificate | undefined): cert is Certificate {
  return cert !== undefined && cert.notAfter > Date.now()
}

function due (domain: Domain): boolean {
  return domain.renewAt === undefined || domain.renewAt <= Date.now()
}

function date (ms: number | undefined): Date | undefined {
  return ms === undefined ? undefined : new Date(ms)
}

/** Issuance order: a certificate issued later wins, whatever its lifetime. */
function newer (a: Certificate, b: Certificate): boolean {
  return a.notBefore > b.notBefore || (a.notBefore === b.notBefore && a.serial > b.serial)
}

/** Reads a record the plugin rewrites as a whole: unreadable (corrupt) data counts as none. */
async function readRecord (store: CertStore, key: string): Promise<Buffer | undefined> {
  try {
    return await store.get(key)
  } catch (err) {
    if (isCorrupt(err)) return undefined
    throw err
  }
}

function parseOrderLog (data: Buffer | undefined): number[] {
  try {
    const log: unknown = JSON.parse(data?.toString('utf8') ?? '[]')
    return Array.isArray(log) ? log.filter((at): at is number => Number.isFinite(at)) : []
  } catch {
    return []
  }
}

function isCorrupt (err: unknown): boolean {
  return (err as { code?: unknown }).code === 'FST_AUTOCERT_CORRUPT'
}

function parseFailure (data: Buffer | undefined): FailureRecord | undefined {
  if (data === undefined) return undefined
  try {
    const record = JSON.parse(data.toString('utf8')) as FailureRecord
    return Number.isFinite(record.retryAt) && Number.isInteger(record.failures) ? record : undefined
  } catch {
    return undefined
  }
}

function certEvent (cert: Certificate): CertificateEvent {
  return { domain: cert.name, serial: cert.serial, notAfter: new Date(cert.notAfter) }
}

function certFields (cert: Certificate): object {
  return { domain: cert.name, serial: cert.serial, notAfter: new Date(cert.notAfter) }
}

function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

function errorFields (err: unknown): object {
  return err instanceof Error
    ? { type: err.name, message: err.message, code: (err as { code?: unknown }).code }
    : { message: String(err) }
}

/** Client-sent text made safe for a log line or an error message. */
function printable (text: string): string {
  return JSON.stringify(String(text).slice(0, 100))
}
