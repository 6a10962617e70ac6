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
import type { KeyType } from './acme/issuer'
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
  issue (name: string, keyType: KeyType, signal: AbortSignal): Promise<{ key: string, chain: string }>
  /** Starts whatever issue() will need first (the account), without waiting. */
  prepare? (): void
}

export interface ManagerOptions {
  /** Normalised names this manager serves and orders. */
  domains: readonly string[]
  /** The certificates each name has, one per key type, the first preferred where a client supports several. */
  keyTypes: readonly KeyType[]
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
  keyType: KeyType
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
  /** Which of the name's certificates this is: one entry per name and key type. */
  keyType: KeyType
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

/** A host name served with one certificate per key type. */
interface Site {
  readonly name: string
  /** One per key type, the primary (options.keyType's first) first. */
  readonly slots: Slot[]
  /** Not listed: allowed on demand, and dropped from memory when least recently used. */
  readonly onDemand?: true
  /** The name's lock, in this process. */
  readonly turn: Turn
  /** The TLS contexts of the slots that have one, primary first; cleared when a slot adopts a new certificate. */
  contexts?: SecureContext[]
  /** The first expiry among the certificates in `contexts` (ms). */
  expires?: number
}

/** A queue of this process's takers of one store lock: settles when the last one has released it. */
interface Turn {
  last: Promise<void>
}

/** One certificate of a site: its own store key, order, renewal and backoff (the lock is the name's). */
interface Slot {
  readonly site: Site
  readonly name: string
  readonly type: KeyType
  /** `<name>` for ECDSA, `<name>+rsa` for RSA (Go autocert's keys). */
  readonly key: string
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
  /** The order in flight: `done` once stored (or given up), `served` as soon as its certificate is in memory. */
  ordering?: { done: Promise<Certificate>, served: Promise<Certificate> }
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
  readonly #sites = new Map<string, Site>()
  /** The on-demand names in memory, least recently used first. */
  readonly #recent = new Map<string, Site>()
  /** onDemand.allow() answers (or the call in flight), oldest first. */
  readonly #decisions = new Map<string, { allowed: Promise<boolean>, until: number }>()
  readonly #closing = new AbortController()
  /** The order budget's lock, in this process. */
  readonly #budgetTurn: Turn = { last: Promise.resolve() }
  #refused = { count: 0, since: 0 }
  #started = false

  constructor (opts: ManagerOptions) {
    this.#opts = opts
    for (const name of opts.domains) this.#sites.set(name, this.#site(name))
  }

  /**
   * The TLS hot path, for an SNICallback on `socket`. A name in memory with a
   * live certificate answers synchronously: one map lookup, no store call, no
   * allocation.
   */
  resolve (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void, socket?: KeyCertSocket): void {
    const site = this.#sites.get(servername)
    if (site?.contexts !== undefined && (site.expires as number) > Date.now()) {
      if (site.onDemand) this.#touch(site)
      serve(site.contexts, cb, socket)
      return
    }
    this.#contexts(servername).then((contexts) => { serve(contexts, cb, socket) }, cb)
  }

