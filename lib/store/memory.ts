// The in-process store, for tests.
import { untilAborted } from '../signals'
import { checkKey, oversized, type CertStore, type GetOptions, type Lock, type LockOptions, type LockState, type PutOptions, type StoreEntry } from './store'

/**
 * A store in process memory: for tests and single-process experiments. It keeps
 * nothing across restarts, so in production every restart would order again.
 */
export class MemoryStore implements CertStore {
  readonly #data = new Map<string, { value: Buffer, metadata?: Record<string, string> }>()
  // The tail of each lock's queue: a new holder waits for the previous one to release.
  readonly #locks = new Map<string, Promise<void>>()
  // Per key: lock() calls not yet released (holder and waiters), and the holder's record.
  readonly #pending = new Map<string, number>()
  readonly #holders = new Map<string, { holder?: string }>()

  async get (key: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    const value = this.#data.get(checkKey(key))?.value
    if (value === undefined) return undefined
    if (options.maxBytes !== undefined && value.length > options.maxBytes) throw oversized(key, value.length, options.maxBytes)
    return Buffer.from(value)
  }

  async put (key: string, value: Buffer | string, { metadata }: PutOptions = {}): Promise<void> {
    this.#data.set(checkKey(key), { value: Buffer.from(value), ...(metadata === undefined ? {} : { metadata: { ...metadata } }) })
  }

  async delete (key: string): Promise<void> {
    this.#data.delete(checkKey(key))
  }

  async list (prefix = ''): Promise<string[]> {
    return [...this.#data.keys()].filter((k) => k.startsWith(prefix))
  }

  async * entries (prefix = ''): AsyncIterable<StoreEntry> {
    for (const [key, { metadata }] of [...this.#data]) {
      if (key.startsWith(prefix)) yield { key, ...(metadata === undefined ? {} : { metadata: { ...metadata } }) }
    }
  }

  async lock (key: string, signal?: AbortSignal, options: LockOptions = {}): Promise<Lock> {
    signal?.throwIfAborted()
    const pending = this.#pending.get(key) ?? 0
    if (pending > 0) options.onWait?.(this.#holders.get(key)?.holder)
    this.#pending.set(key, pending + 1)
    const settle = (): void => {
      const left = (this.#pending.get(key) ?? 1) - 1
      if (left === 0) this.#pending.delete(key)
      else this.#pending.set(key, left)
    }
    const previous = this.#locks.get(key) ?? Promise.resolve()
    let release!: () => void
    const released = new Promise<void>((resolve) => { release = resolve })
    const tail = previous.then(() => released)
    this.#locks.set(key, tail)
    void tail.then(() => { if (this.#locks.get(key) === tail) this.#locks.delete(key) })
    // A waiter that gives up still takes its turn in the queue and passes it on at once.
    const abandon = (): void => release()
    signal?.addEventListener('abort', abandon, { once: true })
    try {
      await untilAborted(previous, signal)
    } catch (err) {
      settle()
      throw err
    } finally {
      signal?.removeEventListener('abort', abandon)
    }
    const record = { holder: options.holder }
    this.#holders.set(key, record)
    const controller = new AbortController()
    let done = false
    return {
      signal: controller.signal,
      release: async () => {
        if (done) return
        done = true
        if (this.#holders.get(key) === record) this.#holders.delete(key)
        settle()
        release()
      }
    }
  }

  async lockState (key: string): Promise<LockState> {
    const record = this.#holders.get(checkKey(key))
    if (record === undefined) return { state: 'free' }
    return record.holder === undefined ? { state: 'held' } : { state: 'held', holder: record.holder }
  }
}
