// The wait for a held lock that the built-in stores share.
import { linkSignals, sleep } from '../signals'
import type { LockOptions } from './store'

// A waiter tries again about once a second; the jitter spreads waiters out.
const RETRY_MS = 800
const RETRY_JITTER_MS = 400

/** One try at a backend's lock: taken, worth trying again at once (a stale lock was cleared, say), or held by someone else. */
export type LockTry = 'taken' | 'again' | 'held'

export interface PollLockOptions extends Pick<LockOptions, 'onWait'> {
  /** One try; rejecting ends the wait with that error. */
  attempt: (signal: AbortSignal) => Promise<LockTry>
  /** The holder recorded with the lock, if any; read only when someone waits (onWait). */
  readHolder: (signal: AbortSignal) => Promise<string | undefined>
  /** The caller's signal and the store's own (aborted by close()): the first to abort ends the wait. */
  signal: AbortSignal | undefined
  closing: AbortSignal
}

/**
 * The wait for a store lock that the built-in backends share: try, and while
 * someone else holds it, report who (onWait, again when the holder seen
 * changes) and try again after about a second. Resolves once `attempt` has
 * taken it and neither signal has aborted; a backend whose attempt took the
 * lock as a signal aborted frees it in its own catch.
 */
export async function pollLock (options: PollLockOptions): Promise<void> {
  const { attempt, readHolder, onWait } = options
  options.signal?.throwIfAborted()
  options.closing.throwIfAborted()
  const wait = linkSignals(options.signal, options.closing)
  let reported = false
  let seen: string | undefined
  try {
    for (;;) {
      const result = await attempt(wait.signal)
      if (result === 'taken') return
      if (result === 'again') continue
      if (onWait !== undefined) {
        // Best effort, one read per retry while waiting: the holder as it recorded itself.
        const current = await readHolder(wait.signal).catch(() => undefined)
        if (!reported || current !== seen) onWait(current)
        reported = true
        seen = current
      }
      await sleep(RETRY_MS + Math.random() * RETRY_JITTER_MS, wait.signal)
    }
  } finally {
    wait.dispose()
  }
}