  /**
   * The contexts serving `servername`, primary key type first: every
   * certificate of the name that can be had (a key type that fails does not
   * stop the others from being served).
   */
  async #contexts (servername: string): Promise<SecureContext[]> {
    const site = await this.#allowed(servername)
    const results = await Promise.allSettled(site.slots.map(async (slot) => await this.#context(slot)))
    const contexts = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
    if (contexts.length === 0) throw (results[0] as PromiseRejectedResult).reason
    // Kept for the hot path only when complete: while a key type fails, each handshake asks for it
    // again (cheap: a slot in backoff refuses from memory, a failed read is repeated for a second).
    if (contexts.length === site.slots.length) {
      site.contexts = contexts
      site.expires = Math.min(...site.slots.map((slot) => (slot.cert as Certificate).notAfter))
    }
    return contexts
  }

  /** The certificate served for `name` (its primary key type's), obtaining it if needed. */
  async certificate (name: string): Promise<Certificate> {
    return this.#certificate((await this.#allowed(name)).slots[0])
  }

  /** Orders new certificates for `name` now (one per key type), whatever the current ones' validity; resolves with the primary one. */
  async renew (name: string): Promise<Certificate> {
    const site = await this.#allowed(name)
    const [primary] = await Promise.all(site.slots.map(async (slot) => await this.#order(slot, true)))
    return primary
  }

  status (): DomainStatus[] {
    return [...this.#sites.values()].flatMap((site) => site.slots).map((d) => ({
      domain: d.name,
      keyType: d.type,
      serial: d.cert?.serial,
      notAfter: date(d.cert?.notAfter),
      renewAt: date(d.nextAt ?? d.renewAt),
      lastError: d.lastError && { message: d.lastError.message, at: new Date(d.lastError.at) },
      retryAfter: d.retryAt !== undefined && d.retryAt > Date.now() ? new Date(d.retryAt) : undefined,
      lockHolder: d.lockHolder,
      onDemand: d.site.onDemand
    }))
  }

  /** Loads every listed domain from the store into memory. Never orders; never throws. */
  async prewarm (): Promise<void> {
    await this.#eachSlot(async (slot) => { await this.#load(slot).catch(() => undefined) })
  }

  /**
   * Orders, in the background, every listed domain that has no live certificate.
   * Call it once the server listens: the CA's validation request needs it.
   */
  start (): void {
    this.#started = true
    for (const slot of this.#slots()) {
      if (slot.nextAt !== undefined && slot.timer === undefined) this.#schedule(slot, slot.nextAt)
    }
    void this.#eachSlot(async (slot) => {
      if (!live(slot.cert)) await this.#background(slot, this.#certificate(slot))
    })
  }

  /**
   * Stops timers and ends orders in flight: they stop waiting for the CA and
   * release their locks. Store reads still in flight finish on their own.
   */
  async close (): Promise<void> {
    this.#closing.abort(new FST_AUTOCERT_CLOSED())
    const ordering: Array<Promise<unknown>> = []
    for (const slot of this.#slots()) {
      clearTimeout(slot.timer)
      if (slot.ordering !== undefined) ordering.push(slot.ordering.done)
    }
    await Promise.allSettled(ordering)
  }

  #site (name: string, onDemand?: true): Site {
    const site: Site = { name, slots: [], onDemand, turn: { last: Promise.resolve() } }
    for (const type of this.#opts.keyTypes) site.slots.push({ site, name, type, key: type === 'rsa' ? `${name}+rsa` : name })
    return site
  }

  * #slots (): Iterable<Slot> {
    for (const site of this.#sites.values()) yield * site.slots
  }

