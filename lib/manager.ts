// The certificate manager: each name's certificates from memory, the store or a new order, and their renewal.
import type { SecureContext } from 'node:tls'
import { nextCheckTime, RENEWAL_INFO_INTERVALS, renewalPoint, sameWindow, type RenewalInfo, type RenewalWindow } from './acme/ari'
import { ReplacesRefusedError, type IssueOptions, type KeyType } from './acme/issuer'
import { certificateMetadata, decodeBundle, encodeBundle, summaryFromMetadata, summaryOf, isWhole, toSecureContext, type Certificate, type CertificateSummary } from './certificate'
import { systemClock, timeoutSignal, type Clock } from './clock'
import {
  FST_AUTOCERT_BACKOFF, FST_AUTOCERT_CLOCK_SKEW, FST_AUTOCERT_CLOSED, FST_AUTOCERT_HANDSHAKE_TIMEOUT, FST_AUTOCERT_LOCK_LOST,
  FST_AUTOCERT_NAME_NOT_ALLOWED, FST_AUTOCERT_ORDER_FAILED, FST_AUTOCERT_RATE_LIMITED, FST_AUTOCERT_REVOKE_FAILED
} from './errors'
import {
  AutocertEmitter, errorCode, errorFields, errorMessage, printable,
  type BackoffReason, type CertificateEvent, type DomainStatus, type Logger
} from './events'
import { CLOCK_TOLERANCE, OrderBudget, type BudgetClaim } from './fleet/budget'
import { FailureRecords, type FailureRecord } from './fleet/failures'
import { LockQueue } from './fleet/lock-queue'
import { FleetLocks, type LockKind, type LockWaitListener } from './fleet/locks'
import { RenewalInfoRecords, type RenewalInfoRecord } from './fleet/renewal-info'
import { Limiter } from './limiter'
import { isAddress, normalizeName, wildcardOf } from './names'
import { budgetRetryTime, OnDemandPolicy, RefusalLog } from './on-demand'
import type { Settings } from './options'
import { renewalTime, retryDelay } from './renewal'
import { untilAborted } from './signals'
import { TimerQueue, type Queued } from './timer-queue'
import { storeKeys, storeLimits } from './store/keys'
import { isCorrupt, readBounded, type CertStore, type Lock } from './store/store'

/*
 * name -> memory -> store -> lock -> order -> store -> memory. Each step has one place: #load reads the store, #orderLocked holds the lock
 * and talks to the CA, #adopt puts a certificate in memory and schedules its
 * renewal. What the fleet shares (the failure backoff, the order budget) and
 * the on-demand policy live in their own files and never touch a slot.
 */

/** Orders one certificate; the manager decides when and holds the lock. */
export interface CertificateSource {
  /** `replaces`: the certificate the order renews; a CA that refuses it (replaced already, say) rejects with ReplacesRefusedError. */
  issue (name: string, keyType: KeyType, signal: AbortSignal, options?: IssueOptions): Promise<{ key: string, chain: string }>
  /**
   * Gets ready what issue() will need first (the account); resolves when it is.
   * `onLockWait` hears of a wait for a lock another instance holds meanwhile.
   */
  prepare? (onLockWait?: LockWaitListener): Promise<void>
  /** The CA's clock minus this machine's (ms), as its last answer showed it; undefined when not known. */
  clockOffset? (): number | undefined
  /** The CA's renewal window for `cert` (RFC 9773); undefined when the CA publishes none. Without this method, none is asked for. */
  renewalInfo? (cert: Certificate, signal: AbortSignal): Promise<RenewalInfo | undefined>
  /**
   * Whether the CA that issued `cert` publishes renewal windows at all, as its
   * directory says (no request per certificate). False spares the fleet's
   * record and the name's lock; without this method, it is taken to.
   */
  offersRenewalInfo? (cert: CertificateSummary): Promise<boolean>
  /** Revokes `cert` at the CA (`reason`: an RFC 5280 CRLReason code). */
  revoke? (cert: Certificate, reason: number | undefined, signal: AbortSignal): Promise<void>
}

/** The validated options the manager reads: the front ends pass these and nothing else of Settings. */
export const MANAGER_SETTINGS = [
  'domains', 'keyType', 'renewBefore', 'retryDelays', 'maxOrdersPerHour', 'concurrency', 'instanceId', 'onDemand', 'handshakeTimeout', 'lockTimeout', 'prewarmTimeout', 'contextCacheSize'
] as const

/** The manager's settings, plus what the front end built for it. */
export type ManagerOptions = Pick<Settings, typeof MANAGER_SETTINGS[number]> & {
  store: CertStore
  issuer: CertificateSource
  log: Logger
  /** Default: the system's. */
  clock?: Clock
  /** Told of every certificate that enters memory (loaded, obtained, renewed, adopted from the fleet), by its name. */
  adopted?: (name: string) => void
}

/** A host name served with one certificate per key type. */
interface Site {
  readonly name: string
  /** One per key type, the primary (options.keyType's first) first. */
  readonly slots: Slot[]
  /** Not listed: allowed on demand, and dropped from memory when least recently used. */
  readonly onDemand?: true
  /** An IP address: its certificates are the server's default ones (a client without SNI), kept whole, never cooled. */
  readonly pinned?: true
  /** This process's takers of the name's lock, from the first one on. */
  lockQueue?: LockQueue
  /** The TLS contexts of the slots, primary first, once every slot has one; cleared when a slot adopts a new certificate. */
  contexts?: SecureContext[]
  /** The first expiry among the certificates in `contexts` (ms). */
  expires?: number
  /**
   * On demand: false from a hold (a refusal) until someone asks for the name
   * again. A name still unasked when its retry comes, and without a certificate,
   * is forgotten instead of retried.
   */
  asked?: boolean
}

/** How long an order's caller waits: until the certificate is in memory (a handshake), or also stored. */
type Until = 'in-memory' | 'stored'

/** One certificate of a site: its own store key, order, renewal and backoff (the lock is the name's); its timer is its place in the manager's TimerQueue. */
interface Slot extends Queued {
  readonly site: Site
  readonly name: string
  readonly type: KeyType
  /** storeKeys.certificate(name, type). */
  readonly key: string
  lockHolder?: string
  /**
   * The certificate served: whole (key and chain) while its site is among the
   * contextCacheSize most recently used, else what is known of it without
   * them (read whole again from the store when needed: #certificate).
   */
  cert?: Certificate | CertificateSummary
  /** Built on the first handshake that needs it, not at load: most names of a big fleet stay idle. */
  context?: SecureContext
  renewAt?: number
  /** The renewal time by the certificate's lifetime alone (renewalTime), drawn at adoption. */
  lifetimeRenewAt?: number
  /** No renewal before this, whatever the window: the certificate looked due when it was issued (#dueAtIssue). */
  renewNotBefore?: number
  /** The fleet's renewal information, as the store holds it, when it is about `cert`. */
  ari?: RenewalInfoRecord
  /** When this instance next looks at the renewal information (the store's record, then the CA if it is due); undefined: not before another certificate. */
  ariCheckAt?: number
  /** The look at the renewal information in progress: one at a time per certificate. */
  checking?: Promise<void>
  /** No order before `until`: the fleet's failure backoff, its spent order budget, or this machine's clock (off by `offset` ms). */
  hold?: { until: number, reason: BackoffReason, offset?: number }
  /** The lock this slot's order waits for, held by someone else. */
  waiting?: { lock: LockKind, holder: string, since: number }
  lastError?: { message: string, at: number }
  /** The certificate in memory was issued but could not be written yet. */
  unsaved?: boolean
  /** An unusable or expired stored certificate was logged already (once is enough). */
  reported?: boolean
  /** Serial of a stored certificate whose key did not match it: not adopted again. */
  rejected?: string
  /** When its renewal (or retry, or write) is due: its timer's time, or, before start(), the time it will be armed for. */
  nextAt?: number
  /** When a handshake held back last looked at the store (at most once per HOLD_RECHECK). */
  checkedAt?: number
  /** The last failed store read, repeated to callers for READ_ERROR_TTL. */
  readError?: { err: unknown, at: number }
  loading?: Promise<Certificate | undefined>
  /** The order in flight: `done` once stored (or given up), `inMemory` as soon as its certificate is served. */
  ordering?: { done: Promise<Certificate>, inMemory: Promise<Certificate> }
}

