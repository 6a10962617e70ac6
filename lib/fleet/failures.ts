// The fleet's failure records: the backoff every instance follows.
import { CaRefusal } from '../acme/retry'
import type { Clock } from '../clock'
import { errorMessage, type Logger } from '../events'
import { DEFAULT_RETRY_DELAYS, retryDelay } from '../renewal'
import { CorruptLog } from '../store/corrupt-log'
import { storeKeys, storeLimits } from '../store/keys'
import { CLOCK_TOLERANCE } from './budget'
import { readRecord, type CertStore } from '../store/store'

// A record's error message is cut to this many characters: even as JSON escapes
// (6 bytes each at most) the record stays well under storeLimits.failure.
const ERROR_CHARS = 2000

/** A failed order, shared by the fleet through the store under `<certificate key>+failure`. */
export interface FailureRecord {
  /** Consecutive failed orders. */
  failures: number
  /** The last one's message. */
  error: string
  /** When it failed (ms since the epoch). */
  at: number
  /** No order before this (ms since the epoch). */
  retryAt: number
}

/**
 * The fleet's failure backoff: one record per certificate key in the store, so
 * every instance follows one schedule (retryDelays) whoever failed last.
 */
export class FailureRecords {
  readonly #store: CertStore
  readonly #delays: readonly number[] | undefined
  readonly #clock: Clock
  readonly #corrupt: CorruptLog

  constructor (store: CertStore, retryDelays: readonly number[] | undefined, clock: Clock, log: Logger) {
    this.#store = store
    this.#delays = retryDelays
    this.#clock = clock
    this.#corrupt = new CorruptLog(log, 'ignoring unusable failure record')
  }

  /**
   * The record of `certificateKey`; unusable data counts as none and is
   * rewritten at the next failure, a store failure rejects. Unusable: over
   * storeLimits.failure, not a record, or one that no instance of this fleet
   * could have written: failed in the future (beyond CLOCK_TOLERANCE), or a
   * retry further away than the longest backoff step. A record planted to stop
   * a name's orders for a year is ignored.
   */
  async read (certificateKey: string): Promise<FailureRecord | undefined> {
    const now = this.#clock.now()
    const latest = now + this.#longest() + CLOCK_TOLERANCE
    const plausible = (data: Buffer): FailureRecord | undefined => {
      const record = parse(data)
      return record !== undefined && record.at <= now + CLOCK_TOLERANCE && record.retryAt <= latest ? record : undefined
    }
    return await readRecord(this.#store, storeKeys.failure(certificateKey), storeLimits.failure, plausible, this.#corrupt)
  }

  /**
   * Counts one more failure of `certificateKey` and stores it unless the lock
   * was lost (`lockSignal` aborted: the new holder's word counts then). Store
   * errors are ignored: the record is returned either way, for this instance's
   * own backoff.
   *
   * The next try is the backoff step's, or later when the CA asked for later
   * (a CaRefusal's retryAt: the Retry-After of its 429 or 5xx, e.g. rateLimited), but
   * never later than the longest step: what read() takes as plausible, and
   * the most any answer of the CA can stop a name for.
   */
  async record (certificateKey: string, err: unknown, lockSignal: AbortSignal): Promise<FailureRecord> {
    const previous = await this.read(certificateKey).catch(() => undefined)
    const failures = (previous?.failures ?? 0) + 1
    const at = this.#clock.now()
    const asked = err instanceof CaRefusal && err.retryAt !== undefined ? Math.min(err.retryAt, at + this.#longest()) : at
    const retryAt = Math.max(at + retryDelay(failures, this.#delays), asked)
    const record: FailureRecord = { failures, error: errorMessage(err).slice(0, ERROR_CHARS), at, retryAt }
    if (!lockSignal.aborted) await this.#store.put(storeKeys.failure(certificateKey), JSON.stringify(record)).catch(() => {})
    return record
  }

  /** The longest backoff step (ms). */
  #longest (): number {
    return Math.max(...(this.#delays ?? DEFAULT_RETRY_DELAYS))
  }

  /** Forgets the failures of `certificateKey` (it has a certificate now); best effort. */
  async clear (certificateKey: string): Promise<void> {
    await this.#store.delete(storeKeys.failure(certificateKey)).catch(() => {})
  }
}

function parse (data: Buffer): FailureRecord | undefined {
  try {
    const record = JSON.parse(data.toString('utf8')) as FailureRecord
    return Number.isFinite(record.retryAt) && Number.isFinite(record.at) && Number.isInteger(record.failures) && typeof record.error === 'string' ? record : undefined
  } catch {
    return undefined
  }
}
