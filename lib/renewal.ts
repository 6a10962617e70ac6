// When to renew, and how long to wait after failures.
const MINUTE = 60_000
const HOUR = 60 * MINUTE
const DAY = 24 * HOUR

/**
 * Failure backoff, in milliseconds: the wait before the next attempt after n
 * consecutive failures is `delays[n - 1]` (the last step repeats). The record
 * lives in the store, so the whole fleet follows one schedule. With these
 * steps a failing name is tried at 0, 1, 11, 31 and 61 minutes: 4 attempts in
 * any hour, under Let's Encrypt's 5 failed validations per host name per hour.
 */
export const DEFAULT_RETRY_DELAYS: readonly number[] =
  [MINUTE, 10 * MINUTE, 20 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 6 * HOUR]

/** Certificates that live less than this renew at half their lifetime, longer ones at a third (Let's Encrypt's advice). */
export const SHORT_LIFETIME = 10 * DAY

/**
 * When to renew a certificate valid from `notBefore` to `notAfter` (ms), by
 * its own lifetime, never by fixed days: when a third of it remains, or half of
 * it for a certificate of under 10 days (a 90-day certificate renews 30 days
 * before expiry, a 45-day one 15, a 160-hour one 80 hours). `renewBefore`
 * overrides that, capped at half the lifetime so a short certificate is not
 * renewed the moment it arrives. Each instance renews up to a tenth of that
 * window (at most an hour) earlier, at random, so a fleet does not race: the
 * first one renews, the others find its certificate in the store.
 */
export function renewalTime (notBefore: number, notAfter: number, renewBefore?: number, random = Math.random): number {
  const lifetime = Math.max(0, notAfter - notBefore)
  const before = Math.min(renewBefore ?? (lifetime < SHORT_LIFETIME ? lifetime / 2 : lifetime / 3), lifetime / 2)
  return notAfter - before - random() * Math.min(HOUR, before / 10)
}

/** The wait after `failures` consecutive failures (failures >= 1). */
export function retryDelay (failures: number, delays: readonly number[] = DEFAULT_RETRY_DELAYS): number {
  return delays[Math.min(Math.max(failures, 1), delays.length) - 1]
}