const READ_ERROR_TTL = 1000
const HOLD_RECHECK = 10_000
/** How long an instance whose clock is off waits before it looks at it again (and at most how often it says so). */
const CLOCK_RECHECK = 60_000
/** The earliest renewal of a certificate that looked due the moment it was issued: a clock problem, not a reason to order again. */
const DUE_AT_ISSUE_DELAY = 3_600_000
/**
 * A certificate obtained by a budget-exempt renewal (its CA's window) is
 * renewed exempt again no sooner than this: a CA whose answers keep moving
 * the window to the past costs the budget's orders, never a loop.
 */
const EXEMPT_SPACING = 3_600_000
/** At most this much later than the record says (a tenth of the interval, at most), each instance looks at renewal information: the first one asks the CA, the others read its answer. */
const CHECK_SPREAD = 5 * 60_000

export class CertificateManager {
  readonly events: AutocertEmitter
  readonly #opts: ManagerOptions
  readonly #clock: Clock
  readonly #sites = new Map<string, Site>()
  readonly #onDemand: OnDemandPolicy<Site> | undefined
  readonly #refusals: RefusalLog
  readonly #failures: FailureRecords
  readonly #budget: OrderBudget
  readonly #locks: FleetLocks
  readonly #renewalInfo: RenewalInfoRecords
  /** Background work (renewals, renewal-information checks): `concurrency` at a time. */
  readonly #backgroundLimit: Limiter
  /** Every certificate's timer, on one timer of the clock. */
  readonly #timers: TimerQueue<Slot>
  readonly #closing = new AbortController()
  #started = false
  /**
   * The sites whose certificates are kept whole (and their TLS contexts, once
   * built), least recently used first: at most contextCacheSize (a Set keeps
   * insertion order). The others keep what is known of their certificates.
   */
  readonly #warm = new Set<Site>()
  /** The store reads of prewarm(), which may outlast it (prewarmTimeout): start() orders after them. */
  #prewarming: Promise<void> | undefined
  /** When a wrong clock was last logged (at most once per CLOCK_RECHECK for the process). */
  #clockLoggedAt = -Infinity

  constructor (opts: ManagerOptions) {
    this.#opts = opts
    const clock = this.#clock = opts.clock ?? systemClock
    this.events = new AutocertEmitter(opts.log)
    this.#onDemand = opts.onDemand && new OnDemandPolicy<Site>(opts.onDemand, opts.log, clock)
    this.#refusals = new RefusalLog(opts.log, clock)
    this.#failures = new FailureRecords(opts.store, opts.retryDelays, clock, opts.log)
    this.#locks = new FleetLocks({ store: opts.store, holder: opts.instanceId, timeout: opts.lockTimeout, clock, log: opts.log })
    this.#renewalInfo = new RenewalInfoRecords(opts.store, clock, opts.log)
    this.#backgroundLimit = new Limiter(opts.concurrency)
    this.#timers = new TimerQueue<Slot>(clock, (slot) => { void this.#background(slot, this.#tick(slot)) })
    this.#budget = new OrderBudget({ store: opts.store, maxOrdersPerHour: opts.maxOrdersPerHour, locks: this.#locks, clock, closing: this.#closing.signal, log: opts.log })
    for (const name of opts.domains) this.#sites.set(name, this.#site(name))
  }

  /**
   * The TLS hot path, for an SNICallback on `socket`. A name in memory with a
   * live certificate answers synchronously: one map lookup, no store call, no
   * allocation.
   */
  resolve (servername: string, cb: (err: Error | null, ctx?: SecureContext) => void, socket?: KeyCertSocket): void {
    const site = this.#sites.get(servername) ?? this.#covering(servername)
    if (site?.contexts !== undefined && (site.expires as number) > this.#clock.now()) {
      if (site.onDemand) this.#onDemand?.touch(site.name, site)
      this.#touch(site)
      serve(site.contexts, cb, socket)
      return
    }
    this.#withinHandshake(servername, this.#handshakeContexts(servername)).then((contexts) => { serve(contexts, cb, socket) }, cb)
  }

