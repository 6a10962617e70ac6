import { generateKeyPairSync, randomBytes, X509Certificate } from 'node:crypto'
import net from 'node:net'

/*
 * A hand-built TLS ClientHello, sent over a plain TCP socket. tls.connect will
 * not send some server names (NUL, over 255 bytes, none at all but an empty
 * one, raw bytes that are not UTF-8): a hostile client is not bound by that.
 */

export interface HelloOptions {
  /**
   * The server_name to send: a string (sent as its UTF-8 bytes, as a careless
   * client would), raw bytes, or `null` for no server_name extension at all.
   */
  serverName: string | Buffer | null
  /** The whole server_name extension body, overriding `serverName` (for malformed lists). */
  serverNameExtension?: Buffer
  /** `'1.3'` offers TLS 1.3 and 1.2 (the server picks 1.3); `'1.2'` offers 1.2 only, whose Certificate travels in clear. */
  version: '1.2' | '1.3'
  /** The ALPN protocols offered (default: http/1.1). */
  protocols?: string[]
  /** TLS 1.3: the X25519 public key offered (32 bytes; default a fresh one, see x25519Share()). */
  keyShare?: Buffer
}

/**
 * A real X25519 public key, so that the server answers with a ServerHello
 * rather than a retry request. A client that sends many hellos may offer the
 * same one each time: generating and exporting a key per hello costs the client
 * CPU, and Node 20 once deadlocked in it (a GC during the JWK export finalized
 * an earlier key-generation job, which waited for the lock the export held).
 */
export function x25519Share (): Buffer {
  const jwk = generateKeyPairSync('x25519').publicKey.export({ format: 'jwk' })
  return Buffer.from(jwk.x as string, 'base64url')
}

export interface HelloAnswer {
  /** `served`: a ServerHello came back; `alert`: a TLS alert; `closed`: the connection ended first. */
  outcome: 'served' | 'alert' | 'closed' | 'timeout'
  /** The alert description (112 unrecognized_name, 40 handshake_failure, 50 decode_error...). */
  alert?: number
  /** TLS 1.2 only: the leaf certificate the server sent. */
  certificate?: X509Certificate
  /** From connect to the outcome, in milliseconds. */
  ms: number
}

const u8 = (n: number): Buffer => Buffer.from([n])
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff])
const u24 = (n: number): Buffer => Buffer.from([n >> 16, (n >> 8) & 0xff, n & 0xff])
const vec16 = (...parts: Buffer[]): Buffer => { const body = Buffer.concat(parts); return Buffer.concat([u16(body.length), body]) }
const vec8 = (...parts: Buffer[]): Buffer => { const body = Buffer.concat(parts); return Buffer.concat([u8(body.length), body]) }
const extension = (type: number, body: Buffer): Buffer => Buffer.concat([u16(type), vec16(body)])
const list16 = (values: number[]): Buffer => Buffer.concat(values.map(u16))

const TLS13_SUITES = [0x1301, 0x1302, 0x1303]
// ECDHE with ECDSA or RSA, AES-GCM and ChaCha20: what a certificate of either key type can serve.
const TLS12_SUITES = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8]
// ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256 and their SHA-384/512 siblings.
const SIGNATURE_ALGORITHMS = [0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601]
const X25519 = 0x001d
const GROUPS = [X25519, 0x0017, 0x0018]
const MAX_RECORD = 16_384

/** The server_name extension body for one host_name entry (RFC 6066 section 3). */
function serverNameList (name: Buffer): Buffer {
  return vec16(u8(0), vec16(name))
}

