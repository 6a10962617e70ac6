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

/** True for a listed wildcard, `*.<name>`: it covers the names one label below `<name>`. */
export function isWildcard (name: string): boolean {
  return name.startsWith('*.')
}

/** True for an IP address (as normalizeListed() returns them). */
export function isAddress (name: string): boolean {
  return isIP(name) !== 0
}

/**
 * The wildcard that would cover `name` (`a.example.com` -> `*.example.com`),
 * or undefined when `name` has fewer than three labels: a wildcard covers one
 * label, and never a top-level domain's children.
 */
export function wildcardOf (name: string): string | undefined {
  const dot = name.indexOf('.')
  return dot > 0 && name.indexOf('.', dot + 1) > 0 ? `*${name.slice(dot)}` : undefined
}

/**
 * An IP address in its canonical form (IPv4 dotted decimal; IPv6 as RFC 5952
 * writes it: lower case, the longest run of zero groups compressed), or
 * undefined. IPv4 with leading zeros is refused rather than guessed at: some
 * parsers read `010` as octal. Zone indexes (`fe80::1%eth0`) are refused.
 */
export function normalizeAddress (raw: string): string | undefined {
  if (typeof raw !== 'string') return undefined
  const bare = raw.startsWith('[') && raw.endsWith(']') ? raw.slice(1, -1) : raw
  const family = isIP(bare)
  if (family === 4) return bare
  if (family !== 6 || bare.includes('%')) return undefined
  // WHATWG URL serialises an IPv6 host the RFC 5952 way.
  return new URL(`http://[${bare}]/`).hostname.slice(1, -1)
}

/**
 * A name of options.domains, normalised: a host name (normalizeName), a
 * wildcard `*.<host name>` of at least two labels below the `*`, or an IP
 * address (normalizeAddress). Undefined for anything else.
 */
export function normalizeListed (raw: string): string | undefined {
  if (typeof raw !== 'string') return undefined
  if (raw.startsWith('*.')) {
    const base = normalizeName(raw.slice(2))
    return base === undefined ? undefined : `*.${base}`
  }
  return normalizeName(raw) ?? normalizeAddress(raw)
}

/**
 * The host a request's Host header names, normalised (a host name, an IPv4
 * address, or an IPv6 address written `[address]`), without its port;
 * undefined when it is none of these.
 */
export function normalizeHost (header: string | undefined): string | undefined {
  const host = header ?? ''
  if (host.startsWith('[')) {
    const end = host.indexOf(']')
    return end > 0 && /^(:\d{1,5})?$/.test(host.slice(end + 1)) ? normalizeAddress(host.slice(1, end)) : undefined
  }
  const bare = host.replace(/:\d{1,5}$/, '')
  return normalizeName(bare) ?? (isIP(bare) === 4 ? bare : undefined)
}

/**
 * The reverse-mapping name of an address (RFC 8738 section 6): the SNI a CA
 * sends when it validates an IP address with TLS-ALPN-01.
 * `192.0.2.1` -> `1.2.0.192.in-addr.arpa`; IPv6 by nibbles under `ip6.arpa`.
 */
export function reverseName (address: string): string {
  if (isIP(address) === 4) return `${address.split('.').reverse().join('.')}.in-addr.arpa`
  const [head, tail = ''] = address.split('::')
  const groups = (part: string): string[] => part === '' ? [] : part.split(':')
  const given = [...groups(head), ...groups(tail)].length
  const full = [...groups(head), ...Array<string>(8 - given).fill('0'), ...groups(tail)]
  return `${full.map((g) => g.padStart(4, '0')).join('').split('').reverse().join('.')}.ip6.arpa`
}

/** The address a reverse-mapping name stands for (the inverse of reverseName()), or undefined. */
export function addressOfReverse (name: string): string | undefined {
  const v4 = /^((?:\d{1,3}\.){3}\d{1,3})\.in-addr\.arpa$/.exec(name)
  if (v4 !== null) return normalizeAddress(v4[1].split('.').reverse().join('.'))
  const v6 = /^((?:[0-9a-f]\.){31}[0-9a-f])\.ip6\.arpa$/.exec(name)
  if (v6 === null) return undefined
  const hex = v6[1].split('.').reverse().join('')
  return normalizeAddress(hex.match(/.{4}/g)?.join(':') ?? '')
}
