// A certificate bundle: its stored form, its parsed fields and its TLS context.
import { X509Certificate } from 'node:crypto'
import { isIP } from 'node:net'
import { createSecureContext, type SecureContext } from 'node:tls'
import { FST_AUTOCERT_CORRUPT } from './errors'

/**
 * What is known of a certificate without its key and chain: enough to
 * schedule its renewal and report it. The manager keeps only this of a
 * certificate no handshake has needed for a while (options.contextCacheSize),
 * and reads the whole bundle from the store again when one does, or when the
 * CA must be asked about it.
 */
export interface CertificateSummary {
  /** The normalised host name it was issued for. */
  readonly name: string
  /** Leaf serial number, upper-case hex. */
  readonly serial: string
  /** Validity window of the leaf, in milliseconds since the epoch. */
  readonly notBefore: number
  readonly notAfter: number
}

/** A certificate with its private key, as kept in memory and in the store. */
export interface Certificate extends CertificateSummary {
  /** PEM private key. Never logged. */
  readonly key: string
  /** PEM chain, leaf first. */
  readonly chain: string
}

/** Whether `cert` has its key and chain. */
export function isWhole (cert: CertificateSummary): cert is Certificate {
  return 'chain' in cert
}

/** `cert` without its key and chain. */
export function summaryOf ({ name, serial, notBefore, notAfter }: CertificateSummary): CertificateSummary {
  return { name, serial, notBefore, notAfter }
}

/*
 * The metadata a certificate is stored with (PutOptions.metadata): what its
 * renewal needs, readable from a store listing without the bundle. Go
 * autocert writes none; the plugin's next write of the name adds it.
 */
const SERIAL = 'autocert_serial'
const NOT_BEFORE = 'autocert_notbefore'
const NOT_AFTER = 'autocert_notafter'
/** Longer than any publicly trusted certificate lives (398 days at most, since 2020): metadata claiming more is not believed. */
const MAX_LIFETIME = 400 * 86_400_000

/** The metadata `cert` is stored with. */
export function certificateMetadata (cert: CertificateSummary): Record<string, string> {
  return { [SERIAL]: cert.serial, [NOT_BEFORE]: new Date(cert.notBefore).toISOString(), [NOT_AFTER]: new Date(cert.notAfter).toISOString() }
}

/**
 * What the metadata of `name`'s stored certificate says of it; undefined
 * when it has none or it is not what certificateMetadata() writes. Trusted
 * for scheduling only: serving, renewing or asking the CA reads the bundle,
 * and the bundle's own fields win.
 */
export function summaryFromMetadata (name: string, metadata: Record<string, string> | undefined): CertificateSummary | undefined {
  const serial = metadata?.[SERIAL]
  const notBefore = Date.parse(metadata?.[NOT_BEFORE] ?? '')
  const notAfter = Date.parse(metadata?.[NOT_AFTER] ?? '')
  if (serial === undefined || !/^[0-9A-F]{1,42}$/.test(serial) || !(notBefore < notAfter && notAfter - notBefore <= MAX_LIFETIME)) return undefined
  return { name, serial, notBefore, notAfter }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n[A-Za-z0-9+/=\r\n]+-----END \1-----/g

/**
 * The stored form: the private key, then the chain, in one PEM text. This is
 * Go autocert's cache format, so its containers can be shared with this plugin.
 */
export function encodeBundle (cert: Pick<Certificate, 'key' | 'chain'>): string {
  return `${cert.key.trim()}\n${cert.chain.trim()}\n`
}

/**
 * Parses and checks a stored bundle for `name`: exactly one private key and a
 * leaf valid for `name`. Expiry is left to the caller, and so is the match of
 * key and leaf: parsing the key is most of a start-up's CPU, and OpenSSL checks
 * the match anyway when toSecureContext() builds the context, before the first
 * handshake that would serve it. Throws FST_AUTOCERT_CORRUPT (naming the key,
 * never quoting its content).
 */
export function decodeBundle (name: string, storeKey: string, data: Buffer | string): Certificate {
  const text = data.toString('utf8')
  let key: string | undefined
  const certs: string[] = []
  for (const [block, label] of text.matchAll(PEM_BLOCK)) {
    if (label === 'CERTIFICATE') certs.push(block)
    else if (label.endsWith('PRIVATE KEY') && key === undefined) key = block
    else throw new FST_AUTOCERT_CORRUPT(storeKey, `unexpected PEM block ${label}`)
  }
  if (key === undefined) throw new FST_AUTOCERT_CORRUPT(storeKey, 'no private key')
  if (certs.length === 0) throw new FST_AUTOCERT_CORRUPT(storeKey, 'no certificate')
  let leaf: X509Certificate
  try {
    leaf = new X509Certificate(certs[0])
  } catch {
    throw new FST_AUTOCERT_CORRUPT(storeKey, 'the certificate does not parse')
  }
  if (!covers(leaf, name)) {
    throw new FST_AUTOCERT_CORRUPT(storeKey, `the certificate is not valid for ${name}`)
  }
  return {
    name,
    key,
    chain: certs.join('\n'),
    serial: leaf.serialNumber.toUpperCase(),
    notBefore: Date.parse(leaf.validFrom),
    notAfter: Date.parse(leaf.validTo)
  }
}

/**
 * Whether `leaf` names `name` itself: a host name, a wildcard (`*.example.com`,
 * which must be in its SAN as such, not matched by one) or an IP address.
 */
function covers (leaf: X509Certificate, name: string): boolean {
  if (isIP(name) !== 0) return leaf.checkIP(name) !== undefined
  if (name.startsWith('*.')) return (leaf.subjectAltName ?? '').split(', ').includes(`DNS:${name}`)
  return leaf.checkHost(name, { wildcards: false }) !== undefined
}

/** The TLS context serving `cert`. Throws FST_AUTOCERT_CORRUPT when its key does not parse or match. */
export function toSecureContext (cert: Certificate): SecureContext {
  try {
    return createSecureContext({ key: cert.key, cert: cert.chain })
  } catch {
    throw new FST_AUTOCERT_CORRUPT(cert.name, 'the private key does not match the certificate')
  }
}
