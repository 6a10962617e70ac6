import tls, { type PeerCertificate } from 'node:tls'

export interface Served {
  serial: string
  subject: string
  issuer: string
  validTo: Date
  /** The whole served chain verified against `ca` (tls.connect does it). */
  authorized: boolean
  /** The leaf's public key type. */
  keyType: 'ecdsa' | 'rsa' | 'other'
}

/**
 * One real TLS handshake to 127.0.0.1:port with SNI `servername`, verifying
 * the served chain against `ca` and the name against the certificate.
 * Rejects when the handshake fails.
 */
export function handshake (port: number, servername: string, ca: string, options: tls.ConnectionOptions = {}): Promise<Served> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['http/1.1'], ...options }, () => {
      const cert: PeerCertificate = socket.getPeerCertificate()
      socket.destroy()
      resolve({
        serial: cert.serialNumber.toUpperCase(),
        subject: String(cert.subject.CN),
        issuer: String(cert.issuer.CN),
        validTo: new Date(cert.valid_to),
        authorized: socket.authorized,
        keyType: cert.asn1Curve !== undefined ? 'ecdsa' : cert.modulus !== undefined ? 'rsa' : 'other'
      })
    })
    socket.setTimeout(30_000, () => socket.destroy(new Error('handshake timed out')))
    socket.once('error', reject)
  })
}