  /**
   * `work` for a handshake, given up after handshakeTimeout with a coded error;
   * the work itself (a read, an order) goes on, and the next handshake finds it.
   */
  #withinHandshake<T> (servername: string, work: Promise<T>): Promise<T> {
    const { handshakeTimeout } = this.#opts
    return new Promise((resolve, reject) => {
      const timer = this.#clock.setTimeout(() => { reject(new FST_AUTOCERT_HANDSHAKE_TIMEOUT(printable(servername), handshakeTimeout)) }, handshakeTimeout)
      work.then(resolve, reject).finally(() => { this.#clock.clearTimeout(timer) })
    })
  }

  /** The certificate served for `name` (its primary key type's), obtaining it if needed. */
  async certificate (name: string): Promise<Certificate> {
    return this.#certificate((await this.#allowed(name)).slots[0], 'stored')
  }

  /** Orders new certificates for `name` now (one per key type), whatever the current ones' validity; resolves with the primary one. */
  async renew (name: string): Promise<Certificate> {
    const site = await this.#allowed(name)
    const [primary] = await Promise.all(site.slots.map(async (slot) => await this.#renewed(slot)))
    return primary
  }

  /**
   * A forced order's certificate, issued after this call: an order already in
   * flight is joined, but if it had already served its certificate when this
   * was called, that one is not a renewal, and a new order follows it.
   */
  async #renewed (slot: Slot): Promise<Certificate> {
    const served = slot.cert?.serial
    const cert = await this.#order(slot, { force: true, until: 'stored' })
    return cert.serial === served ? await this.#order(slot, { force: true, until: 'stored' }) : cert
  }

  /**
   * Replaces the certificates of `name` (one per key type) with new ones, then
   * revokes the old ones at the CA (`reason`: an RFC 5280 CRLReason code).
   * The other instances adopt the replacements at their next look at the
   * renewal information. Resolves with the primary replacement.
   */
  async revoke (name: string, reason?: number): Promise<Certificate> {
    const site = await this.#allowed(name)
    const { issuer, log } = this.#opts
    const revoke = issuer.revoke?.bind(issuer)
    if (revoke === undefined) throw new FST_AUTOCERT_REVOKE_FAILED(site.name, 'this certificate source cannot revoke')
    const [primary] = await Promise.all(site.slots.map(async (slot) => {
      const old = this.#live(slot.cert) && isWhole(slot.cert) ? slot.cert : await this.#load(slot)
      if (old === undefined) throw new FST_AUTOCERT_REVOKE_FAILED(site.name, `there is no ${slot.type} certificate to revoke`)
      // Replaced first: the old one is served until its replacement is, never nothing.
      const replacement = await this.#renewed(slot)
      // Should no new certificate come of it, the one served is left unrevoked.
      if (replacement.serial === old.serial) throw new FST_AUTOCERT_REVOKE_FAILED(site.name, 'no replacement could be obtained: the certificate is left as it is')
      try {
        await revoke(old, reason, this.#closing.signal)
      } catch (err) {
        throw Object.assign(new FST_AUTOCERT_REVOKE_FAILED(site.name, errorMessage(err)), { cause: err })
      }
      log.warn({ ...certFields(slot, old), reason, replacement: replacement.serial }, 'certificate revoked')
      this.events.tell('revoked', { ...certFields(slot, old), replacement: replacement.serial, reason })
      return replacement
    }))
    return primary
  }

  /** The live certificates of the listed `name` kept whole in memory, the primary key type's first: none before they are loaded. */
  current (name: string): Certificate[] {
    return (this.#sites.get(name)?.slots ?? []).flatMap((slot) => this.#live(slot.cert) && isWhole(slot.cert) ? [slot.cert] : [])
  }

  /** How many certificates have a timer armed (their renewal, retry, write or renewal-information check). */
  get timersArmed (): number {
    return this.#timers.size
  }

  status (): DomainStatus[] {
    const now = this.#clock.now()
    return [...this.#sites.values()].flatMap((site) => site.slots).map((slot) => ({
      domain: slot.name,
      keyType: slot.type,
      serial: slot.cert?.serial,
      notAfter: date(slot.cert?.notAfter),
      renewAt: date(slot.nextAt ?? slot.renewAt),
      renewalWindow: this.#windowOf(slot),
      renewalInfoCheck: date(slot.ariCheckAt),
      lastError: slot.lastError && { message: slot.lastError.message, at: new Date(slot.lastError.at) },
      retryAfter: slot.hold !== undefined && slot.hold.until > now ? new Date(slot.hold.until) : undefined,
      lockHolder: slot.lockHolder,
      waitingFor: slot.waiting && { ...slot.waiting, since: new Date(slot.waiting.since) },
      onDemand: slot.site.onDemand
    }))
  }

  /**
   * Loads every listed domain from the store into memory, `concurrency` at a
   * time. Resolves when all are loaded or after `prewarmTimeout`, whichever is
   * first: the rest go on loading in the background, and a handshake for a name
   * not loaded yet reads it itself (joining a read in flight). Never orders;
   * never throws.
   *
   * With more listed certificates than contextCacheSize, and a store that
   * lists metadata (entries()), their state comes from that listing, and only
   * as many as the cache holds are read whole; those whose metadata is missing
   * (written by Go autocert, or before this) or unusable are read as ever.
   */
  async prewarm (): Promise<void> {
    const started = this.#clock.now()
    let done = 0
    const prewarming = this.#prewarming ??= (async () => {
      const listed = [...this.#slots()].filter((slot) => slot.site.onDemand === undefined)
      const fromListing = listed.length > this.#opts.contextCacheSize && this.#opts.store.entries !== undefined
      if (fromListing) done += await this.#learnFromListing(listed)
      // Read whole: the certificates the listing did not tell of, then as many as the cache holds.
      const unknown = new Set(listed.filter((slot) => slot.cert === undefined))
      // An address's certificate takes no place in the cache (never cooled).
      const room = Math.max(0, this.#opts.contextCacheSize - [...unknown].filter((slot) => slot.site.pinned !== true).length)
      const whole = fromListing ? [...unknown, ...listed.filter((slot) => !unknown.has(slot)).slice(0, room)] : listed
      await this.#each(whole, async (slot) => {
        // A handshake may have loaded it first: one read per name.
        const counted = slot.cert === undefined
        if (slot.cert === undefined || !isWhole(slot.cert)) await this.#load(slot).catch(() => undefined)
        if (counted) done++
      })
    })()
    const bound = timeoutSignal(this.#clock, this.#opts.prewarmTimeout)
    const timedOut = await untilAborted(prewarming, bound.signal).then(() => false, () => true)
    bound.dispose()
    if (timedOut) {
      const listed = this.#opts.domains.length * this.#opts.keyType.length
      this.#opts.log.info({ done, listed, ms: this.#clock.now() - started }, 'prewarming goes on in the background (options.prewarmTimeout)')
    }
  }

  /**
   * Orders, in the background, every listed domain that has no live certificate.
   * Call it once the server listens: the CA's validation request needs it.
   */
  start (): void {
    this.#started = true
    for (const slot of this.#slots()) {
      if (slot.nextAt !== undefined && !this.#timers.has(slot)) this.#schedule(slot, slot.nextAt)
    }
    void (async () => {
      await this.#prewarming
      await this.#eachListedSlot(async (slot) => {
        if (!this.#live(slot.cert)) await this.#background(slot, this.#certificate(slot, 'stored'))
      })
    })()
  }

  /**
   * Stops timers and ends orders in flight: they stop waiting for the CA and
   * release their locks. Store reads still in flight finish on their own.
   */
  async close (): Promise<void> {
    this.#closing.abort(new FST_AUTOCERT_CLOSED())
    this.#timers.clear()
    const ordering: Array<Promise<unknown>> = []
    for (const slot of this.#slots()) {
      if (slot.ordering !== undefined) ordering.push(slot.ordering.done)
    }
    await Promise.allSettled(ordering)
  }

  /*
   * Every field is set here, most to undefined: objects of one shape with
   * their fields in the object, not in a property array added as fields come.
   * A big fleet holds one site and a slot per key type for each name.
   */
  #site (name: string, onDemand?: true): Site {
    const site: Site = { name, slots: [], onDemand, pinned: isAddress(name) || undefined, lockQueue: undefined, contexts: undefined, expires: undefined, asked: undefined }
    for (const type of this.#opts.keyType) {
      site.slots.push({
        site,
        name,
        type,
        key: storeKeys.certificate(name, type),
        lockHolder: undefined,
        cert: undefined,
        context: undefined,
        renewAt: undefined,
        lifetimeRenewAt: undefined,
        renewNotBefore: undefined,
        ari: undefined,
        ariCheckAt: undefined,
        checking: undefined,
        hold: undefined,
        waiting: undefined,
        lastError: undefined,
        unsaved: undefined,
        reported: undefined,
        rejected: undefined,
        queuedAt: undefined,
        queuedIndex: undefined,
        nextAt: undefined,
        checkedAt: undefined,
        readError: undefined,
        loading: undefined,
        ordering: undefined
      })
    }
    return site
  }

  * #slots (): Iterable<Slot> {
    for (const site of this.#sites.values()) yield * site.slots
  }

