// Abort-signal helpers shared by the stores and the manager.
import { setTimeout as delay } from 'node:timers/promises'

export interface LinkedSignal {
  signal: AbortSignal
  dispose: () => void
}

/**
 * An AbortSignal that aborts with the first of `a` and `b` (at once when one
 * has aborted already); dispose() removes the listeners (AbortSignal.any keeps
 * them on the long-lived one).
 */
export function linkSignals (a: AbortSignal | undefined, b: AbortSignal): LinkedSignal {
  if (a === undefined) return { signal: b, dispose: () => {} }
  const first = [a, b].find((s) => s.aborted)
  if (first !== undefined) return { signal: AbortSignal.abort(first.reason), dispose: () => {} }
  const controller = new AbortController()
  const onA = (): void => controller.abort(a.reason)
  const onB = (): void => controller.abort(b.reason)
  a.addEventListener('abort', onA, { once: true })
  b.addEventListener('abort', onB, { once: true })
  return {
    signal: controller.signal,
    dispose: () => {
      a.removeEventListener('abort', onA)
      b.removeEventListener('abort', onB)
    }
  }
}

/**
 * Settles with `promise`, or rejects with the signal's reason as soon as it
 * aborts (at once when it has already). `promise` is observed either way: its
 * later rejection is nobody's unhandled rejection.
 */
export function untilAborted<T> (promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (signal === undefined) return promise
  if (signal.aborted) {
    promise.catch(() => {})
    return Promise.reject(signal.reason)
  }
  return new Promise((resolve, reject) => {
    const onAbort = (): void => reject(signal.reason)
    signal.addEventListener('abort', onAbort, { once: true })
    promise.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort))
  })
}

/** Waits `ms` without holding the process open; rejects with the signal's reason on abort. */
export function sleep (ms: number, signal: AbortSignal): Promise<void> {
  return delay(ms, undefined, { signal, ref: false }).catch(() => { throw signal.reason })
}
