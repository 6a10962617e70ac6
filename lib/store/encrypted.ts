// A store wrapper that seals every value with AES-256-GCM.
import { createCipheriv, createDecipheriv, createHash, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto'
import { FST_AUTOCERT_CORRUPT } from '../errors'
import { oversized, type CertStore, type GetOptions, type Lock, type LockOptions, type LockState, type PutOptions, type StoreEntry } from './store'

/*
 * Sealed value layout: MAGIC (4) | key id (4) | IV (12) | GCM tag (16) | ciphertext.
 * The key id is the start of SHA-256(key), so the right key is found without
 * trial decryption; the store key is the additional authenticated data, so a
 * sealed value moved to another key (another domain's blob) fails to open.
 */
const MAGIC = Buffer.from('ACS1')
const HEADER = MAGIC.length + 4 + 12 + 16
/*
 * Metadata cannot be sealed (it is read without the value), so it is signed:
 * this field holds the key id and an HMAC-SHA256, under a key derived from the
 * encryption key, of the store key and every other field. Metadata without a
 * valid one is dropped on reading, and the plugin reads the value instead.
 */
const MAC_FIELD = 'autocert_mac'

export interface EncryptionOptions {
  /** The key new values are sealed with: 32 bytes, as a Buffer or a base64 string. */
  key: Buffer | string
  /** Older keys values may still be sealed with (rotation): read, never written. */
  previousKeys?: Array<Buffer | string>
}

/**
 * Seals every value of another store with AES-256-GCM: certificate keys, the
 * account key, challenge answers, failure records. Locks pass through. Values
 * written before encryption was turned on are read as they are and sealed at
 * their next write (a renewal), so it can be enabled on a live container.
 * A value that fails to open is corrupt (FST_AUTOCERT_CORRUPT), never a crash.
 */
export class EncryptedStore implements CertStore {
  readonly #inner: CertStore
  readonly #current: { id: Buffer, key: Buffer }
  readonly #keys: Map<string, Buffer>
  /** The metadata signing keys, by the id of the encryption key each comes from. */
  readonly #macKeys: Map<string, Buffer>

  constructor (inner: CertStore, options: EncryptionOptions) {
    this.#inner = inner
    const keys = [options.key, ...(options.previousKeys ?? [])].map(toKey)
    this.#current = { id: keyId(keys[0]), key: keys[0] }
    this.#keys = new Map(keys.map((k) => [keyId(k).toString('hex'), k]))
    this.#macKeys = new Map(keys.map((k) => [keyId(k).toString('hex'), Buffer.from(hkdfSync('sha256', k, '', 'fastify-autocert metadata', 32))]))
  }

  /** `options.maxBytes` limits the value as read back: the inner store is allowed the sealing's overhead on top. */
  async get (key: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    const { maxBytes } = options
    const value = await this.#inner.get(key, sealedLimit(options))
    if (value === undefined) return undefined
    // Plain text (written before encryption was on) has no overhead; a store of the user's own may ignore the limit.
    const plain = this.#open(key, value)
    if (maxBytes !== undefined && plain.length > maxBytes) throw oversized(key, plain.length, maxBytes)
    return plain
  }

  /**
   * Seals `key` again with the current key when it is stored in plain text or
   * under a previous key, under the key's lock. Values the plugin rewrites anyway
   * (certificates, at renewal) need not be resealed; the account key is never
   * rewritten, so the plugin reseals it at start-up. `options` as for get(),
   * and `lock`, how the key's lock is taken (default: the inner store's
   * lock(key)). Returns whether it wrote.
   */
  async reseal (key: string, options: GetOptions & { lock?: (key: string) => Promise<Lock> } = {}): Promise<boolean> {
    const raw = await this.#inner.get(key, sealedLimit(options))
    if (raw === undefined || raw.subarray(0, 8).equals(Buffer.concat([MAGIC, this.#current.id]))) return false
    const lock = await (options.lock ?? ((k: string) => this.#inner.lock(k)))(key)
    try {
      const value = await this.get(key, options)
      if (value === undefined) return false
      lock.signal.throwIfAborted()
      await this.put(key, value)
      return true
    } finally {
      await lock.release()
    }
  }

  /** The value sealed; its metadata (not secret: a certificate's serial and validity) signed, not sealed. */
  async put (key: string, value: Buffer | string, { metadata }: PutOptions = {}): Promise<void> {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', this.#current.key, iv)
    cipher.setAAD(Buffer.from(key))
    const sealed = Buffer.concat([cipher.update(Buffer.from(value)), cipher.final()])
    const id = this.#current.id.toString('hex')
    const signed = metadata === undefined ? undefined : { metadata: { ...metadata, [MAC_FIELD]: `${id}.${mac(this.#macKeys.get(id) as Buffer, key, metadata)}` } }
    await this.#inner.put(key, Buffer.concat([MAGIC, this.#current.id, iv, cipher.getAuthTag(), sealed]), signed)
  }

  /** The inner store's entries, each with its metadata only when signed by a configured key (undefined: the inner store lists none). */
  get entries (): CertStore['entries'] {
    const inner = this.#inner
    if (inner.entries === undefined) return undefined
    const verified = (key: string, metadata: Record<string, string> | undefined): Record<string, string> | undefined => {
      if (metadata?.[MAC_FIELD] === undefined) return undefined
      const { [MAC_FIELD]: signature, ...fields } = metadata
      const [id, tag] = signature.split('.')
      const secret = this.#macKeys.get(id)
      if (secret === undefined || tag === undefined) return undefined
      const expected = Buffer.from(mac(secret, key, fields))
      const given = Buffer.from(tag)
      return given.length === expected.length && timingSafeEqual(given, expected) ? fields : undefined
    }
    return async function * (prefix?: string): AsyncIterable<StoreEntry> {
      for await (const { key, metadata } of (inner.entries as NonNullable<CertStore['entries']>).call(inner, prefix)) {
        const fields = verified(key, metadata)
        yield fields === undefined ? { key } : { key, metadata: fields }
      }
    }
  }

  // The value as written: opened when sealed, as it is when in plain text.
  #open (key: string, value: Buffer): Buffer {
    if (!isSealed(value)) return value
    const secret = this.#keys.get(value.subarray(4, 8).toString('hex'))
    if (secret === undefined || value.length < HEADER) throw new FST_AUTOCERT_CORRUPT(key, 'sealed with a key that is not configured')
    try {
      const decipher = createDecipheriv('aes-256-gcm', secret, value.subarray(8, 20))
      decipher.setAAD(Buffer.from(key))
      decipher.setAuthTag(value.subarray(20, HEADER))
      return Buffer.concat([decipher.update(value.subarray(HEADER)), decipher.final()])
    } catch {
      throw new FST_AUTOCERT_CORRUPT(key, 'it does not decrypt (tampered with, or moved from another key)')
    }
  }

  delete (key: string): Promise<void> {
    return this.#inner.delete(key)
  }

  list (prefix?: string): Promise<string[]> {
    return this.#inner.list(prefix)
  }

  lock (key: string, signal?: AbortSignal, options?: LockOptions): Promise<Lock> {
    return this.#inner.lock(key, signal, options)
  }

  /** Locks are not sealed: the inner store's answer. */
  async lockState (key: string): Promise<LockState | undefined> {
    return await this.#inner.lockState?.(key)
  }

  async close (): Promise<void> {
    await this.#inner.close?.()
  }
}

/** True when `value` is sealed by an EncryptedStore (whichever key): what a reader without the key finds. */
export function isSealed (value: Buffer): boolean {
  return value.subarray(0, MAGIC.length).equals(MAGIC)
}

// What the inner store may hold for a value of `maxBytes`: GCM adds no padding, only the header.
function sealedLimit ({ maxBytes }: GetOptions): GetOptions | undefined {
  return maxBytes === undefined ? undefined : { maxBytes: maxBytes + HEADER }
}

function toKey (value: Buffer | string): Buffer {
  const key = typeof value === 'string' ? Buffer.from(value, 'base64') : value
  if (!Buffer.isBuffer(key) || key.length !== 32) {
    throw new TypeError('an encryption key must be 32 bytes: a Buffer, or a base64 string such as `openssl rand -base64 32` prints')
  }
  return key
}

/** HMAC-SHA256 (base64url) of the store key and the fields, in name order: moved to another key, or altered, it no longer matches. */
function mac (secret: Buffer, key: string, fields: Record<string, string>): string {
  const hmac = createHmac('sha256', secret).update(key)
  for (const name of Object.keys(fields).sort()) hmac.update(`\0${name}=${fields[name]}`)
  return hmac.digest('base64url')
}

function keyId (key: Buffer): Buffer {
  return createHash('sha256').update(key).digest().subarray(0, 4)
}
