/*
 * A tiny local CA: ECDSA P-256 certificates built with node:crypto and a
 * minimal DER encoder, at about 0.1 ms each. Pebble issues one certificate
 * per order (about 0.4 s); the benchmarks need 10,000 stored bundles that pass
 * decodeBundle (key matches, name matches), and the unit tier needs
 * certificates whose validity follows its own clock, so they are signed here.
 */
import { generateKeyPairSync, randomBytes, sign, type KeyObject } from 'node:crypto'
import { isIPv4 } from 'node:net'

export interface Issued {
  /** PKCS#8 PEM private key. */
  key: string
  /** PEM chain: the leaf, then the CA certificate (as a real chain: leaf, intermediate). */
  chain: string
}

export interface TestCa {
  /** PEM of the CA certificate: the trust anchor for clients. */
  cert: string
  /** A leaf for `name`, valid from `notBefore` (ms; default an hour ago) for `lifetime` (ms; default 90 days). */
  issue (name: string, validity?: { notBefore?: number, lifetime?: number }): Issued
}

const HOUR = 3600_000
const DAY = 24 * HOUR

export function createCa (commonName = 'fastify-autocert test CA'): TestCa {
  const ca = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
  const caDer = certificate({
    subject: commonName,
    issuer: commonName,
    publicKey: ca.publicKey,
    signer: ca.privateKey,
    notBefore: Date.now() - 10 * 365 * DAY,
    lifetime: 20 * 365 * DAY,
    extensions: [
      extension('2.5.29.19', true, seq(bool(true))), // basicConstraints cA
      extension('2.5.29.15', true, tlv(0x03, Buffer.from([0x01, 0x06]))) // keyUsage keyCertSign, cRLSign
    ]
  })
  const caPem = pem('CERTIFICATE', caDer)
  return {
    cert: caPem,
    issue (name, { notBefore = Date.now() - HOUR, lifetime = 90 * DAY } = {}) {
      const leaf = generateKeyPairSync('ec', { namedCurve: 'prime256v1' })
      const der = certificate({
        subject: name,
        issuer: commonName,
        publicKey: leaf.publicKey,
        signer: ca.privateKey,
        notBefore,
        lifetime,
        extensions: [
          extension('2.5.29.19', true, seq()), // basicConstraints: not a CA
          extension('2.5.29.15', true, tlv(0x03, Buffer.from([0x07, 0x80]))), // keyUsage digitalSignature
          extension('2.5.29.37', false, seq(oid('1.3.6.1.5.5.7.3.1'))), // extKeyUsage serverAuth
          extension('2.5.29.17', false, seq(altName(name))) // subjectAltName
        ]
      })
      return {
        key: leaf.privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
        chain: pem('CERTIFICATE', der) + caPem
      }
    }
  }
}

/** A subjectAltName entry: iPAddress (its 4 bytes) for an IPv4 address, else dNSName. */
function altName (name: string): Buffer {
  return isIPv4(name) ? tlv(0x87, Buffer.from(name.split('.').map(Number))) : tlv(0x82, Buffer.from(name, 'ascii'))
}

interface CertificateFields {
  subject: string
  issuer: string
  publicKey: KeyObject
  signer: KeyObject
  /** ms since the epoch */
  notBefore: number
  /** ms */
  lifetime: number
  extensions: Buffer[]
}

const ECDSA_WITH_SHA256 = (): Buffer => seq(oid('1.2.840.10045.4.3.2'))

function certificate (f: CertificateFields): Buffer {
  const notBefore = new Date(f.notBefore)
  const notAfter = new Date(f.notBefore + f.lifetime)
  const serial = randomBytes(16)
  serial[0] = (serial[0] & 0x3f) | 0x40 // positive, no leading zero byte: minimal DER
  const tbs = seq(
    tlv(0xa0, integer(Buffer.from([2]))), // v3
    integer(serial),
    ECDSA_WITH_SHA256(),
    name(f.issuer),
    seq(utcTime(notBefore), utcTime(notAfter)),
    name(f.subject),
    f.publicKey.export({ type: 'spki', format: 'der' }),
    tlv(0xa3, seq(...f.extensions))
  )
  const signature = sign('sha256', tbs, f.signer) // DER-encoded ECDSA-Sig-Value
  return seq(tbs, ECDSA_WITH_SHA256(), tlv(0x03, Buffer.concat([Buffer.from([0]), signature])))
}

function tlv (tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts)
  return Buffer.concat([Buffer.from([tag]), length(body.length), body])
}

function length (n: number): Buffer {
  if (n < 0x80) return Buffer.from([n])
  const bytes: number[] = []
  for (let v = n; v > 0; v = Math.floor(v / 256)) bytes.unshift(v & 0xff)
  return Buffer.from([0x80 | bytes.length, ...bytes])
}

const seq = (...parts: Buffer[]): Buffer => tlv(0x30, ...parts)
const bool = (value: boolean): Buffer => tlv(0x01, Buffer.from([value ? 0xff : 0]))

function integer (bytes: Buffer): Buffer {
  return tlv(0x02, (bytes[0] & 0x80) !== 0 ? Buffer.concat([Buffer.from([0]), bytes]) : bytes)
}

function oid (dotted: string): Buffer {
  const [first, second, ...rest] = dotted.split('.').map(Number)
  const out = [first * 40 + second]
  for (const arc of rest) {
    const groups = [arc & 0x7f]
    for (let v = Math.floor(arc / 128); v > 0; v = Math.floor(v / 128)) groups.unshift((v & 0x7f) | 0x80)
    out.push(...groups)
  }
  return tlv(0x06, Buffer.from(out))
}

function name (commonName: string): Buffer {
  return seq(tlv(0x31, seq(oid('2.5.4.3'), tlv(0x0c, Buffer.from(commonName, 'utf8')))))
}

function utcTime (d: Date): Buffer {
  const iso = d.toISOString() // 2025-01-02T03:04:05.678Z -> 250102030405Z
  return tlv(0x17, Buffer.from(iso.slice(2, 19).replace(/[-T:]/g, '') + 'Z', 'ascii'))
}

function extension (id: string, critical: boolean, value: Buffer): Buffer {
  return critical ? seq(oid(id), bool(true), tlv(0x04, value)) : seq(oid(id), tlv(0x04, value))
}

function pem (label: string, der: Buffer): string {
  const lines = der.toString('base64').match(/.{1,64}/g) ?? []
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`
}
