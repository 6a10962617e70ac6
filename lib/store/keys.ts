// Every store key the plugin writes, built in one place.
import { createHash } from 'node:crypto'
import type { KeyType } from '../acme/issuer'

/**
 * Every key the plugin writes to a store, and nothing else: the store layout in
 * one place. The names are Go autocert's where it has one (`<name>`,
 * `<name>+rsa`, `<token>+http-01`, `acme_account+key`), so a container written
 * by autocert + azcertcache and one written by this plugin read alike. Keys are
 * built only from normalised host names, base64url tokens and fixed suffixes:
 * never from raw client input, never with a '/'.
 */
export const storeKeys = {
  /** A certificate and its private key (PEM bundle): `<name>` for ECDSA, `<name>+rsa` for RSA. */
  certificate: (name: string, keyType: KeyType): string => keyType === 'rsa' ? `${name}+rsa` : name,
  /** The fleet's failure record of one certificate key (JSON). */
  failure: (certificateKey: string): string => `${certificateKey}+failure`,
  /** The fleet's renewal information (RFC 9773 window, next check) of one certificate key (JSON). */
  renewalInfo: (certificateKey: string): string => `${certificateKey}+ari`,
  /** A pending HTTP-01 answer (JSON: domain and key authorization). */
  http01: (token: string): string => `${token}+http-01`,
  /** A pending TLS-ALPN-01 challenge certificate (PEM bundle): one per name at a time. */
  tlsAlpn01: (name: string): string => `${name}+tls-alpn-01`,
  /** The ACME account key (PEM) of the first CA, shared by the fleet; also the name of the lock taken to register it. */
  account: 'acme_account+key',
  /**
   * The account key of each further CA of a `directoryUrl` list, by its URL
   * (12 hex digits of its SHA-256): `acme_account+key+<hash>`. The first CA's is `account`.
   */
  accountOf: (directoryUrl: string): string => `acme_account+key+${createHash('sha256').update(directoryUrl).digest('hex').slice(0, 12)}`,
  /** The fleet's log of recent orders (JSON), and the name of its lock. */
  orderLog: 'acme_orders+log',
  /** Per-name order locks are named after the name itself. */
  nameLock: (name: string): string => name
} as const

/**
 * The name and key type a certificate key stands for (the inverse of
 * storeKeys.certificate), or `undefined` for every other key: the account
 * key, the order log, records, challenges (each has a '+' suffix of its own).
 */
export function certificateKeyOf (key: string): { name: string, keyType: KeyType } | undefined {
  const name = key.endsWith('+rsa') ? key.slice(0, -'+rsa'.length) : key
  if (name === '' || name.includes('+')) return undefined
  return { name, keyType: name === key ? 'ecdsa' : 'rsa' }
}

/**
 * The largest value, in bytes, the plugin reads under each kind of key: each is
 * many times what the plugin writes there. A larger value is corrupt
 * (FST_AUTOCERT_CORRUPT): the built-in stores refuse it before its body is
 * transferred (CertStore.get's `maxBytes`) and every reader checks the length of
 * what it got (readBounded), so a huge blob under a key costs a small read, not
 * its size in memory, at start-up or at every request.
 */
export const storeLimits = {
  /** A certificate bundle (PEM key and chain), `<name>` or `<name>+rsa`: 64 KiB. An RSA-2048 key and a three-certificate chain take about 7 KiB. */
  certificate: 64 * 1024,
  /** A failure record (JSON): 16 KiB. It takes about 100 bytes plus its error message, which is cut to 2,000 characters when written. */
  failure: 16 * 1024,
  /** A renewal-information record (JSON): 16 KiB. It takes about 250 bytes plus the CA's explanationURL, at most 2,000 characters. */
  renewalInfo: 16 * 1024,
  /** A pending HTTP-01 answer (JSON): 4 KiB. A domain of at most 253 characters and a key authorization of at most 172 take under 500 bytes. */
  http01: 4 * 1024,
  /** A pending TLS-ALPN-01 challenge (PEM bundle), as a certificate: 64 KiB. A P-256 key and its one certificate take about 1 KiB. */
  tlsAlpn01: 64 * 1024,
  /**
   * The order log (JSON array of times in ms): 64 KiB, room for 4,681 entries of
   * 14 bytes (13 digits and a comma). It holds the orders of the last hour only,
   * at most maxOrdersPerHour of them, and the budget is capped so that it never
   * outgrows this limit (ORDER_LOG_CAPACITY). An unusable log counts as empty.
   */
  orderLog: 64 * 1024,
  /** The ACME account key (PEM): 16 KiB. A P-256 key takes about 240 bytes, an RSA-4096 key about 3.3 KiB. */
  account: 16 * 1024
} as const

/**
 * Where the built-in stores keep the lock named `key`: Azure, a blob leased
 * under `locks/` (no key holds a '/', so no key names a lock blob); files,
 * `.<key>.lock` (no key starts with '.').
 */
export const lockPaths = {
  blob: (key: string): string => `locks/${key}`,
  file: (key: string): string => `.${key}.lock`
} as const
