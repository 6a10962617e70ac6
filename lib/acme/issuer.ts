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
    await challenges.publish(challenge.token, authz.identifier.value, keyAuthorization)
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

  /*
   * The usual path is one request: the key is in the store and the CA knows it.
   * Otherwise, under the cluster lock, the key is created (or found new to this
   * CA, e.g. another directory URL) and registered before the lock is released,
   * so no instance ever looks up an account that is still being created.
   */
  async #register (signal: AbortSignal): Promise<acme.Client> {
    const { store } = this.#opts
    const stored = await store.get(ACCOUNT_KEY)
    if (stored !== undefined) {
      const client = this.#newClient(stored)
      if (await this.#lookUp(client)) return client
    }
    const lock = await store.lock(ACCOUNT_KEY, signal)
    try {
      let accountKey = await store.get(ACCOUNT_KEY)
      const created = accountKey === undefined
      accountKey ??= await acme.crypto.createPrivateEcdsaKey('P-256')
      const client = this.#newClient(accountKey)
      if (created || !(await this.#lookUp(client))) await client.createAccount(this.#newAccount())
      lock.signal.throwIfAborted()
      if (created) await store.put(ACCOUNT_KEY, accountKey)
      return client
    } finally {
      await lock.release()
    }
  }

  #newClient (accountKey: Buffer): acme.Client {
    const { directoryUrl, externalAccountBinding } = this.#opts
    return new acme.Client({ directoryUrl, accountKey, externalAccountBinding, ...POLLING })
  }

  // A plain newAccount for a known key turns into an account update, which CAs
  // refuse when nothing changes: look the account up instead.
  #lookUp (client: acme.Client): Promise<boolean> {
    return client.createAccount({ onlyReturnExisting: true }).then(() => true, () => false)
  }

  #newAccount (): { termsOfServiceAgreed: true, contact?: string[] } {
    const { email } = this.#opts
    return { termsOfServiceAgreed: true, ...(email === undefined ? {} : { contact: [`mailto:${email}`] }) }
  }
}
