// Every store key the plugin writes, built in one place.
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
  /** A pending HTTP-01 answer (JSON: domain and key authorization). */
  http01: (token: string): string => `${token}+http-01`,
  /** A pending TLS-ALPN-01 challenge certificate (PEM bundle): one per name at a time. */
  tlsAlpn01: (name: string): string => `${name}+tls-alpn-01`,
  /** The ACME account key (PEM), shared by the fleet; also the name of the lock taken to register it. */
  account: 'acme_account+key',
  /** The fleet's log of recent orders (JSON), and the name of its lock. */
  orderLog: 'acme_orders+log',
  /** Per-name order locks are named after the name itself. */
  nameLock: (name: string): string => name
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
