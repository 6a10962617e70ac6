// Stored certificates as the list, show and export commands read them: the bundle, decoded, and its fields for output.
import { X509Certificate } from 'node:crypto'
import type { KeyType } from '../acme/issuer'
import { decodeBundle, type Certificate } from '../certificate'
import { errorMessage } from '../events'
import { isSealed } from '../store/encrypted'
import { certificateKeyOf, storeKeys, storeLimits } from '../store/keys'
import { normalizeListed } from '../names'
import { isCorrupt, readBounded } from '../store/store'
import type { OpenedStore } from './context'

/** One certificate key of the store, read: its certificate, or why it cannot be used. */
export type StoredCertificate =
  | { storeKey: string, name: string, keyType: KeyType, cert: Certificate, problem?: never }
  | { storeKey: string, name: string, keyType: KeyType, cert?: never, problem: string }

/**
 * The certificate keys among `keys` (`<name>` and `<name>+rsa` of a normalised
 * name, storeKeys.certificate): the account key, the order log, records,
 * challenges and anything else are left out.
 */
export function certificateKeys (keys: readonly string[]): Array<{ storeKey: string, name: string, keyType: KeyType }> {
  return keys.flatMap((storeKey) => {
    const parsed = certificateKeyOf(storeKey)
    return parsed !== undefined && normalizeListed(parsed.name) === parsed.name ? [{ storeKey, ...parsed }] : []
  })
}

/**
 * Reads and decodes the certificate stored under `storeKey` as the plugin does
 * (readBounded, decodeBundle). `undefined` when there is none. Unusable data is
 * a problem, worded for an operator: a bundle sealed with a key that is not
 * configured, or sealed while no key is, says so. A store failure throws.
 */
export async function readCertificate (opened: OpenedStore, storeKey: string, name: string, keyType: KeyType): Promise<StoredCertificate | undefined> {
  let data: Buffer | undefined
  try {
    data = await readBounded(opened.store, storeKey, storeLimits.certificate)
    if (data === undefined) return undefined
    if (opened.sealed === undefined && isSealed(data)) {
      return { storeKey, name, keyType, problem: 'sealed: configure the encryption key it was written with (AUTOCERT_ENCRYPTION_KEY or --encryption-key)' }
    }
    return { storeKey, name, keyType, cert: decodeBundle(name, storeKey, data) }
  } catch (err) {
    if (!isCorrupt(err)) throw err
    return { storeKey, name, keyType, problem: errorMessage(err) }
  }
}

/** The certificate of `domain` for each key type stored, ECDSA first; `undefined` for a name that is not one. */
export async function readDomain (opened: OpenedStore, domain: string): Promise<StoredCertificate[] | undefined> {
  const name = normalizeListed(domain)
  if (name === undefined) return undefined
  const found: StoredCertificate[] = []
  for (const keyType of ['ecdsa', 'rsa'] as const) {
    const stored = await readCertificate(opened, storeKeys.certificate(name, keyType), name, keyType)
    if (stored !== undefined) found.push(stored)
  }
  return found
}

/** One certificate of a chain, for output. */
export interface CertificateFields {
  /** The subject's distinguished name (`CN=example.com`), '' when empty (names in the SAN only). */
  subject: string
  /** The DNS names of its subjectAltName. */
  names: string[]
  /** The issuer's common name, else its organisation, else its whole distinguished name. */
  issuer: string
  /** Upper-case hex. */
  serial: string
  notBefore: string
  notAfter: string
  /** Its public key: `ecdsa P-256` (the curve), `rsa 2048` (the modulus, in bits). */
  key: string
}

// OpenSSL's names of the NIST curves, as certificates and TLS name them.
const CURVES: Record<string, string> = { prime256v1: 'P-256', secp384r1: 'P-384', secp521r1: 'P-521' }

/** The fields of `cert` an operator reads. */
export function fieldsOf (cert: X509Certificate): CertificateFields {
  const publicKey = cert.publicKey
  const details = publicKey.asymmetricKeyDetails ?? {}
  const type = publicKey.asymmetricKeyType === 'ec' ? 'ecdsa' : String(publicKey.asymmetricKeyType)
  const size = details.namedCurve !== undefined ? CURVES[details.namedCurve] ?? details.namedCurve : (details.modulusLength === undefined ? undefined : String(details.modulusLength))
  return {
    subject: distinguishedName(cert.subject),
    names: dnsNames(cert),
    issuer: issuerName(cert),
    serial: cert.serialNumber.toUpperCase(),
    notBefore: new Date(cert.validFrom).toISOString(),
    notAfter: new Date(cert.validTo).toISOString(),
    key: size === undefined ? type : `${type} ${size}`
  }
}

/** The issuer's common name, else its organisation, else its whole distinguished name. */
export function issuerName (cert: X509Certificate): string {
  const fields = cert.issuer.split('\n')
  const field = (name: string): string | undefined => fields.find((f) => f.startsWith(`${name}=`))?.slice(name.length + 1)
  return field('CN') ?? field('O') ?? distinguishedName(cert.issuer)
}

/** The certificates of a PEM chain, leaf first. */
export function chainOf (cert: Certificate): X509Certificate[] {
  // decodeBundle found one certificate at least.
  return (cert.chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) as RegExpMatchArray).map((pem) => new X509Certificate(pem))
}

function distinguishedName (text: string): string {
  return text.split('\n').filter((f) => f !== '').join(', ')
}

/** A day, in milliseconds. */
export const DAY = 86_400_000

/** Whole days from `now` to `time` (ms), rounded down: negative once past. */
export function daysLeft (time: number, now: number): number {
  return Math.floor((time - now) / DAY)
}

/** The DNS names of `cert`'s subjectAltName. */
export function dnsNames (cert: X509Certificate): string[] {
  return (cert.subjectAltName ?? '').split(', ').filter((n) => n.startsWith('DNS:')).map((n) => n.slice(4))
}

/** The store a command read, for its first line: `store: container autocertcache at ...`. */
export function storeLine (opened: Pick<OpenedStore, 'describe' | 'sealed'>): string {
  return `store: ${opened.describe}${opened.sealed === undefined ? '' : ' (sealed)'}`
}
