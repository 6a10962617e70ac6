/*
 * What the unit tier drives the certificate manager with: time that moves
 * only when a test says so, a local CA behind the CertificateSource interface
 * (real certificates, signed here, valid by that clock), a MemoryStore and a
 * logger that keeps its lines. The CA is local because what these tests check
 * is the manager's logic between the real components (backoff steps, the
 * budget, renewal times, eviction, refusals), hours of it in milliseconds;
 * the same paths run against real Pebble and Azurite in the other files.
 */
import { ReplacesRefusedError, type IssueOptions } from '../../lib/acme/issuer'
import type { RenewalInfo } from '../../lib/acme/ari'
import type { Certificate } from '../../lib/certificate'
import type { Clock, Timer } from '../../lib/clock'
import { CertificateManager, type CertificateSource, type ManagerOptions } from '../../lib/manager'
import type { Logger } from '../../lib/events'
import { untilAborted } from '../../lib/signals'
import { MemoryStore } from '../../lib/store/memory'
import { createCa, type TestCa } from '../support/ca'

interface Pending { at: number, fn: () => void }

/** A Clock whose time moves only through advance(), firing due timers in order. */
export class ManualClock implements Clock {
  #now: number
  readonly #timers = new Set<Pending>()

  constructor (start = Date.now()) {
    this.#now = start
  }

  now (): number {
    return this.#now
  }

  setTimeout (fn: () => void, ms: number): Timer {
    const timer = { at: this.#now + Math.max(0, ms), fn }
    this.#timers.add(timer)
    return timer
  }

  clearTimeout (timer: Timer | undefined): void {
    if (timer !== undefined) this.#timers.delete(timer as Pending)
  }

  /** When the next timer fires, if any. */
  next (): number | undefined {
    let first: number | undefined
    for (const { at } of this.#timers) if (first === undefined || at < first) first = at
    return first
  }

  /** How many timers are armed. */
  get pending (): number {
    return this.#timers.size
  }

  /** Moves time `ms` forward: each timer due on the way fires at its own time, and the work it starts settles before the next. */
  async advance (ms: number): Promise<void> {
    const until = this.#now + ms
    for (;;) {
      await settle()
      const due = [...this.#timers].filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0]
      if (due === undefined) break
      this.#timers.delete(due)
      this.#now = Math.max(this.#now, due.at)
      due.fn()
    }
    this.#now = until
    await settle()
  }
}

/** Lets every promise chain started so far run to its end (nothing here waits on I/O or real timers). */
export async function settle (): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve))
}

/** A CertificateSource on the local CA: certificates valid from the clock's now; failures and stalls on request. */
export class LocalIssuer implements CertificateSource {
  readonly ca: TestCa = createCa()
  readonly #clock: ManualClock
  /** Every issue() call: the name, the clock's time and the serial it names as replaced. */
  readonly calls: Array<{ name: string, at: number, replaces?: string }> = []
  /** Certificate lifetime (ms). */
  lifetime = 90 * 86_400_000
  /** When set, issue() rejects with this error. */
  failWith: Error | undefined
  /** When true, issue() waits until its signal aborts. */
  stall = false
  /** When set, issue() waits for it (or its signal) before issuing. */
  gate: Promise<void> | undefined
  /** Certificates start this long before the clock's now (ms): a CA whose clock lags, or that backdates. */
  backdate = 0
  /** What clockOffset() answers: the CA's clock minus ours (ms). */
  offset: number | undefined
  /** When set, prepare() (the account lookup) waits for it. */
  account: Promise<void> | undefined

  async prepare (): Promise<void> {
    await this.account
  }

  constructor (clock: ManualClock) {
    this.#clock = clock
  }

