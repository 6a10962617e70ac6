// SNI and option host names, normalised the way a certificate names them, or refused.
import { domainToASCII } from 'node:url'
import { isIP } from 'node:net'

const LABEL = /^(?!-)[a-z0-9-]{1,63}(?<!-)$/
// Characters with a meaning in URL syntax: domainToASCII would cut the name at
// them ('example.com/x' -> 'example.com'), so they are refused before it runs.
// eslint-disable-next-line no-control-regex -- control characters are exactly what it refuses
const URL_SYNTAX = /[\x00-\x20\x7f/\\?#@:%[\]]/

/**
 * Normalises a host name the way a certificate names it: lower case, no
 * trailing dot, internationalised names as punycode. Returns `undefined` for
 * anything that is not a plain DNS name a CA would issue for: IP addresses,
 * wildcards, empty or over-long labels, and every character outside
 * [a-z0-9-.] after conversion. The result is safe to use as a store key.
 */
export function normalizeName (raw: string): string | undefined {
  if (typeof raw !== 'string' || raw.length === 0 || raw.length > 255) return undefined
  let name = raw.endsWith('.') ? raw.slice(0, -1) : raw
  if (isIP(name) !== 0 || URL_SYNTAX.test(name)) return undefined
  // domainToASCII lower-cases, maps Unicode to punycode and returns '' for names
  // WHATWG URL parsing rejects; the label check below does the rest.
  if (!/^[a-z0-9.-]+$/.test(name)) name = domainToASCII(name)
  if (name.length === 0 || name.length > 253) return undefined
  const labels = name.split('.')
  if (labels.length < 2 || !labels.every((l) => LABEL.test(l))) return undefined
  // A numeric top-level label is an IPv4 address in disguise (e.g. 1.2.3.0x4).
  if (/^[0-9]+$/.test(labels[labels.length - 1])) return undefined
  return name
}
