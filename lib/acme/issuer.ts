import * as acme from 'acme-client'
import type { CertStore } from '../store/store'
import type { Http01Challenges } from './challenges'

export type KeyType = 'ecdsa' | 'rsa'

export interface IssuerOptions {
  directoryUrl: string
  email?: string
  keyType: KeyType
  externalAccountBinding?: { kid: string, hmacKey: string }
  store: CertStore
  challenges: Http01Challenges
}

/** Store key of the ACME account key, shared by the fleet (Go autocert's name). */
export const ACCOUNT_KEY = 'acme_account+key'

/*
 * Polling of authorizations and orders: acme-client waits 5 s before its first
 * poll by default, which alone makes every issuance cost 5 s. Start at 100 ms
 * and double up to 2 s: about 60 s of patience in all, while a fast CA answers
 * within a few polls. 429 and 503 answers are retried by acme-client itself,
 * honouring Retry-After.
 */
const POLLING = { backoffMin: 100, backoffMax: 2000, backoffAttempts: 35 }

/** One issuance with acme-client: account, order, HTTP-01, finalize. */
export class Issuer {
  readonly #opts: IssuerOptions
  #client: Promise<acme.Client> | undefined

  constructor (opts: IssuerOptions) {
    this.#opts = opts
  }

  /** Orders a certificate for `name`; resolves with its PEM key and chain. */
  async issue (name: string, signal: AbortSignal): Promise<{ key: string, chain: string }> {
    const client = await this.#account(signal)
    const [key, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] }, await this.#newKey())
    signal.throwIfAborted()
    let order = await client.createOrder({ identifiers: [{ type: 'dns', value: name }] })
    const authorizations = await client.getAuthorizations(order)
    await Promise.all(authorizations.map((authz) => this.#authorize(client, authz, signal)))
    signal.throwIfAborted()
    order = await client.finalizeOrder(order, csr)
    const chain = await client.getCertificate(order)
    return { key: key.toString(), chain }
  }

  async #authorize (client: acme.Client, authz: acme.Authorization, signal: AbortSignal): Promise<void> {
    if (authz.status === 'valid') return
    const challenge = authz.challenges.find((c) => c.type === 'http-01')
    if (challenge === undefined) throw new Error(`the CA offers no http-01 challenge for ${authz.identifier.value}`)
    const keyAuthorization = await client.getChallengeKeyAuthorization(challenge)
    const { challenges } = this.#opts
    await challenges.publish(challenge.token, keyAuthorization)
    try {
      signal.throwIfAborted()
      await client.completeChallenge(challenge)
      await client.waitForValidStatus(challenge)
    } finally {
      await challenges.withdraw(challenge.token).catch(() => {})
    }
  }

  #newKey (): Promise<Buffer> {
    return this.#opts.keyType === 'rsa'
      ? acme.crypto.createPrivateRsaKey(2048)
      : acme.crypto.createPrivateEcdsaKey('P-256')
  }

  /** The fleet's account: its key is created once, under the cluster lock, and shared through the store. */
  #account (signal: AbortSignal): Promise<acme.Client> {
    this.#client ??= this.#register(signal).catch((err: unknown) => {
      this.#client = undefined
      throw err
    })
    return this.#client
  }

  async #register (signal: AbortSignal): Promise<acme.Client> {
    const { store, directoryUrl, email, externalAccountBinding } = this.#opts
    let accountKey = await store.get(ACCOUNT_KEY)
    let known = accountKey !== undefined
    if (accountKey === undefined) {
      const lock = await store.lock(ACCOUNT_KEY, signal)
      try {
        accountKey = await store.get(ACCOUNT_KEY)
        known = accountKey !== undefined
        if (accountKey === undefined) {
          accountKey = await acme.crypto.createPrivateEcdsaKey('P-256')
          lock.signal.throwIfAborted()
          await store.put(ACCOUNT_KEY, accountKey)
        }
      } finally {
        await lock.release()
      }
    }
    const client = new acme.Client({ directoryUrl, accountKey, externalAccountBinding, ...POLLING })
    const account = { termsOfServiceAgreed: true, ...(email === undefined ? {} : { contact: [`mailto:${email}`] }) }
    // Another instance registered this key already: look the account up. A plain
    // newAccount would turn into an update that CAs refuse when nothing changes.
    // The key may still be new to this CA (another directory URL): then register it.
    if (!known || !(await client.createAccount({ onlyReturnExisting: true }).then(() => true, () => false))) {
      await client.createAccount(account)
    }
    return client
  }
}