  async issue (name: string, _keyType: string, signal: AbortSignal, { replaces }: IssueOptions = {}): Promise<{ key: string, chain: string }> {
    this.calls.push({ name, at: this.#clock.now(), ...(replaces === undefined ? {} : { replaces: replaces.serial }) })
    if (this.stall) {
      await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
    }
    if (this.gate !== undefined) await untilAborted(this.gate, signal)
    if (this.failWith !== undefined) throw this.failWith
    return this.ca.issue(name, { notBefore: this.#clock.now() - this.backdate, lifetime: this.lifetime })
  }

  protected get now (): number {
    return this.#clock.now()
  }

  clockOffset (): number | undefined {
    return this.offset
  }

  /** The names ordered so far, in order. */
  get names (): string[] {
    return this.calls.map((c) => c.name)
  }
}

/**
 * A LocalIssuer that publishes renewal information (RFC 9773) the test sets:
 * `answer(cert)` decides each answer (default: the window Pebble gives, a day
 * either side of two thirds of the lifetime, with Retry-After 6 h).
 */
export class AriIssuer extends LocalIssuer {
  /** Every renewalInfo() call: the serial and the clock's time. */
  readonly checks: Array<{ serial: string, at: number }> = []
  readonly revoked: Array<{ serial: string, reason?: number }> = []
  /** Serials the CA counts as replaced: an order naming one is refused with ReplacesRefusedError (alreadyReplaced). */
  readonly replaced = new Set<string>()
  /** When true, every order naming a certificate it replaces is refused for it (as another account's, say). */
  refuseReplaces = false
  /** Runs before an order is refused as replaced already (to change the store meanwhile, as another instance would). */
  beforeRefusal: (() => Promise<void>) | undefined
  answer: (cert: Certificate) => RenewalInfo | Error | undefined = (cert) => {
    const ideal = cert.notAfter - (cert.notAfter - cert.notBefore) / 3
    return { window: { start: Math.max(cert.notBefore, ideal - 86_400_000), end: Math.min(cert.notAfter, ideal + 86_400_000) }, retryAfter: 6 * 3_600_000 }
  }

  /** False: a CA whose directory has no `renewalInfo` (offersRenewalInfo() says so, renewalInfo() finds none). */
  offers = true

  /** When set, offersRenewalInfo() rejects with it: a directory that cannot be read. */
  directoryFailure: Error | undefined

  async offersRenewalInfo (): Promise<boolean> {
    if (this.directoryFailure !== undefined) throw this.directoryFailure
    return this.offers
  }

  async renewalInfo (cert: Certificate): Promise<RenewalInfo | undefined> {
    if (!this.offers) return undefined
    this.checks.push({ serial: cert.serial, at: this.now })
    const answer = this.answer(cert)
    if (answer instanceof Error) throw answer
    return answer
  }

  override async issue (name: string, keyType: string, signal: AbortSignal, options: IssueOptions = {}): Promise<{ key: string, chain: string }> {
    const { replaces } = options
    if (replaces !== undefined && this.refuseReplaces) {
      this.calls.push({ name, at: this.now, replaces: replaces.serial })
      throw new ReplacesRefusedError('requester account did not request the certificate being replaced by this order', false)
    }
    if (replaces !== undefined && this.replaced.has(replaces.serial)) {
      this.calls.push({ name, at: this.now, replaces: replaces.serial })
      await this.beforeRefusal?.()
      throw new ReplacesRefusedError(`certificate with serial ${replaces.serial} already has a replacement order`, true)
    }
    const issued = await super.issue(name, keyType, signal, options)
    if (replaces !== undefined) this.replaced.add(replaces.serial)
    return issued
  }

  async revoke (cert: Certificate, reason: number | undefined): Promise<void> {
    this.revoked.push({ serial: cert.serial, ...(reason === undefined ? {} : { reason }) })
  }
}

export interface LogLine { level: keyof Logger, obj: Record<string, unknown>, msg: string }

export function recordingLogger (): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = []
  const at = (level: keyof Logger) => (obj: object, msg: string): void => { lines.push({ level, obj: obj as Record<string, unknown>, msg }) }
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

export interface Unit<I extends LocalIssuer = LocalIssuer> {
  manager: CertificateManager
  clock: ManualClock
  issuer: I
  store: MemoryStore
  log: ReturnType<typeof recordingLogger>
}

/** A manager on a ManualClock, a LocalIssuer and a MemoryStore, with the plugin's defaults unless overridden. */
export function unitManager (options: Partial<ManagerOptions> & { domains: string[] }, clock?: ManualClock): Unit
export function unitManager<I extends LocalIssuer> (options: Partial<ManagerOptions> & { domains: string[] }, clock: ManualClock, makeIssuer: (clock: ManualClock) => I): Unit<I>
export function unitManager (options: Partial<ManagerOptions> & { domains: string[] }, clock = new ManualClock(), makeIssuer = (c: ManualClock): LocalIssuer => new LocalIssuer(c)): Unit {
  const issuer = makeIssuer(clock)
  const store = options.store as MemoryStore | undefined ?? new MemoryStore()
  const log = recordingLogger()
  const manager = new CertificateManager({
    keyType: ['ecdsa'],
    renewBefore: undefined,
    retryDelays: undefined,
    maxOrdersPerHour: 100,
    concurrency: 8,
    instanceId: 'unit',
    onDemand: undefined,
    handshakeTimeout: 20_000,
    lockTimeout: 120_000,
    prewarmTimeout: 5_000,
    contextCacheSize: 10_000,
    issuer,
    log,
    clock,
    ...options,
    store
  })
  return { manager, clock, issuer, store, log }
}
