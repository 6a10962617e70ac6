// ACME Renewal Information (RFC 9773): a certificate's identifier, the CA's window, and when to ask again.
import { AuthorityKeyIdentifierExtension, X509Certificate } from '@peculiar/x509'

const MINUTE = 60_000
const HOUR = 60 * MINUTE

/** A renewal window the CA suggests for one certificate (ms since the epoch). */
export interface RenewalWindow {
  start: number
  end: number
  /** A page the CA links to explain why the window is where it is (an incident, a revocation). */
  explanationURL?: string
}

/** The CA's answer for one certificate: its window and when it asks to be asked again (ms, as the CA said it). */
export interface RenewalInfo {
  window: RenewalWindow
  retryAfter?: number
}

/**
 * How often the renewal information of a certificate is asked for, whatever
 * the CA's `Retry-After` says: never sooner than a minute after the last
 * answer, never later than 12 hours (Let's Encrypt asks for at least twice a
 * day). Without a `Retry-After`, 6 hours; after a failed request, an hour.
 */
export const RENEWAL_INFO_INTERVALS = {
  min: MINUTE,
  max: 12 * HOUR,
  fallback: 6 * HOUR,
  afterFailure: HOUR
} as const

/** An explanationURL longer than this is dropped: a URL, not a document. */
const URL_CHARS = 2000

/**
 * The certificate's ARI identifier (RFC 9773 section 4.1): base64url of the
 * Authority Key Identifier's keyIdentifier, a dot, base64url of the serial
 * number's DER content (with the leading zero byte a serial with its top bit set
 * takes in DER). `leaf` is the PEM of the certificate (the first of a chain).
 * Throws when the certificate has no keyIdentifier.
 */
export function certificateId (leaf: string): string {
  const cert = new X509Certificate(leaf)
  const keyId = cert.getExtension(AuthorityKeyIdentifierExtension)?.keyId
  if (keyId === undefined) throw new Error('the certificate has no authority key identifier: no renewal information can be asked for it')
  const hex = cert.serialNumber
  const serial = Buffer.from(hex.length % 2 === 1 ? `0${hex}` : hex, 'hex')
  const der = serial[0] >= 0x80 ? Buffer.concat([Buffer.from([0]), serial]) : serial
  return `${Buffer.from(keyId, 'hex').toString('base64url')}.${der.toString('base64url')}`
}

/**
 * The leaf's authority key identifier (hex): which issuing certificate, hence
 * which CA, signed it; undefined when it has none or does not parse.
 */
export function authorityKeyId (leaf: string): string | undefined {
  try {
    return new X509Certificate(leaf).getExtension(AuthorityKeyIdentifierExtension)?.keyId
  } catch {
    return undefined
  }
}

/**
 * The CA's answer, checked: a `suggestedWindow` with a start no later than its
 * end; an https explanationURL or none. `retryAfter`: the answer's
 * Retry-After (ms), passed on. Throws on anything else.
 */
export function parseRenewalInfo (body: unknown, retryAfter: number | undefined): RenewalInfo {
  const window = (body as { suggestedWindow?: { start?: unknown, end?: unknown } } | undefined)?.suggestedWindow
  const start = Date.parse(String(window?.start))
  const end = Date.parse(String(window?.end))
  if (!(Number.isFinite(start) && Number.isFinite(end) && start <= end)) throw new Error('the CA\'s renewal information has no usable suggestedWindow')
  const explanationURL = httpsUrl((body as { explanationURL?: unknown }).explanationURL)
  return { window: { start, end, ...(explanationURL === undefined ? {} : { explanationURL }) }, retryAfter }
}

/** When to ask again, `retryAfter` ms after `now` as the CA asked, within RENEWAL_INFO_INTERVALS. */
export function nextCheckTime (now: number, retryAfter: number | undefined): number {
  const { min, max, fallback } = RENEWAL_INFO_INTERVALS
  return now + Math.min(max, Math.max(min, retryAfter ?? fallback))
}

/** Where in `window` a certificate is renewed: uniformly at random, as RFC 9773 asks. */
export function renewalPoint (window: RenewalWindow, random = Math.random): number {
  return window.start + random() * (window.end - window.start)
}

/** Two answers name the same window. */
export function sameWindow (a: Pick<RenewalWindow, 'start' | 'end'> | undefined, b: Pick<RenewalWindow, 'start' | 'end'> | undefined): boolean {
  return a !== undefined && b !== undefined && a.start === b.start && a.end === b.end
}

function httpsUrl (value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > URL_CHARS) return undefined
  try {
    return new URL(value).protocol === 'https:' ? value : undefined
  } catch {
    return undefined
  }
}
