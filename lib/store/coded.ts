// Every store failure as FST_AUTOCERT_STORE_FAILED, whichever store raised it.
import { FST_AUTOCERT_STORE_FAILED } from '../errors'
import { errorCode, errorMessage } from '../events'
import type { CertStore, GetOptions, Lock, LockOptions, LockState, PutOptions, StoreEntry } from './store'

/**
 * Wraps the store the plugin uses, so that whatever fails in it (an Azure
 * RestError, a timeout, a file system error, a user store's own error) reaches
 * logs, events and callers as FST_AUTOCERT_STORE_FAILED, the operation and key
 * in its message and the store's error as its `cause`. The plugin's own coded
 * errors (FST_AUTOCERT_CORRUPT, FST_AUTOCERT_STORE_AUTH...) and the reason of
 * an aborted signal pass as they are.
 */
export class CodedStore implements CertStore {
  readonly #inner: CertStore

  constructor (inner: CertStore) {
    this.#inner = inner
  }

  get (key: string, options?: GetOptions): Promise<Buffer | undefined> {
    return coded(this.#inner.get(key, options), `read ${key}`)
  }

  put (key: string, value: Buffer | string, options?: PutOptions): Promise<void> {
    return coded(this.#inner.put(key, value, options), `write ${key}`)
  }

  delete (key: string): Promise<void> {
    return coded(this.#inner.delete(key), `delete ${key}`)
  }

  list (prefix?: string): Promise<string[]> {
    return coded(this.#inner.list(prefix), `list ${prefix ?? 'all keys'}`)
  }

  get entries (): CertStore['entries'] {
    const inner = this.#inner
    if (inner.entries === undefined) return undefined
    return async function * (prefix?: string): AsyncIterable<StoreEntry> {
      const entries = (inner.entries as NonNullable<CertStore['entries']>).call(inner, prefix)[Symbol.asyncIterator]()
      for (;;) {
        const next = await coded(entries.next(), `list ${prefix ?? 'all keys'} with metadata`)
        if (next.done === true) return
        yield next.value
      }
    }
  }

  lock (key: string, signal?: AbortSignal, options?: LockOptions): Promise<Lock> {
    return coded(this.#inner.lock(key, signal, options), `lock ${key}`, signal)
  }

  async lockState (key: string): Promise<LockState | undefined> {
    return this.#inner.lockState === undefined ? undefined : await coded(this.#inner.lockState(key), `read the lock ${key}`)
  }

  async close (): Promise<void> {
    await this.#inner.close?.()
  }
}

async function coded<T> (work: Promise<T>, what: string, signal?: AbortSignal): Promise<T> {
  try {
    return await work
  } catch (err) {
    if ((signal?.aborted === true && err === signal.reason) || errorCode(err)?.startsWith('FST_AUTOCERT_') === true) throw err
    throw Object.assign(new FST_AUTOCERT_STORE_FAILED(what, errorMessage(err)), { cause: err })
  }
}
