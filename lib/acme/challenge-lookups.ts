// Bounds the store reads that challenge requests cause (HTTP-01 tokens, TLS-ALPN-01 names): a flood is answered, never queued.
import { systemClock, type Clock } from '../clock'
import { errorFields, type Logger } from '../events'

/**
 * Limits of the store lookups behind `/.well-known/acme-challenge/<token>`, on
 * every path that answers it (the Fastify route, `middleware`, the `http01`
 * listener), and, with its own instance and no memory of unknown names, behind
 * acme-tls/1 connections (TLS-ALPN-01). Anyone on the internet can send well-formed tokens; without them
 * each one is a store read (billable) held in memory until it ends, as many at
 * once as a client pipelines. A CA sends one GET per validation, on a
 * connection of its own, for a token this instance or another of the fleet
 * wrote to the store: it stays far inside them. Answers this instance
 * published itself come from memory and count against none of them.
 */
export const CHALLENGE_LOOKUP_LIMITS = {
  /**
   * Store lookups one connection may have waiting at once (its own or one
   * it shares). One more is answered 429 with `Connection: close`: Node then
   * drops what that connection pipelined after it. Default 2.
   */
  perConnection: 2,
  /**
   * Requests a connection may go on sending while refused, before it is reset
   * at once: every request Node has parsed waits in memory for the answers
   * before it, so those of a pipelined flood would wait for its lookups.
   * Default 16.
   */
  resetAfter: 16,
  /**
   * Store reads in flight for the whole instance (distinct tokens). One more is
   * answered 503 with `Retry-After` and `Connection: close`; a request for a
   * token already being read shares that read instead. Default 32.
   */
  inFlight: 32,
  /** `Retry-After` of that 503, in seconds. Default 1. */
  retryAfter: 1,
  /**
   * How long a token the store does not hold is remembered, in milliseconds:
   * asking again costs no read. A CA asks only once the answer is stored, so
   * no real token is remembered as unknown. Default 10,000 (10 s).
   */
  unknownTtl: 10_000,
  /** How many unknown tokens are remembered at most; the oldest is forgotten first. Default 4,096. */
  unknownMax: 4_096,
  /**
   * A failing store is logged at most once per interval, in milliseconds, with
   * the number of failed reads since the last line. Default 10,000 (10 s).
   */
  failureLogInterval: 10_000
} as const

export type ChallengeLookupLimits = { readonly [K in keyof typeof CHALLENGE_LOOKUP_LIMITS]: number }

/**
 * What a lookup came to: the stored value (undefined: none), or which limit
 * refused it: `connection` (perConnection), `reset` (that, past resetAfter),
 * `instance` (inFlight).
 */
export type LookupResult<T> = { value: T | undefined } | { refused: Refusal }
export type Refusal = 'connection' | 'reset' | 'instance'

const UNKNOWN = { value: undefined } as const
const CONNECTION_BUSY = { refused: 'connection' } as const
const CONNECTION_RESET = { refused: 'reset' } as const
const INSTANCE_BUSY = { refused: 'instance' } as const

/**
 * Store reads by key within CHALLENGE_LOOKUP_LIMITS: concurrent lookups of a
 * key share one read, keys the store does not hold are remembered for a while,
 * and a lookup over a limit is refused at once. `connection` is any object that
 * stands for the client's connection (its socket, or its HTTP/2 session).
 * `read` is an async function: it reports a failure by rejecting, never by
 * throwing before it returns. A read that fails rejects every lookup sharing
 * it, and is logged (at most once per interval).
 */
export class ChallengeLookups<T> {
  readonly #read: (key: string) => Promise<T | undefined>
  readonly #limits: ChallengeLookupLimits
  readonly #log: Logger
  readonly #clock: Clock
  readonly #reads = new Map<string, Promise<T | undefined>>()
  // Lookups waiting per connection, and requests refused meanwhile; a connection's entry goes when its last lookup ends.
  readonly #waiting = new WeakMap<object, { count: number, refused: number }>()
  // Key -> until when it is known to be absent. Every entry lives as long, so the first is the oldest.
  readonly #unknown = new Map<string, number>()
  #failures = 0
  #loggedAt = -Infinity

  constructor (read: (key: string) => Promise<T | undefined>, log: Logger, limits: ChallengeLookupLimits = CHALLENGE_LOOKUP_LIMITS, clock: Clock = systemClock) {
    this.#read = read
    this.#log = log
    this.#limits = limits
    this.#clock = clock
  }

  async lookup (key: string, connection: object): Promise<LookupResult<T>> {
    const until = this.#unknown.get(key)
    if (until !== undefined) {
      if (until > this.#clock.now()) return UNKNOWN
      this.#unknown.delete(key)
    }
    const waiting = this.#waiting.get(connection) ?? { count: 0, refused: 0 }
    if (waiting.count >= this.#limits.perConnection) return ++waiting.refused > this.#limits.resetAfter ? CONNECTION_RESET : CONNECTION_BUSY
    let read = this.#reads.get(key)
    if (read === undefined) {
      if (this.#reads.size >= this.#limits.inFlight) return INSTANCE_BUSY
      read = this.#start(key)
      this.#reads.set(key, read)
    }
    waiting.count++
    this.#waiting.set(connection, waiting)
    try {
      return { value: await read }
    } finally {
      if (--waiting.count === 0) this.#waiting.delete(connection)
    }
  }

  /** Forgets that `key` was unknown (it has just been written). */
  forget (key: string): void {
    this.#unknown.delete(key)
  }

  async #start (key: string): Promise<T | undefined> {
    try {
      const value = await this.#read(key)
      if (value === undefined) this.#remember(key)
      return value
    } catch (err) {
      this.#failed(err)
      throw err
    } finally {
      this.#reads.delete(key)
    }
  }

  #remember (key: string): void {
    if (this.#limits.unknownTtl <= 0) return
    const now = this.#clock.now()
    for (const [oldest, until] of this.#unknown) {
      if (until > now && this.#unknown.size < this.#limits.unknownMax) break
      this.#unknown.delete(oldest)
    }
    this.#unknown.set(key, now + this.#limits.unknownTtl)
  }

  // An outage fails every read: one line per interval, not one per request.
  #failed (err: unknown): void {
    this.#failures++
    const now = this.#clock.now()
    if (now - this.#loggedAt < this.#limits.failureLogInterval) return
    this.#log.error({ error: errorFields(err), failures: this.#failures }, 'ACME challenge lookup failed')
    this.#failures = 0
    this.#loggedAt = now
  }
}
