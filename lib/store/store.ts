// The storage contract every store implements, the lock included.
import { FST_AUTOCERT_CORRUPT } from '../errors'
import type { CorruptLog } from './corrupt-log'

/**
 * The storage contract. Every instance of a cluster points at the same store:
 * it holds certificates, the ACME account key, pending HTTP-01 answers, failure
 * records and the per-name locks that make one order per domain.
 *
 * Keys are plain strings built by the plugin (`example.com`, `acme_account+key`,
 * `<token>+http-01`, ...): only normalised host names, base64url tokens and fixed
 * suffixes, never raw client input. They follow Go autocert's cache keys, so a
 * container written by autocert + azcertcache can be read by this plugin.
 */
export interface CertStore {
  /**
   * The stored bytes, or `undefined` when the key does not exist. Any other
   * failure throws: an outage is never a miss. A value larger than
   * `options.maxBytes` is not transferred: it rejects with FST_AUTOCERT_CORRUPT
   * (see GetOptions).
   */
  get (key: string, options?: GetOptions): Promise<Buffer | undefined>
  /**
   * Writes the whole value in one call, replacing what was there, its
   * metadata included: `options.metadata` is kept with the value when the
   * store can (see entries()), and a write without it leaves none.
   */
  put (key: string, value: Buffer | string, options?: PutOptions): Promise<void>
  /** Removes the key; removing a missing key is not an error. */
  delete (key: string): Promise<void>
  /** Keys that start with `prefix` (all keys when omitted), in no particular order. */
  list (prefix?: string): Promise<string[]>
  /**
   * Like list(), with the metadata each value was written with (PutOptions),
   * read in pages without transferring a value: how the plugin learns the
   * state of many certificates at start-up. Optional: without it, or for a
   * value written without metadata, the plugin reads the value itself.
   */
  entries? (prefix?: string): AsyncIterable<StoreEntry>
  /**
   * Takes the exclusive lock named `key` for the whole cluster, waiting while
   * another holder has it. Locks held by a crashed process lapse by themselves.
   * Rejects with the signal's reason when `signal` aborts first.
   */
  lock (key: string, signal?: AbortSignal, options?: LockOptions): Promise<Lock>
  /**
   * The state of the lock named `key`, read without taking it or waiting, for
   * operators (`fastify-autocert list`). Optional: a store without it reports
   * no lock state. Resolves `undefined` when the store cannot tell (a wrapper
   * around a store without it).
   */
  lockState? (key: string): Promise<LockState | undefined>
  /** Frees what the store owns (timers, clients). Locks still held are released. */
  close? (): Promise<void>
}

/** How a value is read. */
export interface GetOptions {
  /**
   * The largest value the caller accepts, in bytes (the plugin passes its
   * storeLimits). A larger value is never transferred whole: the store learns
   * its size before reading its body (Azure: a range request of `maxBytes + 1`
   * bytes and the size the answer reports; files: fstat of the open file) and
   * rejects with FST_AUTOCERT_CORRUPT, whose message gives the size and the
   * limit, never the data. A store of your own may ignore it: the plugin checks
   * the length of what it gets (readBounded), but the transfer and the memory
   * are then the store's.
   */
  maxBytes?: number
}

/** How a value is written. */
export interface PutOptions {
  /**
   * A few short fields kept with the value, readable without it (entries()):
   * names of lower-case letters, digits and '_', starting with a letter;
   * printable ASCII values. A store may drop them; it must not alter them.
   */
  metadata?: Record<string, string>
}

/** A key with the metadata its value was written with (none: `undefined`). */
export interface StoreEntry {
  key: string
  metadata?: Record<string, string>
}

/** What a lock records and reports, for operators (status() and the `lock-wait` event). A store may ignore it. */
export interface LockOptions {
  /** Who takes the lock (the plugin's instanceId), recorded with it while held. */
  holder?: string
  /**
   * Called when the lock is found held by someone else, with its recorded
   * holder if known, and again while waiting whenever the holder seen changes
   * (a holder may record itself a moment after it took the lock).
   */
  onWait?: (holder: string | undefined) => void
}

