// The fleet's budget of new orders per hour, kept in the store under its own lock.
import type { Clock } from '../clock'
import { storeKeys } from '../store/keys'
import { readRecord, type CertStore, type Lock } from '../store/store'
import { LockQueue } from './lock-queue'
import type { FleetLocks, TakeOptions } from './locks'

const HOUR = 3_600_000
/**
 * How far ahead of this instance's clock an entry of the log may be and still
 * count: another instance's clock may run a little fast. Entries further ahead
 * (or not numbers at all) are dropped when read, so they are gone at the next
 * write: a log poisoned with far-future times cannot postpone the fleet's orders.
 */
export const CLOCK_TOLERANCE = 5 * 60_000

export interface OrderBudgetOptions {
  store: CertStore
  /** New orders the whole fleet may place in any hour. */
  maxOrdersPerHour: number
  /** Takes the budget's lock (recorded as this instance's, given up at the deadline). */
  locks: FleetLocks
  clock: Clock
  /** Ends waits for the budget's lock (the manager is closing). */
  closing: AbortSignal
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

  constructor (opts: OrderBudgetOptions) {
    this.#opts = opts
  }

  /** Starts taking the budget's lock and reading its log; nothing waits for it until spend(). `onWait` hears of another holder. */
  open (onWait?: TakeOptions['onWait']): BudgetClaim {
    return new BudgetClaim(this.#lockAndRead(onWait), this.#opts)
  }

  async #lockAndRead (onWait: TakeOptions['onWait']): Promise<Opened> {
    const { store, locks, closing, clock } = this.#opts
    const lock = await locks.take(storeKeys.orderLog, closing, { queue: this.#queue, onWait })
    try {
      const now = clock.now()
      const recent = parseOrderLog(await readRecord(store, storeKeys.orderLog))
        .filter((at) => at > now - HOUR && at <= now + CLOCK_TOLERANCE)
        .sort((a, b) => a - b)
      return { lock, recent }
    } catch (err) {
      await lock.release()
      throw err
    }
  }
}

interface Opened {
  lock: Lock
  /** Times of the last hour's orders, oldest first (plausible ones only: see CLOCK_TOLERANCE). */
  recent: number[]
}

/** One order's claim on the budget: spend() once, release() always. */
export class BudgetClaim {
  readonly #opened: Promise<Opened>
  readonly #opts: OrderBudgetOptions

  constructor (opened: Promise<Opened>, opts: OrderBudgetOptions) {
    this.#opened = opened
    this.#opts = opts
    // Whoever spends it gets the rejection; nobody may, when the order turns out not to be needed.
    opened.catch(() => {})
  }

  /**
   * Counts one order in the fleet's log and frees the budget for the next
   * order before this one talks to the CA. When the hour's budget is spent,
   * counts nothing and returns when the next order may be placed.
   */
  async spend (): Promise<{ spent: true } | { spent: false, retryAt: number }> {
    const { lock, recent } = await this.#opened
    const { store, maxOrdersPerHour, clock } = this.#opts
    try {
      // The next order may go once enough of the hour's orders have left it to be under the budget.
      if (recent.length >= maxOrdersPerHour) return { spent: false, retryAt: recent[recent.length - maxOrdersPerHour] + HOUR }
      lock.signal.throwIfAborted()
      await store.put(storeKeys.orderLog, JSON.stringify([...recent, clock.now()].sort((a, b) => a - b)))
      return { spent: true }
    } finally {
      void this.release()
    }
  }

  /** Releases the budget's lock (once it has been taken); never throws, releasing twice is a no-op. */
  async release (): Promise<void> {
    await this.#opened.then((opened) => opened.lock.release(), () => {})
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
