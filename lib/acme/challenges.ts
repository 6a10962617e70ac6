import type { CertStore } from '../store/store'

// ACME tokens carry at least 128 bits of entropy as base64url (RFC 8555 8.3).
const TOKEN = /^[A-Za-z0-9_-]{22,128}$/

/** Store key of an HTTP-01 answer, as Go autocert names it. */
export const http01Key = (token: string): string => `${token}+http-01`

/**
 * HTTP-01 key authorizations. They are written to the store before the CA is
 * asked to validate, so whichever instance the CA's request lands on can answer.
 */
export class Http01Challenges {
  readonly #store: CertStore
  // Answers this instance published: served without a store round trip.
  readonly #local = new Map<string, string>()

  constructor (store: CertStore) {
    this.#store = store
  }

  async publish (token: string, keyAuthorization: string): Promise<void> {
    this.#local.set(token, keyAuthorization)
    await this.#store.put(http01Key(token), keyAuthorization)
  }

  async withdraw (token: string): Promise<void> {
    this.#local.delete(token)
    await this.#store.delete(http01Key(token))
  }

  /** The key authorization for `token`, or undefined. Malformed tokens never reach the store. */
  async answer (token: string): Promise<string | undefined> {
    if (!TOKEN.test(token)) return undefined
    const local = this.#local.get(token)
    if (local !== undefined) return local
    const stored = await this.#store.get(http01Key(token))
    return stored?.toString('utf8')
  }
}
