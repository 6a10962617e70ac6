// The fleet's failure records: the backoff every instance follows.
import type { Clock } from '../clock'
import { CLOCK_TOLERANCE } from './budget'
import { errorMessage } from '../events'
import { DEFAULT_RETRY_DELAYS, retryDelay } from '../renewal'
import { storeKeys } from '../store/keys'
import { readRecord, type CertStore } from '../store/store'

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

  constructor (store: CertStore, retryDelays: readonly number[] | undefined, clock: Clock) {
    this.#store = store
    this.#delays = retryDelays
    this.#clock = clock
  }

  /**
   * The record of `certificateKey`; unreadable data counts as none, a store
   * failure rejects. So does an implausible record, one that no instance of
   * this fleet could have written: failed in the future (beyond
   * CLOCK_TOLERANCE), or a retry further away than the longest backoff step.
   * A record planted to stop a name's orders for a year is ignored, and
   * replaced at the next failure.
   */
  async read (certificateKey: string): Promise<FailureRecord | undefined> {
    const record = parse(await readRecord(this.#store, storeKeys.failure(certificateKey)))
    const now = this.#clock.now()
    const longest = Math.max(...(this.#delays ?? DEFAULT_RETRY_DELAYS))
    return record !== undefined && record.at <= now + CLOCK_TOLERANCE && record.retryAt <= now + longest + CLOCK_TOLERANCE ? record : undefined
  }

  /**
   * Counts one more failure of `certificateKey` and stores it unless the lock
   * was lost (`lockSignal` aborted: the new holder's word counts then). Store
   * errors are ignored: the record is returned either way, for this instance's
   * own backoff.
   */
  async record (certificateKey: string, err: unknown, lockSignal: AbortSignal): Promise<FailureRecord> {
    const previous = await this.read(certificateKey).catch(() => undefined)
    const failures = (previous?.failures ?? 0) + 1
    const at = this.#clock.now()
    const record: FailureRecord = { failures, error: errorMessage(err), at, retryAt: at + retryDelay(failures, this.#delays) }
    if (!lockSignal.aborted) await this.#store.put(storeKeys.failure(certificateKey), JSON.stringify(record)).catch(() => {})
    return record
  }

  /** Forgets the failures of `certificateKey` (it has a certificate now); best effort. */
  async clear (certificateKey: string): Promise<void> {
    await this.#store.delete(storeKeys.failure(certificateKey)).catch(() => {})
  }
}

function parse (data: Buffer | undefined): FailureRecord | undefined {
  if (data === undefined) return undefined
  try {
    const record = JSON.parse(data.toString('utf8')) as FailureRecord
    return Number.isFinite(record.retryAt) && Number.isFinite(record.at) && Number.isInteger(record.failures) && typeof record.error === 'string' ? record : undefined
  } catch {
    return undefined
  }
}