  /** The listed wildcard that serves `name` (normalised), if any: `*.example.com` for `a.example.com`. */
  #covering (name: string): Site | undefined {
    const wildcard = wildcardOf(name)
    return wildcard === undefined ? undefined : this.#sites.get(wildcard)
  }

  /**
   * The site `servername` names: listed, served by a listed wildcard (a listed
   * name of its own wins), or allowed on demand. Anything else is refused.
   */
  async #allowed (servername: string): Promise<Site> {
    const name = this.#sites.has(servername) ? servername : normalizeName(servername)
    const known = name === undefined ? undefined : this.#sites.get(name) ?? this.#covering(name)
    if (known !== undefined) {
      if (known.onDemand) {
        this.#onDemand?.touch(known.name, known)
        known.asked = true
      }
      return known
    }
    // A name that fails normalisation never reaches allow().
    if (name === undefined || this.#onDemand === undefined || !(await this.#onDemand.decide(name))) {
      this.#refusals.refused(servername)
      throw new FST_AUTOCERT_NAME_NOT_ALLOWED(printable(servername))
    }
    this.#closing.signal.throwIfAborted()
    // Another handshake for the name may have added it while allow() ran.
    let site = this.#sites.get(name)
    if (site === undefined) {
      site = this.#site(name, true)
      this.#sites.set(name, site)
      const busy = (s: Site): boolean => s.slots.some((slot) => slot.ordering !== undefined || slot.loading !== undefined)
      for (const dropped of this.#onDemand.add(name, site, busy)) this.#drop(dropped)
    }
    return site
  }

  /** Forgets an on-demand name: its timers stop; the store still has its certificates. */
  #drop (site: Site): void {
    for (const slot of site.slots) this.#timers.delete(slot)
    this.#onDemand?.delete(site.name)
    this.#sites.delete(site.name)
    this.#warm.delete(site)
  }

  /**
   * Marks `site` as just used (served, or a certificate of it read whole);
   * past contextCacheSize sites, the least recently used one is cooled.
   */
  #touch (site: Site): void {
    if (site.pinned) return
    this.#warm.delete(site)
    this.#warm.add(site)
    if (this.#warm.size > this.#opts.contextCacheSize) this.#cool(this.#warm.values().next().value as Site)
  }

  /**
   * Frees `site`'s TLS contexts and the keys and chains of its certificates,
   * keeping what is known of them: its next handshake reads them from the
   * store again (one read per name) and builds the contexts. Work in flight
   * keeps the certificate it holds; a read or an order of the name ends with
   * it whole again. A certificate not stored yet stays whole (the store has no
   * copy): #persist touches the site once it is stored.
   */
  #cool (site: Site): void {
    this.#warm.delete(site)
    site.contexts = undefined
    for (const slot of site.slots) {
      slot.context = undefined
      const { cert } = slot
      if (cert !== undefined && isWhole(cert) && slot.unsaved !== true) slot.cert = summaryOf(cert)
    }
  }

  /**
   * The contexts serving `servername`, primary key type first: every
   * certificate of the name that can be had (a key type that fails does not
   * stop the others from being served).
   */
  async #handshakeContexts (servername: string): Promise<SecureContext[]> {
    const site = await this.#allowed(servername)
    const results = await Promise.allSettled(site.slots.map(async (slot) => await this.#secureContext(slot)))
    const contexts = results.flatMap((r) => r.status === 'fulfilled' ? [r.value] : [])
    if (contexts.length === 0) throw (results[0] as PromiseRejectedResult).reason
    // Kept for the hot path only when complete: while a key type fails, each handshake asks for it
    // again (cheap: a slot held back refuses from memory, a failed read is repeated for a second).
    if (contexts.length === site.slots.length) {
      site.contexts = contexts
      site.expires = Math.min(...site.slots.map((slot) => (slot.cert as CertificateSummary).notAfter))
      this.#touch(site)
    }
    return contexts
  }

  /**
   * The TLS context of `slot`'s certificate. A stored bundle whose key does not
   * match is found here, when its context is first built: it is never served,
   * and a fresh order replaces it.
   */
  async #secureContext (slot: Slot): Promise<SecureContext> {
    const cert = await this.#certificate(slot, 'in-memory')
    if (slot.context !== undefined && slot.cert === cert) return slot.context
    try {
      slot.context = toSecureContext(cert)
    } catch (err) {
      this.#opts.log.warn({ domain: slot.name, blob: slot.key, error: errorFields(err) }, 'ignoring unusable stored certificate')
      slot.reported = true
      slot.rejected = cert.serial
      slot.cert = undefined
      slot.context = toSecureContext(await this.#order(slot, { until: 'in-memory' }))
    }
    this.#touch(slot.site)
    return slot.context
  }

  /** A live certificate, whole: memory, then store, then a new order. */
  async #certificate (slot: Slot, until: Until): Promise<Certificate> {
    if (this.#live(slot.cert)) {
      if (isWhole(slot.cert)) return slot.cert
      // Cooled: its key and chain are read again, joining a read in flight.
      const cert = await this.#load(slot)
      if (cert !== undefined && this.#live(cert)) return cert
    }
    // Held back (failures, or the order budget): refuse from memory. The store
    // is still looked at now and then, since another instance may have succeeded.
    const refusal = this.#refusal(slot)
    if (refusal !== undefined) {
      const now = this.#clock.now()
      if (now - (slot.checkedAt ?? -Infinity) < HOLD_RECHECK) throw refusal
      slot.checkedAt = now
      const stored = await this.#load(slot)
      if (stored !== undefined) return stored
      throw this.#refusal(slot) ?? refusal
    }
    const cert = await this.#load(slot)
    if (cert !== undefined && this.#live(cert)) return cert
    // The store was just read: with no order to join, a first certificate is refused here while the budget is known
    // spent, before the name's lock (a flood of new names would cost four store calls more each).
    if (slot.cert === undefined && slot.ordering === undefined) await this.#refuseWhileSpent(slot)
    return this.#order(slot, { until })
  }

  /** Reads the store (one read in flight per name) and adopts a live certificate found there; resolves with the slot's certificate, whole, if any. */
  #load (slot: Slot): Promise<Certificate | undefined> {
    slot.loading ??= this.#read(slot).finally(() => { slot.loading = undefined })
    return slot.loading
  }

  /**
   * `current`: the store's certificate is known to be the fleet's current one
   * (read under the name's lock, or named by the fleet's renewal-information
   * record), and replaces ours whenever it differs, unless ours is not stored
   * yet. Otherwise a stored certificate replaces ours only when newer: issued
   * later, which a second's resolution cannot tell for two issued within it.
   */
  async #read (slot: Slot, current = false): Promise<Certificate | undefined> {
    const { store, log } = this.#opts
    // A read that just failed is not repeated for every handshake that follows.
    if (slot.readError !== undefined && this.#clock.now() - slot.readError.at < READ_ERROR_TTL) throw slot.readError.err
    let cert: Certificate
    try {
      const data = await readBounded(store, slot.key, storeLimits.certificate)
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
      slot.readError = { err, at: this.#clock.now() }
      log.error({ domain: slot.name, error: errorFields(err) }, 'certificate store read failed')
      throw err
    }
    slot.readError = undefined
    if (cert.serial === slot.rejected) return undefined
    if (!this.#live(cert)) {
      if (!slot.reported) log.info({ ...certFields(slot, cert), blob: slot.key }, 'stored certificate has expired')
      slot.reported = true
      return undefined
    }
    const known = slot.cert
    if (known !== undefined && !isWhole(known) && sameFields(known, cert)) {
      // A cooled certificate, read whole again: nothing else about it changes.
      slot.cert = cert
      this.#touch(slot.site)
    } else if (known === undefined || !isWhole(known) || (current && slot.unsaved !== true ? cert.serial !== known.serial : newer(cert, known))) {
      this.#loaded(slot, cert)
    }
    return slot.cert as Certificate
  }

  /** A certificate found in the store (whole, or as its metadata tells) enters memory. */
  #loaded (slot: Slot, cert: CertificateSummary): void {
    this.#adopt(slot, cert)
    this.#opts.log.info(certFields(slot, cert), 'certificate loaded')
    this.events.tell('loaded', certFields(slot, cert))
  }

  /**
   * One order in flight per name and key type, in this process; the store lock
   * makes it one per fleet. `force` orders even while the current certificate
   * is good (renew()) and past the backoff. Resolves once the certificate is
   * stored, or, `until: 'in-memory'`, as soon as it is served: a handshake need
   * not wait for the writes.
   */
  #order (slot: Slot, { force = false, until }: { force?: boolean, until: Until }): Promise<Certificate> {
    if (slot.ordering === undefined) {
      let adopted!: (cert: Certificate) => void
      const adoption = new Promise<Certificate>((resolve) => { adopted = resolve })
      const done = this.#orderLocked(slot, force, adopted).finally(() => { slot.ordering = undefined })
      slot.ordering = { done, inMemory: Promise.race([adoption, done]) }
      // Whoever waits gets the rejection; nobody may be waiting for the other one.
      slot.ordering.inMemory.catch(() => {})
    }
    return until === 'in-memory' ? slot.ordering.inMemory : slot.ordering.done
  }

  async #orderLocked (slot: Slot, force: boolean, adopted: (cert: Certificate) => void): Promise<Certificate> {
    const { issuer, log } = this.#opts
    const { name } = slot
    const closing = this.#closing.signal
    closing.throwIfAborted()
    const refusal = force ? undefined : this.#refusal(slot)
    if (refusal !== undefined) throw refusal
    const had = slot.cert
    // Waits for locks are this order's to report while it runs (the account's lookup may outlast it).
    let running = true
    const reporter = (kind: LockKind): LockWaitListener => {
      const report = this.#onLockWait(slot, kind)
      return (holder) => { if (running) report(holder) }
    }
    // The account lookup (CA round trips) overlaps the wait for the name's lock.
    const prepared = issuer.prepare?.(reporter('account')).then(() => undefined, (err: unknown) => err)
    const lock = await this.#nameLock(slot)
    let issued: Certificate | undefined
    let claim: BudgetClaim | undefined
    const onBudgetWait = reporter('order-log')
    try {
      // The account is ready (or failed) before the budget's lock is asked for: that
      // lock is the fleet's, never held while the CA is slow. The CA's answers also
      // tell whether this clock may write the fleet's order log.
      const unprepared = await untilAborted(prepared ?? Promise.resolve(undefined), closing)
      this.#waited(slot, 'account')
      if (errorCode(unprepared) === 'FST_AUTOCERT_LOCK_TIMEOUT') throw unprepared
      const skew = this.#clockSkew()
      // A first certificate has a handshake waiting: the budget's claim is opened while
      // the name's records are read, a few round trips less before the CA is asked
      // (and a few store calls more when the records show no order is needed).
      // Renewals wait in the background and open it only to order. Either way the
      // name's lock is taken first, so the two locks cannot deadlock.
      if (had === undefined && unprepared === undefined && skew === undefined) claim = this.#budget.open(onBudgetWait)
      // Another instance may have obtained it while we waited for the lock, or failed.
      const [stored, failure] = await Promise.all([
        this.#read(slot, true),
        force ? undefined : this.#failures.read(slot.key)
      ])
      if (stored !== undefined && (force ? stored.serial !== had?.serial : !this.#due(slot))) {
        // A retry timer may have replaced the renewal timer: arm it again.
        if (!this.#timers.has(slot)) this.#schedule(slot, slot.renewAt as number)
        return stored
      }
      if (!force) this.#honourFailures(slot, failure)
      // No account, no order: a failure of the order's (the fleet's backoff), with no budget spent on it.
      if (unprepared !== undefined) throw await this.#orderFailed(slot, unprepared, lock.signal)
      if (skew !== undefined) throw this.#clockRefusal(slot, skew)
      // The certificate this order replaces (whole, as the CA is told of it, unless the store lost it), and the CA's window it answers, if it has started.
      const replaced = slot.cert !== undefined && isWhole(slot.cert) ? slot.cert : undefined
      let answered = this.#answeredWindow(slot)
      // A renewal the CA asked for is exempt from the budget (as Let's Encrypt exempts it from its limits), once per window.
      let exempt = answered !== undefined && this.#exempt(slot)
      if (exempt) {
        // On the CA's word, not the store's: a record planted in the store must not order exempt renewals for every
        // name. The window is asked for once more; without the CA's answer, the order counts against the budget.
        const confirmed = replaced !== undefined && await this.#askRenewalInfo(slot, replaced, slot.ari, undefined, lock.signal).catch(() => false)
        answered = confirmed ? this.#answeredWindow(slot) : undefined
        exempt = answered !== undefined && this.#exempt(slot)
        if (confirmed && !force && !this.#due(slot)) return replaced
      }
      // The name's last exempt renewal goes on to the next certificate's record, so that exempt renewals stay EXEMPT_SPACING apart.
      const exemptAt = exempt ? this.#clock.now() : slot.ari?.origin?.exemptAt
      if (!exempt) {
        claim ??= this.#budget.open(onBudgetWait)
        const budget = await claim.spend().finally(() => { this.#waited(slot, 'order-log') })
        if (!budget.spent) this.#budgetSpent(slot, budget.retryAt)
      }

      log.info({ domain: name, ...(replaced === undefined ? {} : { replaces: replaced.serial }), ...(answered === undefined ? {} : { renewalWindow: { start: new Date(answered.start), end: new Date(answered.end) }, exempt }) }, 'ordering certificate')
      try {
        const placed = await this.#place(slot, replaced, lock.signal)
        // The CA says another order replaced it: another instance's, stored meanwhile.
        if ('serial' in placed) return placed
        const { key, chain } = placed
        const bundle = encodeBundle({ key, chain })
        const size = Buffer.byteLength(bundle)
        // What could not be read back (storeLimits) is not stored: a chain that long is the CA's failure.
        if (size > storeLimits.certificate) throw new Error(`the CA's chain makes a bundle of ${size} bytes, over the ${storeLimits.certificate} a stored certificate may have`)
        issued = decodeBundle(name, slot.key, bundle)
      } catch (err) {
        if (closing.aborted) throw closing.reason
        throw await this.#orderFailed(slot, err, lock.signal)
      }
      // Served from now on, whatever happens to the write. Its renewal information is asked for once it is stored.
      this.#adopt(slot, issued, false)
      if (this.#due(slot)) this.#dueAtIssue(slot, issued)
      adopted(issued)
      log.info(certFields(slot, issued), had === undefined ? 'certificate obtained' : 'certificate renewed')
      if (had === undefined) this.events.tell('obtained', certFields(slot, issued))
      else this.events.tell('renewed', { ...certFields(slot, issued), previousSerial: had.serial })
      if (lock.signal.aborted) throw new FST_AUTOCERT_LOCK_LOST(name)
      await this.#opts.store.put(slot.key, encodeBundle(issued), { metadata: certificateMetadata(issued) })
      slot.unsaved = false
      await this.#failures.clear(slot.key)
      await this.#recordRenewalInfo(slot, issued, answered && { ...answered, ...(exemptAt === undefined ? {} : { exemptAt }) }, lock.signal)
      return issued
    } catch (err) {
      if (issued === undefined) throw err
      // Issued but not stored (the store went away, or the lease lapsed): keep
      // it, serve it, and write it once the store answers — a second order would
      // cost the CA's rate limits. #persist checks no newer one arrived meanwhile.
      slot.unsaved = true
      log.warn({ domain: name, error: errorFields(err) }, 'certificate not stored yet; will retry')
      this.#schedule(slot, this.#clock.now() + retryDelay(1, this.#opts.retryDelays))
      return issued
    } finally {
      running = false
      await Promise.all([lock.release(), claim?.release()])
      slot.waiting = undefined
    }
  }

  /** Writes a certificate issued while the store was unreachable, unless the store now holds a newer one. */
  async #persist (slot: Slot): Promise<void> {
    const cert = slot.cert as Certificate
    const lock = await this.#nameLock(slot)
    try {
      // #read adopts the stored certificate if it is newer than ours.
      await this.#read(slot)
      const ours = slot.cert === cert
      if (ours) {
        lock.signal.throwIfAborted()
        await this.#opts.store.put(slot.key, encodeBundle(cert), { metadata: certificateMetadata(cert) })
        this.#schedule(slot, slot.renewAt as number)
      }
      slot.unsaved = false
      this.#touch(slot.site)
      this.#opts.log.info(certFields(slot, slot.cert as CertificateSummary), ours ? 'certificate stored' : 'adopted a newer stored certificate')
    } finally {
      await lock.release()
    }
  }

  /**
   * Why `slot` may not order now, as the error its callers get: the fleet's
   * failure backoff (FST_AUTOCERT_BACKOFF) or its spent order budget
   * (FST_AUTOCERT_RATE_LIMITED, with the next free slot). The one place that
   * decides a refusal; undefined when an order may go ahead.
   */
  #refusal (slot: Slot): Error | undefined {
    const { hold } = slot
    return hold === undefined || hold.until <= this.#clock.now() ? undefined : this.#refusalOf(slot, hold)
  }

  #refusalOf (slot: Slot, hold: NonNullable<Slot['hold']>): Error {
    const at = new Date(hold.until).toISOString()
    switch (hold.reason) {
      case 'budget': return new FST_AUTOCERT_RATE_LIMITED(slot.name, this.#opts.maxOrdersPerHour, at)
      case 'clock': return new FST_AUTOCERT_CLOCK_SKEW(Math.round((hold.offset ?? 0) / 1000), `looked at again at ${at}`)
      default: return new FST_AUTOCERT_BACKOFF(slot.name, at)
    }
  }

  /** How far this clock is off the CA's (ms), when that is beyond CLOCK_TOLERANCE; undefined when it is not (or not known). */
  #clockSkew (): number | undefined {
    const offset = this.#opts.issuer.clockOffset?.()
    return offset === undefined || Math.abs(offset) <= CLOCK_TOLERANCE ? undefined : offset
  }

  /**
   * An instance whose clock is far off the CA's must not order: its entry in
   * the fleet's order log would be out of place (a clock ahead postpones
   * everyone's orders, one behind counts for nothing), and the certificate it
   * got would look due or expired at once. Says so loudly, holds the slot and
   * returns the refusal; the clock is looked at again after CLOCK_RECHECK.
   */
  #clockRefusal (slot: Slot, offset: number): Error {
    const now = this.#clock.now()
    if (now - this.#clockLoggedAt >= CLOCK_RECHECK) {
      this.#clockLoggedAt = now
      this.#opts.log.error({ domain: slot.name, offsetSeconds: Math.round(offset / 1000), toleranceSeconds: CLOCK_TOLERANCE / 1000 },
        'this machine\'s clock is far off the CA\'s: no orders and no writes to the fleet\'s order log until it is fixed (NTP)')
    }
    const refusal = this.#hold(slot, now + CLOCK_RECHECK, 'clock', { offset })
    slot.lastError = { message: refusal.message, at: now }
    return refusal
  }

  /**
   * A certificate that looks due the moment it arrives means this clock (or
   * the CA's) is wrong, or the CA issued an unusable lifetime: ordering again
   * would not help and would loop. Logged, and not renewed for an hour.
   */
  #dueAtIssue (slot: Slot, cert: Certificate): void {
    const retryAt = this.#clock.now() + DUE_AT_ISSUE_DELAY
    this.#opts.log.error({ ...certFields(slot, cert), notBefore: new Date(cert.notBefore), now: new Date(this.#clock.now()), retryAt: new Date(retryAt) },
      'the certificate just issued already looks due for renewal: check this machine\'s clock; not ordering again before retryAt')
    slot.renewNotBefore = retryAt
    slot.renewAt = retryAt
    this.#schedule(slot, retryAt)
  }

  /** Honours a failure record another instance (or an earlier run) left in the store. */
  #honourFailures (slot: Slot, record: FailureRecord | undefined): void {
    if (record === undefined || record.retryAt <= this.#clock.now()) return
    slot.lastError = { message: record.error, at: record.at }
    throw this.#hold(slot, record.retryAt, 'failures')
  }

  /** The fleet's order budget is spent: not this name's failure (no failure record), it waits for the next free slot. */
  #budgetSpent (slot: Slot, retryAt: number): never {
    const hold = { until: retryAt, reason: 'budget' } as const
    slot.lastError = { message: this.#refusalOf(slot, hold).message, at: this.#clock.now() }
    this.#opts.log.warn({ domain: slot.name, retryAt: new Date(retryAt), maxOrdersPerHour: this.#opts.maxOrdersPerHour }, 'order budget used up: order postponed')
    // On-demand names come in floods: each retries at its own time after the slot (listed ones, a known few, at the slot).
    throw this.#hold(slot, retryAt, 'budget', { retryAt: slot.site.onDemand ? budgetRetryTime(retryAt) : retryAt })
  }

  /**
   * While this instance knows the fleet's budget is spent (and its clock may
   * write the log), no first certificate can be ordered before the slot:
   * refused for the budget, unless the name's failure record holds it longer.
   */
  async #refuseWhileSpent (slot: Slot): Promise<void> {
    const spentUntil = this.#clockSkew() === undefined ? this.#budget.knownSpentUntil() : undefined
    if (spentUntil === undefined) return
    this.#honourFailures(slot, await this.#failures.read(slot.key))
    this.#budgetSpent(slot, spentUntil)
  }

  /** Records a failed order for the fleet (its backoff) and returns the error its callers get. */
  async #orderFailed (slot: Slot, err: unknown, lockSignal: AbortSignal): Promise<Error> {
    const { failures, retryAt } = await this.#failures.record(slot.key, err, lockSignal)
    this.#fail(slot, err, retryAt)
    this.#hold(slot, retryAt, 'failures')
    this.#opts.log.error({ domain: slot.name, failures, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate order failed')
    // A mistake in the options is reported as itself, with its own code: nothing the CA did.
    if (errorCode(err) === 'FST_AUTOCERT_INVALID_PROFILE') return err as Error
    return Object.assign(new FST_AUTOCERT_ORDER_FAILED(slot.name, errorMessage(err)), { cause: err })
  }

  /** `cert` becomes the slot's: served (when whole) and scheduled for renewal. */
  #adopt (slot: Slot, cert: CertificateSummary, checkRenewalInfo = true): void {
    slot.cert = cert
    slot.context = undefined
    slot.site.contexts = undefined
    slot.reported = false
    slot.lastError = undefined
    slot.hold = undefined
    slot.ari = undefined
    slot.renewNotBefore = undefined
    slot.lifetimeRenewAt = renewalTime(cert.notBefore, cert.notAfter, this.#opts.renewBefore)
    slot.renewAt = this.#renewalTime(slot)
    // A certificate new to this instance: its renewal information is looked at (the store's record first) at once.
    slot.ariCheckAt = checkRenewalInfo && this.#opts.issuer.renewalInfo !== undefined ? this.#clock.now() : undefined
    this.#schedule(slot, slot.renewAt)
    if (!isWhole(cert)) return
    this.#opts.adopted?.(slot.name)
    this.#touch(slot.site)
  }

  /**
   * When `slot`'s certificate is renewed: at the fleet's time in the CA's
   * window when one is known for it, else by its lifetime (renewalTime);
   * options.renewBefore, when set, may make it sooner, and a certificate that
   * looked due when it was issued waits (renewNotBefore).
   */
  #renewalTime (slot: Slot): number {
    const cert = slot.cert as CertificateSummary
    const lifetime = slot.lifetimeRenewAt as number
    const ari = this.#usableRecord(slot)
    // A window that reaches the certificate's expiry is done with by the time a tenth of the lifetime remains.
    const inWindow = ari?.renewAt === undefined ? undefined : Math.min(ari.renewAt, cert.notAfter - (cert.notAfter - cert.notBefore) / 10)
    const at = inWindow === undefined ? lifetime : this.#opts.renewBefore === undefined ? inWindow : Math.min(inWindow, lifetime)
    return Math.max(at, slot.renewNotBefore ?? -Infinity)
  }

  /**
   * The renewal information of `slot`'s certificate when it may be acted on:
   * about this certificate, with a window that is not the one whose renewal
   * produced it (the CA's stale answer: acting on it would replace the
   * certificate twice for one window).
   */
  #usableRecord (slot: Slot): RenewalInfoRecord | undefined {
    const ari = this.#windowRecord(slot)
    return ari === undefined || sameWindow(ari.window, ari.origin) ? undefined : ari
  }

  /** The fleet's renewal information when it is about `slot`'s certificate and has a window. */
  #windowRecord (slot: Slot): (RenewalInfoRecord & { window: RenewalWindow }) | undefined {
    const { cert, ari } = slot
    return cert !== undefined && ari?.serial === cert.serial && ari.window !== undefined ? ari as RenewalInfoRecord & { window: RenewalWindow } : undefined
  }

  /** The window this order answers: the CA's for the certificate it replaces, once it has started. */
  #answeredWindow (slot: Slot): { start: number, end: number } | undefined {
    const window = this.#usableRecord(slot)?.window
    return window === undefined || window.start > this.#clock.now() ? undefined : { start: window.start, end: window.end }
  }

  /** A renewal in its window is exempt from the budget, unless the certificate itself came from an exempt renewal less than EXEMPT_SPACING ago. */
  #exempt (slot: Slot): boolean {
    const exemptAt = slot.ari?.origin?.exemptAt
    return exemptAt === undefined || this.#clock.now() - exemptAt >= EXEMPT_SPACING
  }

  /** The window status() shows: the CA's, for the certificate served. */
  #windowOf (slot: Slot): DomainStatus['renewalWindow'] {
    const window = this.#windowRecord(slot)?.window
    if (window === undefined) return undefined
    const { start, end, explanationURL } = window
    return { start: new Date(start), end: new Date(end), ...(explanationURL === undefined ? {} : { explanationURL }) }
  }

  /**
   * Places the order of #orderLocked: naming the certificate it replaces, and,
   * if the CA refuses that, once more without (RFC 9773) — unless the CA says
   * it was replaced already and the store now holds the replacement, which is
   * then adopted and returned instead of ordering.
   */
  async #place (slot: Slot, replaces: Certificate | undefined, lockSignal: AbortSignal): Promise<{ key: string, chain: string } | Certificate> {
    const closing = this.#closing.signal
    // acme-client cannot be cancelled: on close, stop waiting for it and let it finish unobserved.
    const issue = (options: IssueOptions): Promise<{ key: string, chain: string }> =>
      untilAborted(this.#opts.issuer.issue(slot.name, slot.type, AbortSignal.any([closing, lockSignal]), options), closing)
    try {
      return await issue({ replaces })
    } catch (err) {
      if (!(err instanceof ReplacesRefusedError)) throw err
      if (err.alreadyReplaced) {
        const stored = await this.#read(slot, true)
        if (stored !== undefined && stored.serial !== replaces?.serial && !this.#due(slot)) return stored
      }
      this.#opts.log.warn({ domain: slot.name, serial: replaces?.serial, error: errorFields(err) },
        err.alreadyReplaced ? 'the CA says the certificate was replaced already, and the store has no replacement: ordering without replaces' : 'the CA refused the order\'s replaces: ordering without it')
      return await issue({})
    }
  }

  /**
   * The lock of `slot`'s name, recorded as this instance's: one per name,
   * whatever the key type, because a name has one pending TLS-ALPN-01
   * challenge at a time. The key types of a name take turns in this process
   * first, so they do not poll the store for it. status() shows the holder
   * while this instance holds or waits for it.
   */
  async #nameLock (slot: Slot): Promise<Lock> {
    const report = this.#onLockWait(slot, 'name')
    const onWait: LockWaitListener = (holder) => {
      slot.lockHolder = holder ?? 'unknown'
      report(holder)
    }
    const lock = await this.#locks.take(storeKeys.nameLock(slot.name), this.#closing.signal, { queue: slot.site.lockQueue ??= new LockQueue(), onWait })
      .finally(() => {
        slot.lockHolder = undefined
        this.#waited(slot, 'name')
      })
    slot.lockHolder = this.#opts.instanceId
    return {
      signal: lock.signal,
      release: async () => {
        slot.lockHolder = undefined
        await lock.release()
      }
    }
  }

  /** Reports a wait of `slot`'s order for `lock`, held by `holder`: a `lock-wait` event, and status() while it lasts. */
  #onLockWait (slot: Slot, lock: LockKind): LockWaitListener {
    return (holder) => {
      slot.waiting = { lock, holder: holder ?? 'unknown', since: slot.waiting?.lock === lock ? slot.waiting.since : this.#clock.now() }
      this.events.tell('lock-wait', { domain: slot.name, holder, lock })
    }
  }

  /** The wait of `slot`'s order for `lock` is over (it may be waiting for another one still). */
  #waited (slot: Slot, lock: LockKind): void {
    if (slot.waiting?.lock === lock) slot.waiting = undefined
  }

  #fail (slot: Slot, err: unknown, retryAt?: number): void {
    slot.lastError = { message: errorMessage(err), at: this.#clock.now() }
    this.events.tell('failed', { domain: slot.name, error: { message: errorMessage(err), code: errorCode(err) }, retryAt: date(retryAt) })
  }

  /**
   * No order before `until` (the shared failure backoff, the order budget, a clock far off); a
   * retry is scheduled for `retryAt` (`until` unless given). Returns the refusal
   * callers get meanwhile, made from this hold (not from the clock, which
   * listeners of `backoff` may outlast).
   */
  #hold (slot: Slot, until: number, reason: BackoffReason, { retryAt = until, offset }: { retryAt?: number, offset?: number } = {}): Error {
    const hold = slot.hold = { until, reason, offset }
    if (slot.site.onDemand) slot.site.asked = false
    this.#schedule(slot, retryAt)
    this.events.tell('backoff', { domain: slot.name, retryAt: new Date(retryAt), reason })
    return this.#refusalOf(slot, hold)
  }

  /**
   * One timer per certificate: at `at`, renew (or retry, or write what is
   * unsaved) through the same path as a handshake; before that, at
   * `ariCheckAt`, look at the renewal information, which may move `at`.
   */
  #schedule (slot: Slot, at: number): void {
    this.#timers.delete(slot)
    slot.nextAt = at
    // Before start() (the server listens) timers are only noted: a CA validation would find no listener.
    if (this.#closing.signal.aborted || !this.#started) return
    // An on-demand name dropped from memory while its certificate was being read: no timer for it.
    if (this.#sites.get(slot.name) !== slot.site) return
    this.#timers.set(slot, Math.min(at, slot.ariCheckAt ?? Infinity))
  }

  /** What a slot's timer does: the renewal-information check if it is due, then the renewal (or retry, or write) if that is. */
  async #tick (slot: Slot): Promise<void> {
    if (slot.ariCheckAt !== undefined && slot.ariCheckAt <= this.#clock.now()) {
      slot.checking ??= this.#backgroundLimit.run(() => this.#checkRenewalInfo(slot)).finally(() => { slot.checking = undefined })
      await slot.checking
    }
    const at = slot.nextAt
    if (at !== undefined && at > this.#clock.now()) {
      this.#schedule(slot, at)
      return
    }
    slot.nextAt = undefined
    await this.#backgroundLimit.run(() => slot.unsaved === true ? this.#persist(slot) : this.#renewal(slot))
  }

  /**
   * Looks at the renewal information of `slot`'s certificate, once for the
   * fleet per interval: the store's record when another instance has asked
   * the CA (or replaced the certificate: that one is adopted), else, under the
   * name's lock, the CA, whose answer goes into the store for the others.
   * Never throws: a failure is logged and tried again after
   * RENEWAL_INFO_INTERVALS.afterFailure, the lifetime rule applying meanwhile.
   */
  async #checkRenewalInfo (slot: Slot): Promise<void> {
    slot.ariCheckAt = undefined
    const { issuer } = this.#opts
    if (issuer.renewalInfo === undefined || !this.#live(slot.cert) || slot.unsaved === true) return
    try {
      // A CA without renewal windows costs the store nothing: its directory says so, no record or lock is needed.
      const offers = await issuer.offersRenewalInfo?.(slot.cert as CertificateSummary).then((yes) => yes, (err: unknown) => ({ err }))
      if (offers === false) {
        slot.ariCheckAt = this.#clock.now() + RENEWAL_INFO_INTERVALS.max
        return
      }
      const fresh = this.#fresh(slot, await this.#currentRecord(slot))
      if (fresh !== undefined) return this.#useRenewalInfo(slot, fresh)
      // A directory that cannot be read now: another instance's answer is taken (above), but the CA is not asked, so
      // neither the name's lock nor its certificate is needed. A fleet starting while its CA is down costs one read per name.
      if (typeof offers === 'object') throw offers.err
      const lock = await this.#nameLock(slot)
      try {
        const record = await this.#currentRecord(slot)
        const checked = this.#fresh(slot, record)
        if (checked !== undefined) return this.#useRenewalInfo(slot, checked)
        // The CA is asked by the chain: a cooled certificate is read whole again (the store has none: its renewal orders one).
        const cert = slot.cert !== undefined && isWhole(slot.cert) ? slot.cert : await this.#read(slot, true)
        if (cert === undefined) return
        await this.#askRenewalInfo(slot, cert, record?.serial === cert.serial ? record : undefined, undefined, lock.signal)
      } finally {
        await lock.release()
      }
    } catch (err) {
      this.#checkFailed(slot, err, 'renewal information check failed; will retry')
    }
  }

  /**
   * The fleet's renewal-information record of `slot`'s key. One about another
   * certificate than ours means the fleet replaced ours (a renewal, a
   * revocation): the store's certificate is adopted first, so that no
   * record is ever asked for or written about a replaced one.
   */
  async #currentRecord (slot: Slot): Promise<RenewalInfoRecord | undefined> {
    const record = await this.#renewalInfo.read(slot.key)
    if (record !== undefined && record.serial !== slot.cert?.serial) await this.#read(slot, true)
    return record
  }

  /** A failed look at the renewal information: logged, and tried again after RENEWAL_INFO_INTERVALS.afterFailure. */
  #checkFailed (slot: Slot, err: unknown, msg: string): void {
    if (this.#closing.signal.aborted) return
    const retryAt = this.#clock.now() + RENEWAL_INFO_INTERVALS.afterFailure
    slot.ariCheckAt = retryAt
    this.#opts.log.warn({ domain: slot.name, retryAt: new Date(retryAt), error: errorFields(err) }, msg)
  }

  /** A record about `slot`'s certificate that another instance checked recently enough. */
  #fresh (slot: Slot, record: RenewalInfoRecord | undefined): RenewalInfoRecord | undefined {
    return record !== undefined && record.serial === slot.cert?.serial && record.nextCheck > this.#clock.now() ? record : undefined
  }

  /**
   * Asks the CA for the window of `cert` (held under the name's lock), writes
   * the fleet's record and uses it. `previous`: the record of the same
   * certificate, whose random time in the window is kept while the window does
   * not move. `origin`: for a new certificate, the window whose renewal
   * produced it. A CA that publishes no renewal information is looked at
   * again after RENEWAL_INFO_INTERVALS.max, with nothing written; a failed
   * request keeps the last window known and is retried after afterFailure.
   * Resolves with whether the CA answered with a window.
   */
  async #askRenewalInfo (slot: Slot, cert: Certificate, previous: RenewalInfoRecord | undefined, origin: RenewalInfoRecord['origin'], lockSignal: AbortSignal): Promise<boolean> {
    const { issuer, log } = this.#opts
    const now = this.#clock.now()
    let answer: RenewalInfo | undefined
    let failed: unknown
    try {
      answer = await untilAborted((issuer.renewalInfo as NonNullable<CertificateSource['renewalInfo']>)(cert, AbortSignal.any([this.#closing.signal, lockSignal])), this.#closing.signal)
    } catch (err) {
      if (this.#closing.signal.aborted) throw err
      failed = err
    }
    if (failed === undefined && answer === undefined) {
      slot.ariCheckAt = now + RENEWAL_INFO_INTERVALS.max
      this.#schedule(slot, slot.nextAt ?? slot.renewAt as number)
      return false
    }
    const window = answer?.window ?? previous?.window
    const record: RenewalInfoRecord = {
      serial: cert.serial,
      window,
      renewAt: window === undefined ? undefined : previous?.renewAt !== undefined && sameWindow(window, previous.window) ? previous.renewAt : renewalPoint(window),
      checkedAt: now,
      nextCheck: answer === undefined ? now + RENEWAL_INFO_INTERVALS.afterFailure : nextCheckTime(now, answer.retryAfter),
      origin: origin ?? previous?.origin
    }
    if (failed !== undefined) {
      log.warn({ domain: slot.name, serial: cert.serial, nextCheck: new Date(record.nextCheck), error: errorFields(failed) }, 'the CA\'s renewal information could not be read; the last window known (or the lifetime rule) applies meanwhile')
    } else if (previous?.window !== undefined && window !== undefined && !sameWindow(window, previous.window)) {
      log.warn({ ...certFields(slot, cert), start: new Date(window.start), end: new Date(window.end), explanationURL: window.explanationURL, previous: { start: new Date(previous.window.start), end: new Date(previous.window.end) } },
        'the CA moved the renewal window')
    }
    if (!lockSignal.aborted) await this.#renewalInfo.write(slot.key, record)
    this.#useRenewalInfo(slot, record)
    return answer !== undefined
  }

  /** Takes `record` (about `slot`'s certificate) as the fleet's word: the renewal time and the next look at it. */
  #useRenewalInfo (slot: Slot, record: RenewalInfoRecord): void {
    slot.ari = record
    // The others look a little later than the record says: the first to look asks the CA, the rest read its answer.
    const spread = Math.min(CHECK_SPREAD, Math.max(0, record.nextCheck - record.checkedAt) / 10)
    slot.ariCheckAt = Math.max(record.nextCheck, this.#clock.now()) + Math.random() * spread
    slot.renewAt = this.#renewalTime(slot)
    // A retry (the backoff) or a write still pending keeps its own time.
    const held = slot.hold !== undefined && slot.hold.until > this.#clock.now()
    this.#schedule(slot, held || slot.unsaved === true ? slot.nextAt ?? slot.renewAt : slot.renewAt)
  }

  /**
   * The renewal information of a certificate just obtained (best effort: a
   * failure leaves it to the next check). `origin`: the window it answered.
   */
  async #recordRenewalInfo (slot: Slot, cert: Certificate, origin: RenewalInfoRecord['origin'], lockSignal: AbortSignal): Promise<void> {
    if (this.#opts.issuer.renewalInfo === undefined) return
    try {
      await this.#askRenewalInfo(slot, cert, undefined, origin, lockSignal)
    } catch (err) {
      this.#checkFailed(slot, err, 'renewal information of the new certificate not stored; will retry')
      this.#schedule(slot, slot.nextAt ?? slot.renewAt as number)
    }
  }

  /**
   * A renewal (or retry) a timer asked for. An on-demand name is renewed only
   * while allow() still says yes; one refused and not asked for since, with no
   * certificate, is forgotten (no allow() call, no order): its next handshake starts over.
   */
  async #renewal (slot: Slot): Promise<void> {
    const { site } = slot
    if (site.onDemand && site.asked === false && site.slots.every((s) => s.cert === undefined && s.ordering === undefined && s.loading === undefined)) {
      this.#opts.log.debug({ domain: site.name }, 'on-demand name not asked for since it was refused: forgotten')
      this.#drop(site)
      return
    }
    if (slot.site.onDemand && !(await (this.#onDemand as OnDemandPolicy<Site>).decide(slot.name, { fresh: true }))) {
      this.#opts.log.info({ domain: slot.name }, 'on-demand name no longer allowed: not renewed')
      this.#drop(slot.site)
      return
    }
    await this.#order(slot, { until: 'stored' })
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
      if (this.#timers.has(slot) || this.#closing.signal.aborted) return
      const retryAt = this.#clock.now() + retryDelay(1, this.#opts.retryDelays)
      this.#fail(slot, err, retryAt)
      this.#opts.log.warn({ domain: slot.name, retryAt: new Date(retryAt), error: errorFields(err) }, 'certificate work failed; will retry')
      this.#schedule(slot, retryAt)
    }
  }

  /**
   * What the store's listing tells of the `listed` certificates it has
   * metadata for: each live one known by its serial and validity (as if loaded,
   * without its key and chain). Returns how many. A listing that fails is
   * logged, and what it did not tell is read from each certificate instead.
   */
  async #learnFromListing (listed: Slot[]): Promise<number> {
    const byKey = new Map(listed.map((slot) => [slot.key, slot]))
    let known = 0
    try {
      for await (const { key, metadata } of (this.#opts.store.entries as NonNullable<CertStore['entries']>)()) {
        if (this.#closing.signal.aborted) break
        const slot = byKey.get(key)
        // A handshake may have loaded it first; an address's certificate is served whole, so it is read whole.
        if (slot === undefined || slot.cert !== undefined || slot.site.pinned === true) continue
        const info = summaryFromMetadata(slot.name, metadata)
        if (info === undefined || !this.#live(info)) continue
        this.#loaded(slot, info)
        known++
      }
    } catch (err) {
      this.#opts.log.warn({ error: errorFields(err) }, 'the store\'s listing failed: reading each certificate instead')
    }
    return known
  }

  /** Runs `fn` on every listed certificate, `concurrency` at a time, until closed. */
  async #eachListedSlot (fn: (slot: Slot) => Promise<void>): Promise<void> {
    await this.#each([...this.#slots()].filter((slot) => slot.site.onDemand === undefined), fn)
  }

  /** Runs `fn` on each of `slots`, `concurrency` at a time, until closed. */
  async #each (slots: readonly Slot[], fn: (slot: Slot) => Promise<void>): Promise<void> {
    let next = 0
    const worker = async (): Promise<void> => {
      while (next < slots.length && !this.#closing.signal.aborted) await fn(slots[next++])
    }
    await Promise.all(Array.from({ length: Math.min(this.#opts.concurrency, slots.length) }, worker))
  }

  #live<C extends CertificateSummary> (cert: C | undefined): cert is C {
    return cert !== undefined && cert.notAfter > this.#clock.now()
  }

  #due (slot: Slot): boolean {
    return slot.renewAt === undefined || slot.renewAt <= this.#clock.now()
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

function date (ms: number | undefined): Date | undefined {
  return ms === undefined ? undefined : new Date(ms)
}

/** The same certificate, by what is known of both. */
function sameFields (a: CertificateSummary, b: CertificateSummary): boolean {
  return a.serial === b.serial && a.notBefore === b.notBefore && a.notAfter === b.notAfter
}

/** Issuance order: a certificate issued later wins, whatever its lifetime. */
function newer (a: CertificateSummary, b: CertificateSummary): boolean {
  return a.notBefore > b.notBefore || (a.notBefore === b.notBefore && a.serial > b.serial)
}

/** A certificate as events and log lines show it (never its key). */
function certFields (slot: Slot, cert: CertificateSummary): CertificateEvent {
  return { domain: cert.name, keyType: slot.type, serial: cert.serial, notAfter: new Date(cert.notAfter) }
}
