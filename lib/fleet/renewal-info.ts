// The fleet's renewal information (RFC 9773 windows), one record per certificate key in the store.
import { RENEWAL_INFO_INTERVALS, type RenewalWindow } from '../acme/ari'
import type { Clock } from '../clock'
import type { Logger } from '../events'
import { CorruptLog } from '../store/corrupt-log'
import { storeKeys, storeLimits } from '../store/keys'
import { readRecord, type CertStore } from '../store/store'
import { CLOCK_TOLERANCE } from './budget'

/**
 * What the fleet knows of the CA's window for the certificate it serves under
 * one key, kept in the store under `<certificate key>+ari` so that one
 * instance asks the CA and the others read the answer.
 */
export interface RenewalInfoRecord {
  /** The certificate the record is about (upper-case hex): a record of another serial is stale. */
  serial: string
  /** The CA's window; absent while the CA has given none (the lifetime rule applies then). */
  window?: RenewalWindow
  /** The fleet's renewal time in `window`, drawn once, at random, when the window was first seen (ms since the epoch). */
  renewAt?: number
  /** When an instance last asked the CA (ms since the epoch). */
  checkedAt: number
  /** When the CA is asked again (ms since the epoch): its Retry-After, within RENEWAL_INFO_INTERVALS. */
  nextCheck: number
  /**
   * How this certificate came to be, when it replaced one in the window the CA
   * gave for it: that window (the same answer about this certificate is the
   * CA's stale word, not a reason to order again) and, when that order was
   * exempt from the order budget, when it was placed.
   */
  origin?: { start: number, end: number, exemptAt?: number }
}

/** The fleet's renewal-information records: read (checked), written. */
export class RenewalInfoRecords {
  readonly #store: CertStore
  readonly #clock: Clock
  readonly #corrupt: CorruptLog

  constructor (store: CertStore, clock: Clock, log: Logger) {
    this.#store = store
    this.#clock = clock
    this.#corrupt = new CorruptLog(log, 'ignoring unusable renewal information')
  }

  /**
   * The record of `certificateKey`; unusable data counts as none (and is
   * replaced at the next check), a store failure rejects. Unusable: over
   * storeLimits.renewalInfo, malformed, or one no instance of the fleet could
   * have written: checked in the future or asking for no check for longer than
   * RENEWAL_INFO_INTERVALS.max (beyond CLOCK_TOLERANCE), or a renewal time
   * outside its window. A record planted to put a renewal off cannot put off
   * the next look at the CA by more than 12 hours.
   */
  async read (certificateKey: string): Promise<RenewalInfoRecord | undefined> {
    const now = this.#clock.now()
    const plausible = (data: Buffer): RenewalInfoRecord | undefined => {
      const record = parse(data)
      return record !== undefined && record.checkedAt <= now + CLOCK_TOLERANCE &&
        record.nextCheck <= now + RENEWAL_INFO_INTERVALS.max + CLOCK_TOLERANCE
        ? record
        : undefined
    }
    return await readRecord(this.#store, storeKeys.renewalInfo(certificateKey), storeLimits.renewalInfo, plausible, this.#corrupt)
  }

  async write (certificateKey: string, record: RenewalInfoRecord): Promise<void> {
    await this.#store.put(storeKeys.renewalInfo(certificateKey), JSON.stringify(record))
  }
}

function parse (data: Buffer): RenewalInfoRecord | undefined {
  let value: Partial<RenewalInfoRecord>
  try {
    value = JSON.parse(data.toString('utf8')) as Partial<RenewalInfoRecord>
  } catch {
    return undefined
  }
  const { serial, window, renewAt, checkedAt, nextCheck, origin } = value ?? {}
  if (typeof serial !== 'string' || !/^[0-9A-F]{1,64}$/.test(serial) || !isTime(checkedAt) || !isTime(nextCheck)) return undefined
  if (window !== undefined && !(isTime(window?.start) && isTime(window.end) && window.start <= window.end &&
      (window.explanationURL === undefined || typeof window.explanationURL === 'string'))) return undefined
  if (renewAt !== undefined && !(window !== undefined && isTime(renewAt) && renewAt >= window.start && renewAt <= window.end)) return undefined
  if (origin !== undefined && !(isTime(origin?.start) && isTime(origin.end) && (origin.exemptAt === undefined || isTime(origin.exemptAt)))) return undefined
  return { serial, window, renewAt, checkedAt, nextCheck, origin }
}

function isTime (value: unknown): value is number {
  return typeof value === 'number' && Number.isFinite(value)
}