/** One ClientHello handshake message, split into as many handshake records as it needs. */
export function buildClientHello (options: HelloOptions): Buffer {
  const tls13 = options.version === '1.3'
  const name = typeof options.serverName === 'string' ? Buffer.from(options.serverName, 'utf8') : options.serverName
  const sni = options.serverNameExtension ?? (name === null ? undefined : serverNameList(name))
  const extensions: Buffer[] = []
  if (sni !== undefined) extensions.push(extension(0x0000, sni))
  extensions.push(
    extension(0x000a, vec16(list16(GROUPS))),
    extension(0x000b, vec8(u8(0))),
    extension(0x000d, vec16(list16(SIGNATURE_ALGORITHMS))),
    extension(0x0010, vec16(...(options.protocols ?? ['http/1.1']).map((p) => vec8(Buffer.from(p)))))
  )
  if (tls13) {
    const share = options.keyShare ?? x25519Share()
    extensions.push(
      extension(0x002b, vec8(list16([0x0304, 0x0303]))),
      extension(0x0033, vec16(u16(X25519), vec16(share)))
    )
  }
  const body = Buffer.concat([
    u16(0x0303),
    randomBytes(32),
    vec8(randomBytes(32)),
    vec16(list16(tls13 ? [...TLS13_SUITES, ...TLS12_SUITES] : TLS12_SUITES)),
    vec8(u8(0)),
    vec16(...extensions)
  ])
  const message = Buffer.concat([u8(1), u24(body.length), body])
  const records: Buffer[] = []
  for (let at = 0; at < message.length; at += MAX_RECORD) {
    const fragment = message.subarray(at, at + MAX_RECORD)
    records.push(Buffer.concat([u8(0x16), u16(0x0301), u16(fragment.length), fragment]))
  }
  return Buffer.concat(records)
}

/**
 * Sends one ClientHello to 127.0.0.1:port and reads the server's first answer:
 * a ServerHello (and, for TLS 1.2, the Certificate after it), an alert, or the
 * end of the connection. Never rejects.
 */
export function sendClientHello (port: number, options: HelloOptions, timeoutMs = 10_000): Promise<HelloAnswer> {
  const hello = buildClientHello(options)
  return new Promise((resolve) => {
    const started = performance.now()
    const socket = net.connect(port, '127.0.0.1', () => socket.write(hello))
    let input = Buffer.alloc(0)
    let handshake = Buffer.alloc(0)
    let served = false
    let settled = false
    const finish = (answer: Omit<HelloAnswer, 'ms'>): void => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      socket.destroy()
      resolve({ ...answer, ms: performance.now() - started })
    }
    const timer = setTimeout(() => finish({ outcome: 'timeout' }), timeoutMs)

    // Handshake messages may span records and records may span reads.
    const onHandshake = (): void => {
      while (handshake.length >= 4) {
        const length = handshake.readUIntBE(1, 3)
        if (handshake.length < 4 + length) return
        const type = handshake[0]
        const body = handshake.subarray(4, 4 + length)
        handshake = handshake.subarray(4 + length)
        if (type === 2) {
          served = true
          if (options.version === '1.3') return finish({ outcome: 'served' })
        } else if (type === 11 && served) {
          // Certificate: u24 list length, then u24 length + DER of the leaf first.
          const leaf = body.subarray(6, 6 + body.readUIntBE(3, 3))
          return finish({ outcome: 'served', certificate: new X509Certificate(leaf) })
        }
      }
    }
    socket.on('data', (chunk: Buffer) => {
      input = Buffer.concat([input, chunk])
      // eslint-disable-next-line no-unmodified-loop-condition -- finish(), called in the loop, sets it
      while (input.length >= 5 && !settled) {
        const length = input.readUInt16BE(3)
        if (input.length < 5 + length) return
        const type = input[0]
        const fragment = input.subarray(5, 5 + length)
        input = input.subarray(5 + length)
        if (type === 0x15) return finish({ outcome: 'alert', alert: fragment[1] })
        if (type === 0x16) {
          handshake = Buffer.concat([handshake, fragment])
          onHandshake()
        }
      }
    })
    socket.on('error', () => finish({ outcome: served ? 'served' : 'closed' }))
    socket.on('close', () => finish({ outcome: served ? 'served' : 'closed' }))
  })
}
