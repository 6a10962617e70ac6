// The challenge contract, and HTTP-01 answers kept in the store.
import type { Authorization } from 'acme-client'
import type { Logger } from '../events'
import { normalizeAddress, normalizeHost } from '../names'
import { CorruptLog } from '../store/corrupt-log'
import { storeKeys, storeLimits } from '../store/keys'
import { readRecord, type CertStore } from '../store/store'
import { ChallengeLookups, type Refusal } from './challenge-lookups'

/** The challenge types the issuer can complete (options.challenges). */
export type ChallengeType = 'http-01' | 'tls-alpn-01' | 'dns-01'

/**
 * One challenge type. The answer is in the store before the CA is asked to
 * validate, so whichever instance the CA's request lands on can give it, and
 * leaves it once the CA is done.
 */
export interface ChallengeSolver {
  readonly type: ChallengeType
  /** `signal` aborts when the order gives up: a solver that waits (DNS-01) stops. */
  publish (authz: Authorization, challenge: { token: string }, keyAuthorization: string, signal: AbortSignal): Promise<void>
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
 * What a challenge request gets: the key authorization, nothing (undefined),
 * or a refusal because too many store lookups are waiting on its connection
 * or in the whole instance (CHALLENGE_LOOKUP_LIMITS).
 */
export type Http01Answer = { keyAuthorization: string } | { refused: Refusal } | undefined

/**
 * HTTP-01 key authorizations. They are written to the store before the CA is
 * asked to validate, so whichever instance the CA's request lands on can answer.
 */
export class Http01Challenges implements ChallengeSolver {
  readonly type = 'http-01'
  readonly #store: CertStore
  // Answers this instance published: served without a store round trip.
  readonly #local = new Map<string, Pending>()
  // Answers other instances published: read from the store within the limits.
  readonly #lookups: ChallengeLookups<Pending>
  // An unusable stored answer is asked for at every request of its token: logged once.
  readonly #corrupt: CorruptLog

  constructor (store: CertStore, log: Logger) {
    this.#store = store
    this.#lookups = new ChallengeLookups((token) => this.#stored(token), log)
    this.#corrupt = new CorruptLog(log, 'ignoring unusable stored HTTP-01 answer')
  }

  async publish (authz: Authorization, { token }: { token: string }, keyAuthorization: string): Promise<void> {
    // An address as the CA writes it may differ from its canonical form (RFC 8738 leaves that open).
    const { type, value } = authz.identifier
    const pending: Pending = { domain: (type === 'ip' ? normalizeAddress(value) : undefined) ?? value, keyAuthorization }
    this.#local.set(token, pending)
    this.#lookups.forget(token)
    await this.#store.put(storeKeys.http01(token), JSON.stringify(pending))
  }

  async withdraw (_authz: Authorization, { token }: { token: string }): Promise<void> {
    this.#local.delete(token)
    await this.#store.delete(storeKeys.http01(token))
  }

  /**
   * The key authorization for `token` requested with the Host header `host`
   * on `connection` (its socket, or HTTP/2 session), or undefined. Malformed
   * tokens and hosts never reach the store, nor do this instance's own
   * answers; a token answers only for the name it was issued for (certmagic's
   * rule). An unusable stored answer (over storeLimits.http01, or not the JSON
   * publish() writes) is no answer. Rejects when the store fails.
   */
  async answer (token: string, host: string | undefined, connection: object): Promise<Http01Answer> {
    const domain = normalizeHost(host)
    if (!TOKEN.test(token) || domain === undefined) return undefined
    const local = this.#local.get(token)
    const found = local === undefined ? await this.#lookups.lookup(token, connection) : { value: local }
    if ('refused' in found) return found
    const pending = found.value
    return pending?.domain === domain ? { keyAuthorization: pending.keyAuthorization } : undefined
  }

  async #stored (token: string): Promise<Pending | undefined> {
    return await readRecord(this.#store, storeKeys.http01(token), storeLimits.http01, parse, this.#corrupt)
  }
}

function parse (data: Buffer): Pending | undefined {
  try {
    const pending = JSON.parse(data.toString('utf8')) as Partial<Pending>
    return typeof pending.domain === 'string' && typeof pending.keyAuthorization === 'string'
      ? { domain: pending.domain, keyAuthorization: pending.keyAuthorization }
      : undefined
  } catch {
    return undefined
  }
}
