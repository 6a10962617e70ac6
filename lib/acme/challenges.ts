// The challenge contract, and HTTP-01 answers kept in the store.
import type { Authorization } from 'acme-client'
import { normalizeName } from '../names'
import { storeKeys } from '../store/keys'
import type { CertStore } from '../store/store'

/** The challenge types the issuer can complete (options.challenges). */
export type ChallengeType = 'http-01' | 'tls-alpn-01'

/**
 * One challenge type. The answer is in the store before the CA is asked to
 * validate, so whichever instance the CA's request lands on can give it, and
 * leaves it once the CA is done.
 */
export interface ChallengeSolver {
  readonly type: ChallengeType
  publish (authz: Authorization, challenge: { token: string }, keyAuthorization: string): Promise<void>
  withdraw (authz: Authorization, challenge: { token: string }): Promise<void>
}

// ACME tokens carry at least 128 bits of entropy as base64url (RFC 8555 8.3).
const TOKEN = /^[A-Za-z0-9_-]{22,128}$/

interface Pending {
  /** The name the token was issued for: it answers for that Host only. */
  domain: string
  keyAuthorization: string
}

/**
 * HTTP-01 key authorizations. They are written to the store before the CA is
 * asked to validate, so whichever instance the CA's request lands on can answer.
 */
export class Http01Challenges implements ChallengeSolver {
  readonly type = 'http-01'
  readonly #store: CertStore
  // Answers this instance published: served without a store round trip.
  readonly #local = new Map<string, Pending>()

  constructor (store: CertStore) {
    this.#store = store
  }

  async publish (authz: Authorization, { token }: { token: string }, keyAuthorization: string): Promise<void> {
    const pending: Pending = { domain: authz.identifier.value, keyAuthorization }
    this.#local.set(token, pending)
    await this.#store.put(storeKeys.http01(token), JSON.stringify(pending))
  }

  async withdraw (_authz: Authorization, { token }: { token: string }): Promise<void> {
    this.#local.delete(token)
    await this.#store.delete(storeKeys.http01(token))
  }

  /**
   * The key authorization for `token` requested with the Host header `host`,
   * or undefined. Malformed tokens and hosts never reach the store; a token
   * answers only for the name it was issued for (certmagic's rule).
   */
  async answer (token: string, host: string | undefined): Promise<string | undefined> {
    const domain = normalizeName((host ?? '').replace(/:\d{1,5}$/, ''))
    if (!TOKEN.test(token) || domain === undefined) return undefined
    const pending = this.#local.get(token) ?? parse(await this.#store.get(storeKeys.http01(token)))
    return pending?.domain === domain ? pending.keyAuthorization : undefined
  }
}

function parse (data: Buffer | undefined): Pending | undefined {
  if (data === undefined) return undefined
  try {
    const pending = JSON.parse(data.toString('utf8')) as Partial<Pending>
    return typeof pending.domain === 'string' && typeof pending.keyAuthorization === 'string'
      ? { domain: pending.domain, keyAuthorization: pending.keyAuthorization }
      : undefined
  } catch {
    return undefined
  }
}
