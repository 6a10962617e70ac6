// The on-demand policy: which unlisted names may have a certificate, and which stay in memory.
import { timeoutSignal, type Clock } from './clock'
import { errorFields, printable, type Logger } from './events'
import { untilAborted } from './signals'

/** Certificates for names not in `domains` (AutocertOptions.onDemand). */
export interface OnDemandOptions {
  /** Whether `name` (normalised) may have a certificate. Throwing, or taking longer than `timeout`, means no. */
  allow: (name: string) => boolean | Promise<boolean>
  /** Milliseconds allow() may take. Default: 5000. */
  timeout?: number
  /** On-demand names kept in memory (about 3 KiB each, plus 24 KiB once served); the least recently used are dropped and read from the store again when needed. Default: 10000. */
  cacheSize?: number
}

/** onDemand as validated: every field set. */
export type OnDemandSettings = Required<OnDemandOptions>

/** How long an onDemand.allow() answer is trusted: yes for 10 minutes, no for 1 minute. */
export const ALLOWED_TTL = 10 * 60_000
export const DENIED_TTL = 60_000

/**
 * How long after the order budget's next free slot an on-demand name refused
 * for the budget may retry, at most (ms). Each name retries at a random time in
 * [slot, slot + BUDGET_RETRY_SPREAD): a flood of names all refused until the same
 * slot comes back spread over five minutes, not in one millisecond. A handshake
 * may still order from the slot on; only the retry nobody waits for is spread.
 */
export const BUDGET_RETRY_SPREAD = 5 * 60_000

/** When an on-demand name refused for the budget until `slot` retries (see BUDGET_RETRY_SPREAD). */
export function budgetRetryTime (slot: number, random = Math.random): number {
  return slot + random() * BUDGET_RETRY_SPREAD
}

/**
 * The on-demand policy: which names not listed may have a certificate (allow()'s
 * answers, cached, one call in flight per name) and which of them stay in
 * memory (least recently used dropped beyond cacheSize). Holds names and
 * answers, never certificates: the manager keeps those.
 */
export class OnDemandPolicy<T> {
  readonly #settings: OnDemandSettings
  readonly #log: Logger
  readonly #clock: Clock
  /** allow() answers (or the call in flight), oldest first. */
  readonly #decisions = new Map<string, { allowed: Promise<boolean>, until: number }>()
  /** The on-demand names in memory, least recently used first. */
  readonly #recent = new Map<string, T>()

  constructor (settings: OnDemandSettings, log: Logger, clock: Clock) {
    this.#settings = settings
    this.#log = log
    this.#clock = clock
  }

  /** allow()'s answer for `name`: cached (yes for ALLOWED_TTL, no for DENIED_TTL) unless `fresh`; one call in flight per name. */
  decide (name: string, { fresh = false } = {}): Promise<boolean> {
    const cached = this.#decisions.get(name)
    if (cached !== undefined && cached.until > this.#clock.now() && !fresh) return cached.allowed
    const decision = { allowed: this.#ask(name), until: Infinity }
    void decision.allowed.then((yes) => { decision.until = this.#clock.now() + (yes ? ALLOWED_TTL : DENIED_TTL) })
    this.#decisions.delete(name)
    this.#decisions.set(name, decision)
    // Bounded like the names: a flood of new SNI names cannot grow it without end.
    for (const oldest of this.#decisions.keys()) {
      if (this.#decisions.size <= this.#settings.cacheSize) break
      this.#decisions.delete(oldest)
    }
    return decision.allowed
  }

  async #ask (name: string): Promise<boolean> {
    const { allow, timeout } = this.#settings
    const deadline = timeoutSignal(this.#clock, timeout)
    try {
      return await untilAborted(Promise.resolve().then(() => allow(name)), deadline.signal) === true
    } catch (err) {
      this.#log.warn({ domain: name, error: errorFields(err) }, 'onDemand.allow() failed or timed out: the name is refused')
      return false
    } finally {
      deadline.dispose()
    }
  }

  /** Marks `name` as just used. */
  touch (name: string, value: T): void {
    this.#recent.delete(name)
    this.#recent.set(name, value)
  }

  /**
   * Keeps `name` in memory as the most recently used, and returns the least
   * recently used names beyond cacheSize for the caller to drop: never `name`
   * itself, never one that `busy()` says has work in flight (the next name
   * added drops it).
   */
  add (name: string, value: T, busy: (value: T) => boolean): T[] {
    this.touch(name, value)
    const dropped: T[] = []
    for (const [other, kept] of this.#recent) {
      if (this.#recent.size <= this.#settings.cacheSize) break
      if (other !== name && !busy(kept)) {
        this.#recent.delete(other)
        dropped.push(kept)
      }
    }
    return dropped
  }

  /** Forgets `name` (dropped from memory, or no longer allowed). */
  delete (name: string): void {
    this.#recent.delete(name)
  }
}

const REFUSAL_LOG_INTERVAL = 10_000

/** Refused TLS server names are client input: logged at most once per interval, with a count, so a flood cannot flood the log. */
export class RefusalLog {
  readonly #log: Logger
  readonly #clock: Clock
  #count = 0
  #since = -Infinity

  constructor (log: Logger, clock: Clock) {
    this.#log = log
    this.#clock = clock
  }

  refused (servername: string): void {
    const now = this.#clock.now()
    this.#count++
    if (now - this.#since < REFUSAL_LOG_INTERVAL) return
    this.#log.warn({ servername: printable(servername), refused: this.#count }, 'refused TLS server name')
    this.#count = 0
    this.#since = now
  }
}
