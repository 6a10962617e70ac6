// The fleet's store locks as the plugin takes them: recorded as this instance's, reported while waited for, given up at a deadline.
import { timeoutSignal, type Clock } from '../clock'
import { FST_AUTOCERT_LOCK_TIMEOUT } from '../errors'
import type { Logger } from '../events'
import { linkSignals, untilAborted } from '../signals'
import type { CertStore, Lock } from '../store/store'
import type { LockQueue } from './lock-queue'

/** Which of the fleet's locks is waited for: a name's (one order per name), the order log's (the budget) or the account key's. */
export type LockKind = 'name' | 'order-log' | 'account'

export interface FleetLockOptions {
  store: CertStore
  /** This instance's id, recorded with every lock it holds. */
  holder: string
  /** How long a lock held by another instance is waited for (ms). */
  timeout: number
  clock: Clock
  log: Logger
}

/** Hears that a lock is held by someone else, with that holder if the store knows it. */
export type LockWaitListener = (holder: string | undefined) => void

export interface TakeOptions {
  /** This process's queue for the lock: its takers wait in memory for each other, not by polling the store. */
  queue?: LockQueue
  /** Called when the lock is found held by someone else, with its holder if the store knows it (again when it changes). */
  onWait?: LockWaitListener
}

/**
 * Takes the fleet's locks in one way, whichever it is: recorded as this
 * instance's, the holder reported to `onWait` while it is waited for, and
 * given up after `timeout` with FST_AUTOCERT_LOCK_TIMEOUT and a warning that
 * names the holder. A lease that is never released (a stuck or hostile
 * holder) costs an order one deadline, never the process's progress.
 */
export class FleetLocks {
  readonly #opts: FleetLockOptions

  constructor (opts: FleetLockOptions) {
    this.#opts = opts
  }

  /**
   * The lock named `key`; rejects with `signal`'s reason when it aborts first,
   * or FST_AUTOCERT_LOCK_TIMEOUT at the deadline. The deadline counts from
   * when the store is asked: a wait in `queue`, behind this process's own
   * takers (each bounded in turn), is not a wait for another holder.
   */
  async take (key: string, signal: AbortSignal, { queue, onWait }: TakeOptions = {}): Promise<Lock> {
    const acquire = (): Promise<Lock> => this.#acquire(key, signal, onWait)
    return await (queue === undefined ? acquire() : queue.take(acquire, signal))
  }

  async #acquire (key: string, signal: AbortSignal, onWait: LockWaitListener | undefined): Promise<Lock> {
    const { store, holder, timeout, clock, log } = this.#opts
    const deadline = timeoutSignal(clock, timeout)
    const wait = linkSignals(signal, deadline.signal)
    let seen: string | undefined
    const taking = store.lock(key, wait.signal, {
      holder,
      onWait: (current) => {
        // Written by whoever holds the lock, or by anyone who can write the container: shown as printable text only.
        seen = current === undefined ? undefined : printableHolder(current)
        onWait?.(seen)
      }
    })
    try {
      // Bounded even with a store that does not watch the signal; a lock it grants late is released.
      return await untilAborted(taking, wait.signal)
    } catch (err) {
      if (wait.signal.aborted) taking.then((late) => late.release(), () => {})
      if (err !== deadline.signal.reason || signal.aborted) throw err
      log.warn({ lock: key, holder: seen, waitedMs: timeout }, 'gave up waiting for a lock another holder keeps')
      throw new FST_AUTOCERT_LOCK_TIMEOUT(key, seen ?? 'an unknown holder', timeout)
    } finally {
      deadline.dispose()
      wait.dispose()
    }
  }
}

/** A holder as another instance (or a container writer) recorded it: printable ASCII, at most 128 characters, as instanceId is. */
export function printableHolder (holder: string): string {
  return holder.replace(/[^\x20-\x7e]/g, '?').slice(0, 128)
}
