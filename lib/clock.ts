// Time as the manager reads it, so that tests can move it.
/** The system's time by default; the unit tier's moves by hand, so hours of backoff, budget and renewal take seconds. */
export interface Clock {
  /** Milliseconds since the epoch, as Date.now(). */
  now (): number
  /** Calls `fn` after `ms`; the timer never holds the process open. */
  setTimeout (fn: () => void, ms: number): Timer
  clearTimeout (timer: Timer | undefined): void
}

/** A timer handle, opaque to its user. */
export type Timer = object

// setTimeout fires at once past 2^31-1 ms (24.8 days): longer waits are taken in steps.
const MAX_TIMER = 2 ** 31 - 1

export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout (fn, ms) {
    const handle: { timer?: NodeJS.Timeout } = {}
    const at = Date.now() + ms
    const arm = (): void => {
      const wait = Math.max(0, at - Date.now())
      handle.timer = setTimeout(wait > MAX_TIMER ? arm : fn, Math.min(wait, MAX_TIMER)).unref()
    }
    arm()
    return handle
  },
  clearTimeout (timer) {
    const pending = (timer as { timer?: NodeJS.Timeout } | undefined)?.timer
    // Node frees the list it keeps per timeout length, once emptied, only for a referenced timer: an unreferenced one
    // cleared long before its time left that list behind until then, about 150 bytes for every distinct length. Each
    // name refused for the budget gets a retry time of its own, an hour away: a flood of new names kept them by the
    // hundred thousand. Referenced again first (no event-loop turn between), it is cleared with its list.
    pending?.ref()
    clearTimeout(pending)
  }
}

/** An AbortSignal that aborts `ms` after now on `clock`, with a TimeoutError as AbortSignal.timeout() does. */
export function timeoutSignal (clock: Clock, ms: number): { signal: AbortSignal, dispose: () => void } {
  const controller = new AbortController()
  const timer = clock.setTimeout(() => {
    controller.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError'))
  }, ms)
  return { signal: controller.signal, dispose: () => clock.clearTimeout(timer) }
}