/** A lock as seen from outside (CertStore.lockState). */
export interface LockState {
  /**
   * `held`: someone holds it now. `free`: nobody does. `stale`: a lock its
   * holder left behind without holding it any more (a crashed process's lapsed
   * lease or unrefreshed lock file): the next lock() takes it over at once.
   */
  state: 'held' | 'free' | 'stale'
  /** The holder recorded with it (LockOptions.holder), when known. */
  holder?: string
}

export interface Lock {
  /**
   * Aborts when the lock can no longer be guaranteed (its lease could not be
   * renewed). Work done under the lock checks it before every write.
   */
  readonly signal: AbortSignal
  /** Releases the lock. Never throws; releasing twice is a no-op. */
  release (): Promise<void>
}

/**
 * The key rule of the built-in stores, so a key that works with one works with
 * all: non-empty, no '/', '\\', NUL or '..', no leading '.' (the stores' own files).
 */
export function checkKey (key: string): string {
  if (typeof key !== 'string' || key === '' || key.startsWith('.') || /[/\\\0]|\.\./.test(key)) {
    throw new TypeError(`invalid store key ${JSON.stringify(key)}: keys are plain names without '/', '\\', '..', NUL or a leading '.'`)
  }
  return key
}

/** The methods every store has. */
export const STORE_METHODS = ['get', 'put', 'delete', 'list', 'lock'] as const

/** True when `value` implements the store contract (used to validate options). */
export function isCertStore (value: unknown): value is CertStore {
  return typeof value === 'object' && value !== null &&
    STORE_METHODS.every((m) => typeof (value as Record<string, unknown>)[m] === 'function')
}

/** The error of a value over its kind's limit (GetOptions.maxBytes): the size and the limit, never the data. */
export function oversized (key: string, size: number, maxBytes: number): Error {
  return new FST_AUTOCERT_CORRUPT(key, `${size} bytes, over the limit of ${maxBytes} bytes for this kind of value`)
}

/**
 * Reads `key` as every reader of the plugin does: the store is asked not to
 * transfer more than `maxBytes` (its kind's storeLimits), and the length of
 * what comes back is checked, since a store of the user's own may ignore that.
 * Over the limit: FST_AUTOCERT_CORRUPT.
 */
export async function readBounded (store: CertStore, key: string, maxBytes: number): Promise<Buffer | undefined> {
  const value = await store.get(key, { maxBytes })
  if (value !== undefined && value.length > maxBytes) throw oversized(key, value.length, maxBytes)
  return value
}

/**
 * Reads a record the plugin writes as a whole (a failure record, the order log,
 * an HTTP-01 answer), bounded by `maxBytes`. Unusable data (over the limit, not
 * opening, or refused by `parse`, which returns undefined for it) counts as none
 * and is reported to `corrupt`, which logs it once; a store failure throws.
 */
export async function readRecord<T> (
  store: CertStore, key: string, maxBytes: number, parse: (data: Buffer) => T | undefined, corrupt: CorruptLog
): Promise<T | undefined> {
  let record: T | undefined
  try {
    const data = await readBounded(store, key, maxBytes)
    if (data === undefined) return undefined
    record = parse(data)
    if (record === undefined) throw new FST_AUTOCERT_CORRUPT(key, 'it is not a record the plugin writes')
  } catch (err) {
    if (!isCorrupt(err)) throw err
    corrupt.report(key, err)
    return undefined
  }
  corrupt.usable(key)
  return record
}

/** True for FST_AUTOCERT_CORRUPT: stored data that is unusable (never served, replaced by the next write). */
export function isCorrupt (err: unknown): boolean {
  return (err as { code?: unknown } | undefined)?.code === 'FST_AUTOCERT_CORRUPT'
}
