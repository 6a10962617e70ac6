// This process's takers of one store lock, queued in memory.
import { untilAborted } from '../signals'
import type { Lock } from '../store/store'

/**
 * Each taker gets the store lock after the one before released it, so they
 * wait here, in memory, instead of polling the store (a built-in store's
 * waiter looks about once a second).
 */
export class LockQueue {
  #last: Promise<void> = Promise.resolve()

  /** The store lock `acquire()` gets, once this process's earlier takers released theirs; rejects with `signal`'s reason if it aborts first. */
  async take (acquire: () => Promise<Lock>, signal: AbortSignal): Promise<Lock> {
    const previous = this.#last
    let pass!: () => void
    this.#last = new Promise<void>((resolve) => { pass = resolve })
    try {
      await untilAborted(previous, signal)
      const held = await acquire()
      return { signal: held.signal, release: async () => { await held.release(); pass() } }
    } catch (err) {
      pass()
      throw err
    }
  }
}
