// A lock a built-in store holds: refreshed, and released once.
import type { Lock } from './store'

export interface HeldLockOptions {
  /** Name of the lock, for the reason given when it is lost. */
  key: string
  /** How often `refresh` runs (ms). */
  intervalMs: number
  /** Keeps the lock alive (renews a lease, touches a file); a rejection means it is lost. */
  refresh: () => Promise<void>
  /** Gives the lock up; its errors are ignored (a lost lock lapses by itself). */
  free: () => Promise<void>
  /** What a lost lock means, for the signal's reason. */
  lost: string
  /** Called once on release, so the store stops tracking the lock. */
  forget: () => void
}

/**
 * A lock a store holds: refreshed on an unref'd interval, its signal aborted
 * the first time a refresh fails. release() stops the refreshes, waits for one
 * in flight (it must not reach the backend after the release), then frees it.
 */
export class HeldLock implements Lock {
  readonly #controller = new AbortController()
  readonly signal: AbortSignal = this.#controller.signal
  readonly #opts: HeldLockOptions
  readonly #timer: NodeJS.Timeout
  #refreshing: Promise<void> | undefined
  #released: Promise<void> | undefined

  constructor (opts: HeldLockOptions) {
    this.#opts = opts
    this.#timer = setInterval(() => {
      this.#refreshing = opts.refresh().then(() => {}, (err: unknown) => {
        clearInterval(this.#timer)
        this.#controller.abort(new Error(`lock "${opts.key}" lost: ${opts.lost}`, { cause: err }))
      })
    }, opts.intervalMs)
    this.#timer.unref()
  }

  release (): Promise<void> {
    this.#released ??= (async () => {
      clearInterval(this.#timer)
      this.#opts.forget()
      await this.#refreshing
      await this.#opts.free().catch(() => {})
    })()
    return this.#released
  }

  /** Aborts the signal with `reason`, then releases (the store is closing). */
  drop (reason: Error): Promise<void> {
    this.#controller.abort(reason)
    return this.release()
  }
}