  /** The site `servername` names: listed, or allowed on demand. Anything else is refused. */
  async #allowed (servername: string): Promise<Site> {
    const name = this.#sites.has(servername) ? servername : normalizeName(servername)
    const known = name === undefined ? undefined : this.#sites.get(name)
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
    let site = this.#sites.get(name)
    if (site === undefined) {
      site = this.#site(name, true)
      this.#sites.set(name, site)
      this.#recent.set(name, site)
      this.#evict(site)
    }
    return site
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
  #touch (site: Site): void {
    this.#recent.delete(site.name)
    this.#recent.set(site.name, site)
  }

  /** Drops the least recently used on-demand names beyond cacheSize, never `added`; the store still has their certificates. */
  #evict (added: Site): void {
    const { cacheSize } = this.#opts.onDemand as OnDemandOptions
    for (const site of this.#recent.values()) {
      if (this.#recent.size <= cacheSize) return
      // Work in flight finishes first; the next name added evicts it.
      if (site !== added && site.slots.every((slot) => slot.ordering === undefined && slot.loading === undefined)) this.#drop(site)
    }
  }

  #drop (site: Site): void {
    for (const slot of site.slots) {
      clearTimeout(slot.timer)
      slot.timer = undefined
    }
    this.#recent.delete(site.name)
    this.#sites.delete(site.name)
  }

  /**
   * The TLS context of `slot`'s certificate. A stored bundle whose key does not
   * match is found here, when its context is first built: it is never served,
   * and a fresh order replaces it.
   */
  async #context (slot: Slot): Promise<SecureContext> {
    const cert = await this.#certificate(slot, true)
    if (slot.context !== undefined && slot.cert === cert) return slot.context
    try {
      slot.context = toSecureContext(cert)
    } catch (err) {
      this.#opts.log.warn({ domain: slot.name, blob: slot.key, error: errorFields(err) }, 'ignoring unusable stored certificate')
      slot.reported = true
      slot.rejected = cert.serial
      slot.cert = undefined
      slot.context = toSecureContext(await this.#order(slot, false, true))
    }
    return slot.context
  }

  /** A live certificate: memory, then store, then a new order (`served`: see #order). */
  async #certificate (slot: Slot, served = false): Promise<Certificate> {
    if (live(slot.cert)) return slot.cert
    // In backoff (or waiting for the order budget): refuse from memory. The store
    // is still looked at now and then, since another instance may have succeeded.
    const now = Date.now()
    if (slot.retryAt !== undefined && slot.retryAt > now) {
      if (now - (slot.checkedAt ?? 0) < BACKOFF_RECHECK) throw new FST_AUTOCERT_BACKOFF(slot.name, new Date(slot.retryAt).toISOString())
      slot.checkedAt = now
      const stored = await this.#load(slot)
      if (stored !== undefined) return stored
      throw new FST_AUTOCERT_BACKOFF(slot.name, new Date(slot.retryAt).toISOString())
    }
    const cert = await this.#load(slot)
    if (cert !== undefined && live(cert)) return cert
    return this.#order(slot, false, served)
  }

  /** Reads the store (one read in flight per name) and adopts a live certificate found there. */
  #load (slot: Slot): Promise<Certificate | undefined> {
    slot.loading ??= this.#read(slot).finally(() => { slot.loading = undefined })
    return slot.loading
  }

  async #read (slot: Slot): Promise<Certificate | undefined> {
    const { store, log } = this.#opts
    // A read that just failed is not repeated for every handshake that follows.
    if (slot.readError !== undefined && Date.now() - slot.readError.at < READ_ERROR_TTL) throw slot.readError.err
    let cert: Certificate
    try {
      const data = await store.get(slot.key)
      if (data === undefined) return undefined
      cert = decodeBundle(slot.name, slot.key, data)
    } catch (err) {
      if (isCorrupt(err)) {
        // Never served; the next order replaces it. Logged once, not at every read.
        if (!slot.reported) log.warn({ domain: slot.name, blob: slot.key, error: errorFields(err) }, 'ignoring unusable stored certificate')
        slot.reported = true
        return undefined
      }
      // An unreachable store is an error, never a miss: no order on an outage.
      this.#fail(slot, err)
      slot.readError = { err, at: Date.now() }
      log.error({ domain: slot.name, error: errorFields(err) }, 'certificate store read failed')
      throw err
    }
    slot.readError = undefined
    if (cert.serial === slot.rejected) return undefined
    if (!live(cert)) {
      if (!slot.reported) log.info({ ...certFields(slot, cert), blob: slot.key }, 'stored certificate has expired')
      slot.reported = true
      return undefined
    }
    if (slot.cert === undefined || newer(cert, slot.cert)) {
      this.#adopt(slot, cert)
      log.info(certFields(slot, cert), 'certificate loaded')
      this.#emit('loaded', certEvent(slot, cert))
    }
    return slot.cert
  }

  /**
   * One order in flight per name and key type, in this process; the store lock
   * makes it one per fleet. Resolves once the certificate is stored, or with
   * `served`, as soon as it is in memory: a handshake need not wait for the writes.
   */
  #order (slot: Slot, force: boolean, served = false): Promise<Certificate> {
    if (slot.ordering === undefined) {
      let adopted!: (cert: Certificate) => void
      const inMemory = new Promise<Certificate>((resolve) => { adopted = resolve })
      const done = this.#orderLocked(slot, force, adopted).finally(() => { slot.ordering = undefined })
      slot.ordering = { done, served: Promise.race([inMemory, done]) }
      // Whoever waits gets the rejection; nobody may be waiting for the other one.
      slot.ordering.served.catch(() => {})
    }
    return served ? slot.ordering.served : slot.ordering.done
  }

  async #orderLocked (slot: Slot, force: boolean, adopted: (cert: Certificate) => void): Promise<Certificate> {
    const { store, issuer, log } = this.#opts
    const { name } = slot
    const closing = this.#closing.signal
    closing.throwIfAborted()
    if (!force && slot.retryAt !== undefined && slot.retryAt > Date.now()) {
      throw new FST_AUTOCERT_BACKOFF(name, new Date(slot.retryAt).toISOString())
    }
    const had = slot.cert
    // The account lookup (CA round trips) overlaps the wait for the lock.
    issuer.prepare?.()
    const lock = await this.#lock(slot)
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
        this.#read(slot),
        force ? undefined : readRecord(store, failureKey(slot.key))
      ])
      if (stored !== undefined && (force ? stored !== had : !due(slot))) {
        // A retry timer may have replaced the renewal timer: arm it again.
        if (slot.timer === undefined) this.#schedule(slot, slot.renewAt as number)
        return stored
      }
      if (!force) this.#checkBackoff(slot, parseFailure(failure))
      budget ??= this.#openOrderLog()
      await this.#takeOrderSlot(slot, await budget)

      log.info({ domain: name }, 'ordering certificate')
      try {
        // acme-client cannot be cancelled: on close, stop waiting for it and let it finish unobserved.
        const { key, chain } = await untilAborted(issuer.issue(name, slot.type, AbortSignal.any([closing, lock.signal])), closing)
        issued = decodeBundle(name, slot.key, encodeBundle({ key, chain }))
      } catch (err) {
        if (closing.aborted) throw closing.reason
        await this.#recordFailure(slot, err, lock.signal)
        throw Object.assign(new FST_AUTOCERT_ORDER_FAILED(name, errorMessage(err)), { cause: err })
      }
      // Served from now on, whatever happens to the write.
      this.#adopt(slot, issued)
      adopted(issued)
      log.info(certFields(slot, issued), had === undefined ? 'certificate obtained' : 'certificate renewed')
      if (had === undefined) this.#emit('obtained', certEvent(slot, issued))
      else this.#emit('renewed', { ...certEvent(slot, issued), previousSerial: had.serial })
      if (lock.signal.aborted) throw new FST_AUTOCERT_LOCK_LOST(name)
      await store.put(slot.key, encodeBundle(issued))
      slot.unsaved = false
      await store.delete(failureKey(slot.key)).catch(() => {})
      return issued
    } catch (err) {
      if (issued === undefined) throw err
      // Issued but not stored (the store went away, or the lease lapsed): keep
      // it, serve it, and write it once the store answers — a second order would
      // cost the CA's rate limits. #persist checks no newer one arrived meanwhile.
      slot.unsaved = true
      log.warn({ domain: name, error: errorFields(err) }, 'certificate not stored yet; will retry')
      this.#schedule(slot, Date.now() + retryDelay(1, this.#opts.retryDelays))
      return issued
    } finally {
      await Promise.all([lock.release(), budget?.then((log) => log.lock.release(), () => {})])
    }
  }

  /** Writes a certificate issued while the store was unreachable, unless the store now holds a newer one. */
  async #persist (slot: Slot): Promise<void> {
    const cert = slot.cert as Certificate
    const lock = await this.#lock(slot)
    try {
      // #read adopts the stored certificate if it is newer than ours.
      await this.#read(slot)
      const ours = slot.cert === cert
      if (ours) {
        lock.signal.throwIfAborted()
        await this.#opts.store.put(slot.key, encodeBundle(cert))
        this.#schedule(slot, slot.renewAt as number)
      }
      slot.unsaved = false
      this.#opts.log.info(certFields(slot, slot.cert as Certificate), ours ? 'certificate stored' : 'adopted a newer stored certificate')
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
    // Polling the store for it spaced a start-up's first orders a second apart.
    const lock = await this.#locked(this.#budgetTurn, () => store.lock(ORDER_LOG, this.#closing.signal, { holder: this.#opts.instanceId }))
    try {
      const now = Date.now()
      return { lock, recent: parseOrderLog(await readRecord(store, ORDER_LOG)).filter((at) => at > now - HOUR) }
    } catch (err) {
      await lock.release()
      throw err
    }
  }

  /** Counts this order in the budget, or postpones it when the hour's budget is spent. */
  async #takeOrderSlot (slot: Slot, { lock, recent }: { lock: Lock, recent: number[] }): Promise<void> {
    const { store, maxOrdersPerHour } = this.#opts
    if (recent.length >= maxOrdersPerHour) {
      // Not the domain's failure (no failure record): it waits for the next free slot.
      const retryAt = recent[0] + HOUR
      const err = new FST_AUTOCERT_RATE_LIMITED(slot.name, maxOrdersPerHour, new Date(retryAt).toISOString())
      slot.lastError = { message: err.message, at: Date.now() }
      this.#backoff(slot, retryAt, 'budget')
      this.#opts.log.warn({ domain: slot.name, retryAt: new Date(retryAt), maxOrdersPerHour }, 'order budget used up: order postponed')
      throw err
    }
    lock.signal.throwIfAborted()
    await store.put(ORDER_LOG, JSON.stringify([...recent, Date.now()]))
    // Free for the next order of the fleet before this one talks to the CA.
    void lock.release()
  }

  /** Honours a failure record another instance (or an earlier run) left in the store. */
  #checkBackoff (slot: Slot, record: FailureRecord | undefined): void {
    if (record !== undefined && record.retryAt > Date.now()) {
      slot.lastError = { message: record.error, at: record.at }
      this.#backoff(slot, record.retryAt, 'failures')
      throw new FST_AUTOCERT_BACKOFF(slot.name, new Date(record.retryAt).toISOString())
    }
  }

  async #recordFailure (slot: Slot, err: unknown, lockSignal: AbortSignal): Promise<void> {
    const { store, log, retryDelays } = this.#opts
    const previous = parseFailure(await store.get(failureKey(slot.key)).catch(() => undefined))
    const failures = (previous?.failures ?? 0) + 1
    const at = Date.now()
    const retryAt = at + retryDelay(failures, retryDelays)
    const record: FailureRecord = { failures, error: errorMessage(err), at, retryAt }
    if (!lockSignal.aborted) await store.put(failureKey(slot.key), JSON.stringify(record)).catch(() => {})
    this.#fail(slot, err, retryAt)
    this.#backoff(slot, retryAt, 'failures')
    log.error({ domain: slot.name, failures, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate order failed')
  }

  #adopt (slot: Slot, cert: Certificate): void {
    slot.cert = cert
    slot.context = undefined
    slot.site.contexts = undefined
    slot.reported = false
    slot.lastError = undefined
    slot.retryAt = undefined
    slot.renewAt = renewalTime(cert.notBefore, cert.notAfter, this.#opts.renewBefore)
    this.#schedule(slot, slot.renewAt)
  }

  /** The domain's lock, recorded as this instance's; status() shows who holds it while this instance holds or waits for it. */
  /**
   * The lock of `slot`'s name: one per name, whatever the key type, because a
   * name has one pending TLS-ALPN-01 challenge at a time. The key types of a
   * name take turns in this process first, so they do not poll the store for it.
   */
  async #lock (slot: Slot): Promise<Lock> {
    const { store, instanceId } = this.#opts
    const onWait = (holder: string | undefined): void => {
      slot.lockHolder = holder ?? 'unknown'
      this.#emit('lock-wait', { domain: slot.name, holder })
    }
    const lock = await this.#locked(slot.site.turn, () => store.lock(slot.name, this.#closing.signal, { holder: instanceId, onWait }))
      .finally(() => { slot.lockHolder = undefined })
    slot.lockHolder = instanceId
    return {
      signal: lock.signal,
      release: async () => {
        slot.lockHolder = undefined
        await lock.release()
      }
    }
  }

  /**
   * A store lock taken after this process's earlier takers of `turn` released
   * theirs: they queue here, in memory, instead of polling the store (an
   * AzureBlobStore waiter looks about once a second).
   */
  async #locked (turn: Turn, take: () => Promise<Lock>): Promise<Lock> {
    const previous = turn.last
    let pass!: () => void
    turn.last = new Promise<void>((resolve) => { pass = resolve })
    try {
      await untilAborted(previous, this.#closing.signal)
      const held = await take()
      return { signal: held.signal, release: async () => { await held.release(); pass() } }
    } catch (err) {
      pass()
      throw err
    }
  }

  #fail (slot: Slot, err: unknown, retryAt?: number): void {
    slot.lastError = { message: errorMessage(err), at: Date.now() }
    const code = (err as { code?: unknown }).code
    this.#emit('failed', { domain: slot.name, error: { message: errorMessage(err), code: typeof code === 'string' ? code : undefined }, retryAt: date(retryAt) })
  }

  /** No order before `retryAt` (the shared failure backoff, or the order budget); a retry is scheduled for then. */
  #backoff (slot: Slot, retryAt: number, reason: 'failures' | 'budget'): void {
    slot.retryAt = retryAt
    this.#schedule(slot, retryAt)
    this.#emit('backoff', { domain: slot.name, retryAt: new Date(retryAt), reason })
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
  #schedule (slot: Slot, at: number): void {
    clearTimeout(slot.timer)
    slot.timer = undefined
    slot.nextAt = at
    // Before start() (the server listens) timers are only noted: a CA validation would find no listener.
    if (this.#closing.signal.aborted || !this.#started) return
    // An on-demand name dropped from memory while its certificate was being read: no timer for it.
    if (this.#sites.get(slot.name) !== slot.site) return
    const wait = Math.max(0, at - Date.now())
    slot.timer = setTimeout(() => {
      if (wait > MAX_TIMER) return this.#schedule(slot, at)
      slot.timer = undefined
      slot.nextAt = undefined
      void this.#background(slot, slot.unsaved === true ? this.#persist(slot) : this.#renewal(slot))
    }, Math.min(wait, MAX_TIMER)).unref()
  }

  /** A renewal (or retry) a timer asked for. An on-demand name is renewed only while allow() still says yes. */
  async #renewal (slot: Slot): Promise<void> {
    if (slot.site.onDemand && !(await this.#decide(slot.name, true))) {
      this.#opts.log.info({ domain: slot.name }, 'on-demand name no longer allowed: not renewed')
      this.#drop(slot.site)
      return
    }
    await this.#order(slot, false)
  }

  /**
   * Work nobody awaits (start-up orders, renewals). Its failure is already in
   * the log and in status(); when it left no retry scheduled (the store was
   * unreachable, say), try again after the first backoff step.
   */
  async #background (slot: Slot, work: Promise<unknown>): Promise<void> {
    try {
      await work
    } catch (err) {
      if (slot.timer !== undefined || this.#closing.signal.aborted) return
      const retryAt = Date.now() + retryDelay(1, this.#opts.retryDelays)
      this.#fail(slot, err, retryAt)
      this.#opts.log.warn({ domain: slot.name, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate work failed; will retry')
      this.#schedule(slot, retryAt)
    }
  }

  async #eachSlot (fn: (slot: Slot) => Promise<void>): Promise<void> {
    const queue = [...this.#slots()].filter((slot) => slot.site.onDemand === undefined)
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

/** The part of a TLSSocket that installs a further certificate (another key type) for its handshake. */
export interface KeyCertSocket {
  setKeyCert?: (context: SecureContext) => void
}

/**
 * Answers an SNICallback with `contexts`, one per key type. Node takes only
 * the current certificate of a context an SNICallback returns, never the
 * others of the same context (nodejs/node#54235), so the further ones are
 * installed on the socket first, each into its key type's slot, and OpenSSL
 * picks per client. The primary goes last: it is the one a client that
 * supports both gets.
 */
function serve (contexts: readonly SecureContext[], cb: (err: Error | null, ctx?: SecureContext) => void, socket: KeyCertSocket | undefined): void {
  for (let i = 1; i < contexts.length; i++) socket?.setKeyCert?.(contexts[i])
  cb(null, contexts[0])
}

function live (cert: Certificate | undefined): cert is Certificate {
  return cert !== undefined && cert.notAfter > Date.now()
}

function due (slot: Slot): boolean {
  return slot.renewAt === undefined || slot.renewAt <= Date.now()
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

function certEvent (slot: Slot, cert: Certificate): CertificateEvent {
  return { domain: cert.name, keyType: slot.type, serial: cert.serial, notAfter: new Date(cert.notAfter) }
}

function certFields (slot: Slot, cert: Certificate): object {
  return { domain: cert.name, keyType: slot.type, serial: cert.serial, notAfter: new Date(cert.notAfter) }
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
