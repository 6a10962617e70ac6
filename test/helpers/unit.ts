/*
 * What the unit tier drives the certificate manager with: time that moves
 * only when a test says so, a local CA behind the CertificateSource interface
 * (real certificates, signed here, valid by that clock), a MemoryStore and a
 * logger that keeps its lines. The CA is local because what these tests check
 * is the manager's logic between the real components (backoff steps, the
 * budget, renewal times, eviction, refusals), hours of it in milliseconds;
 * the same paths run against real Pebble and Azurite in the other files.
 */
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
  /** Every issue() call: the name and the clock's time. */
  readonly calls: Array<{ name: string, at: number }> = []
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

  async issue (name: string, _keyType: string, signal: AbortSignal): Promise<{ key: string, chain: string }> {
    this.calls.push({ name, at: this.#clock.now() })
    if (this.stall) {
      await new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }))
    }
    if (this.gate !== undefined) await untilAborted(this.gate, signal)
    if (this.failWith !== undefined) throw this.failWith
    return this.ca.issue(name, { notBefore: this.#clock.now() - this.backdate, lifetime: this.lifetime })
  }

  clockOffset (): number | undefined {
    return this.offset
  }

  /** The names ordered so far, in order. */
  get names (): string[] {
    return this.calls.map((c) => c.name)
  }
}

export interface LogLine { level: keyof Logger, obj: Record<string, unknown>, msg: string }

export function recordingLogger (): Logger & { lines: LogLine[] } {
  const lines: LogLine[] = []
  const at = (level: keyof Logger) => (obj: object, msg: string): void => { lines.push({ level, obj: obj as Record<string, unknown>, msg }) }
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

export interface Unit {
  manager: CertificateManager
  clock: ManualClock
  issuer: LocalIssuer
  store: MemoryStore
  log: ReturnType<typeof recordingLogger>
}

/** A manager on a ManualClock, a LocalIssuer and a MemoryStore, with the plugin's defaults unless overridden. */
export function unitManager (options: Partial<ManagerOptions> & { domains: string[] }, clock = new ManualClock()): Unit {
  const issuer = new LocalIssuer(clock)
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
    issuer,
    log,
    clock,
    ...options,
    store
  })
  return { manager, clock, issuer, store, log }
}
