// The fleet's budget of new orders per hour, kept in the store under its own lock.
import type { Clock } from '../clock'
import type { Logger } from '../events'
import { CorruptLog } from '../store/corrupt-log'
import { storeKeys, storeLimits } from '../store/keys'
import { readRecord, type CertStore, type Lock } from '../store/store'
import { linkSignals } from '../signals'
import { LockQueue } from './lock-queue'
import type { FleetLocks, LockWaitListener } from './locks'

const HOUR = 3_600_000
/**
 * How far ahead of this instance's clock an entry of the log may be and still
 * count: another instance's clock may run a little fast. Entries further ahead
 * (or not numbers at all) are dropped when read, so they are gone at the next
 * write: a log poisoned with far-future times cannot postpone the fleet's orders.
 */
export const CLOCK_TOLERANCE = 5 * 60_000

/**
 * Orders the log can hold within storeLimits.orderLog (14 bytes each: 13 digits
 * and a comma, plus the brackets): 4,681. The plugin never writes a larger log
 * (one would be read as unusable, that is as empty), so the fleet's budget is at
 * most this whatever maxOrdersPerHour says.
 */
export const ORDER_LOG_CAPACITY = Math.floor((storeLimits.orderLog - 1) / 14)

export interface OrderBudgetOptions {
  store: CertStore
  /** New orders the whole fleet may place in any hour. */
  maxOrdersPerHour: number
  /** Takes the budget's lock (recorded as this instance's, given up at the deadline). */
  locks: FleetLocks
  clock: Clock
  /** Ends waits for the budget's lock (the manager is closing). */
  closing: AbortSignal
  /** Where an unusable log is reported (once). */
  log: Logger
}

/**
 * The fleet's budget of new orders: a log of the last hour's orders in the
 * store, read and written under its own lock. A claim is opened before an
 * order (the lock taken, the log read), then spent once (the order counted, or
 * refused) and released in one place, whether or not it was spent.
 */
export class OrderBudget {
  readonly #opts: OrderBudgetOptions
  // Polling the store for the budget's lock spaced a start-up's first orders a second apart.
  readonly #queue = new LockQueue()
  readonly #corrupt: CorruptLog
  /**
   * Until when the budget is known to be spent, from the last refusal: the
   * log's entries only leave the hour as time passes and other instances only
   * add to it, so no claim opened before then can be spent. Refused from memory,
   * a flood of new names waiting for the budget costs no store call.
   */
  #spentUntil = -Infinity

  constructor (opts: OrderBudgetOptions) {
    this.#opts = opts
    this.#corrupt = new CorruptLog(opts.log, 'ignoring unusable order log')
  }

  /**
   * Until when this instance knows the budget is spent (a refusal's slot), if
   * that is still ahead: an order that is not exempt cannot go before then, so
   * whoever asks may refuse it without any lock or store call of the budget's.
   */
  knownSpentUntil (): number | undefined {
    return this.#opts.clock.now() < this.#spentUntil ? this.#spentUntil : undefined
  }

  /** Starts taking the budget's lock and reading its log; nothing waits for it until spend(). `onWait` hears of another holder. */
  open (onWait?: LockWaitListener): BudgetClaim {
    const refused = (retryAt: number): void => { this.#spentUntil = Math.max(this.#spentUntil, retryAt) }
    // A claim released before it was spent stops waiting for the lock.
    const abandon = new AbortController()
    return new BudgetClaim(this.#lockAndRead(onWait, abandon.signal), this.#opts, refused, abandon)
  }

  async #lockAndRead (onWait: LockWaitListener | undefined, abandoned: AbortSignal): Promise<Opened> {
    const { store, locks, closing, clock } = this.#opts
    const signal = linkSignals(closing, abandoned)
    let spentUntil: number | undefined
    const lock = await this.#queue.take(async () => {
      // Known spent (by a refusal, maybe of a claim queued ahead of this one): no store call.
      if (clock.now() < this.#spentUntil) {
        spentUntil = this.#spentUntil
        return NO_LOCK
      }
      return await locks.take(storeKeys.orderLog, signal.signal, { onWait })
    }, signal.signal).finally(signal.dispose)
    if (spentUntil !== undefined) {
      await lock.release()
      return { spentUntil }
    }
    try {
      const now = clock.now()
      // Unusable, it counts as empty and is rewritten at the next order.
      const log = await readRecord(store, storeKeys.orderLog, storeLimits.orderLog, parseOrderLog, this.#corrupt) ?? []
      const recent = log
        .filter((at) => at > now - HOUR && at <= now + CLOCK_TOLERANCE)
        .sort((a, b) => a - b)
      return { lock, recent }
    } catch (err) {
      await lock.release()
      throw err
    }
  }
}

/** What a claim holds when the budget is known spent: no lock at all. */
const NO_LOCK: Lock = { signal: new AbortController().signal, release: async () => {} }

/** A claim's lock and the log it read, or (no lock taken) the time until which the budget is known to be spent. */
type Opened = {
  lock: Lock
  /** Times of the last hour's orders, oldest first (plausible ones only: see CLOCK_TOLERANCE). */
  recent: number[]
} | { spentUntil: number }

/** One order's claim on the budget: spend() once, release() always. */
export class BudgetClaim {
  readonly #opened: Promise<Opened>
  readonly #opts: OrderBudgetOptions
  readonly #refused: (retryAt: number) => void
  readonly #abandon: AbortController

  constructor (opened: Promise<Opened>, opts: OrderBudgetOptions, refused: (retryAt: number) => void, abandon: AbortController) {
    this.#opened = opened
    this.#opts = opts
    this.#refused = refused
    this.#abandon = abandon
    // Whoever spends it gets the rejection; nobody may, when the order turns out not to be needed.
    opened.catch(() => {})
  }

  /**
   * Counts one order in the fleet's log and frees the budget for the next
   * order before this one talks to the CA. When the hour's budget is spent,
   * counts nothing and returns when the next order may be placed.
   */
  async spend (): Promise<{ spent: true } | { spent: false, retryAt: number }> {
    const opened = await this.#opened
    if ('spentUntil' in opened) return { spent: false, retryAt: opened.spentUntil }
    const { lock, recent } = opened
    const { store, clock } = this.#opts
    const budget = Math.min(this.#opts.maxOrdersPerHour, ORDER_LOG_CAPACITY)
    try {
      // The next order may go once enough of the hour's orders have left it to be under the budget.
      if (recent.length >= budget) {
        const retryAt = recent[recent.length - budget] + HOUR
        this.#refused(retryAt)
        return { spent: false, retryAt }
      }
      lock.signal.throwIfAborted()
      await store.put(storeKeys.orderLog, JSON.stringify([...recent, clock.now()].sort((a, b) => a - b)))
      return { spent: true }
    } finally {
      void this.release()
    }
  }

  /** Releases the budget's lock, or stops waiting for it when it is not taken yet; never throws, releasing twice is a no-op. */
  async release (): Promise<void> {
    this.#abandon.abort(new Error('the order log\'s claim was released unspent'))
    await this.#opened.then((opened) => 'lock' in opened ? opened.lock.release() : undefined, () => {})
  }
}

// The log's numbers; undefined when it is no JSON array at all (unusable).
function parseOrderLog (data: Buffer): number[] | undefined {
  try {
    const log: unknown = JSON.parse(data.toString('utf8'))
    // Whole milliseconds, as written: a log of long fractions would outgrow its limit when rewritten.
    return Array.isArray(log) ? log.filter((at): at is number => Number.isFinite(at)).map((at) => Math.trunc(at)) : undefined
  } catch {
    return undefined
  }
}
