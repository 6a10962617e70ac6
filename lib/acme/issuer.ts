// One issuance with acme-client: account, order, challenges, finalize.
import { AsyncLocalStorage } from 'node:async_hooks'
import * as acme from 'acme-client'
import type { FleetLocks, LockWaitListener } from '../fleet/locks'
import { sleep, untilAborted } from '../signals'
import { storeKeys, storeLimits } from '../store/keys'
import { readBounded, type CertStore } from '../store/store'
import type { ChallengeSolver } from './challenges'
import { retrying } from './retry'

export type KeyType = 'ecdsa' | 'rsa'

export interface IssuerOptions {
  directoryUrl: string
  email?: string
  externalAccountBinding?: { kid: string, hmacKey: string }
  store: CertStore
  /** Takes the account's lock when the key must be created or registered. */
  locks: FleetLocks
  /** In order of preference: each authorization is completed with the first one the CA offers. */
  solvers: readonly ChallengeSolver[]
}

/*
 * acme-client has no request timeout and cannot be cancelled: a CA that accepts
 * connections and never answers would hold an order (and its cluster lock) for
 * ever, and an order abandoned at close would go on polling. Every request made
 * on behalf of an order runs with that order's signal in async context; a guard
 * on acme-client's axios instance gives those requests a timeout and refuses new
 * ones once the signal has aborted (an error without `config`, which acme-client
 * does not retry). Requests acme-client makes for anyone else are left alone.
 */
const REQUEST_TIMEOUT = 30_000
/** The longest one order may take, validation and polling included. */
const ORDER_DEADLINE = 5 * 60_000
const ordering = new AsyncLocalStorage<AbortSignal>()
let guarded = false

/*
 * The CA's clock, as its answers' Date headers show it: the CA's time minus
 * this machine's when the answer arrived (ms, per CA origin; the header has a
 * resolution of a second). Noted from every answer acme-client receives.
 */
const caClockOffsets = new Map<string, number>()

function installRequestGuard (): void {
  if (guarded) return
  guarded = true
  acme.axios.interceptors.request.use((config) => {
    const signal = ordering.getStore()
    if (signal === undefined) return config
    signal.throwIfAborted()
    config.timeout ||= REQUEST_TIMEOUT
    return config
  })
  acme.axios.interceptors.response.use((response) => {
    noteClock(response)
    return response
  }, (err: unknown) => {
    noteClock((err as { response?: ClockSample } | undefined)?.response)
    throw err
  })
}

interface ClockSample { headers?: Record<string, unknown>, config?: { url?: string } }

function noteClock (response: ClockSample | undefined): void {
  const date = Date.parse(String(response?.headers?.date))
  const url = response?.config?.url
  if (!Number.isFinite(date) || url === undefined) return
  try {
    caClockOffsets.set(new URL(url).origin, date - Date.now())
  } catch {}
}

/** One issuance with acme-client: account, order, challenges, finalize. */
export class Issuer {
  readonly #opts: IssuerOptions
  readonly #origin: string
  #client: Promise<acme.Client> | undefined
  /** Who hears of a wait for the account's lock: the orders waiting for the account. */
  readonly #accountWaiters = new Set<LockWaitListener>()

  constructor (opts: IssuerOptions) {
    this.#opts = opts
    this.#origin = new URL(opts.directoryUrl).origin
    installRequestGuard()
  }

  /**
   * Looks the account up (or registers it), so that issue() finds it ready;
   * resolves once it is (which means the CA has answered, see clockOffset()).
   * `onLockWait` hears of a wait for the account's lock meanwhile.
   */
  async prepare (onLockWait?: LockWaitListener): Promise<void> {
    if (onLockWait !== undefined) this.#accountWaiters.add(onLockWait)
    try {
      await this.#account(new AbortController().signal)
    } finally {
      if (onLockWait !== undefined) this.#accountWaiters.delete(onLockWait)
    }
  }

  /** The CA's clock minus this machine's (ms), from the Date header of the CA's last answer; undefined before any. */
  clockOffset (): number | undefined {
    return caClockOffsets.get(this.#origin)
  }

  /** Orders a certificate for `name`; resolves with its PEM key and chain. */
  issue (name: string, keyType: KeyType, signal: AbortSignal): Promise<{ key: string, chain: string }> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(ORDER_DEADLINE)])
    return ordering.run(bounded, () => this.#issue(name, keyType, bounded))
  }

  async #issue (name: string, keyType: KeyType, signal: AbortSignal): Promise<{ key: string, chain: string }> {
    // The key and CSR (about 10 ms of CPU) are made while the account is looked up.
    const [client, [key, csr]] = await Promise.all([
      this.#account(signal),
      newKey(keyType).then((key) => acme.crypto.createCsr({ commonName: name, altNames: [name] }, key))
    ])
    let order = await client.createOrder({ identifiers: [{ type: 'dns', value: name }] })
    const pending = (await client.getAuthorizations(order)).filter((authz) => authz.status !== 'valid')
    const { solvers } = this.#opts
    const published: Array<() => Promise<void>> = []
    try {
      for (const authz of pending) {
        const [solver, challenge] = pick(solvers, authz)
        // In the store before the CA is told: its request may reach any instance.
        await solver.publish(authz, challenge, await client.getChallengeKeyAuthorization(challenge))
        published.push(() => solver.withdraw(authz, challenge))
        signal.throwIfAborted()
        await client.completeChallenge(challenge)
      }
      order = await this.#until(client, order, 'ready', signal)
    } finally {
      // Not awaited: the CA is done with the answers, the certificate need not wait for their removal.
      for (const withdraw of published) withdraw().catch(() => {})
    }
    order = await this.#until(client, await client.finalizeOrder(order, csr), 'valid', signal)
    return { key: key.toString(), chain: await client.getCertificate(order) }
  }

  /**
   * Polls the order until it reaches `status` (or a later one): at once, then
   * after 100 ms, doubling to 2 s. acme-client's own polling starts at 5 s and cannot be
   * cancelled; this one stops as soon as `signal` aborts.
   */
  async #until (client: acme.Client, order: acme.Order, status: 'ready' | 'valid', signal: AbortSignal): Promise<acme.Order> {
    for (let attempt = 0; ; attempt++) {
      if (order.status === 'valid' || order.status === status) return order
      if (order.status === 'invalid') throw new Error(await problem(client, order))
      // The first look is at once: a fast CA has often finished by then.
      if (attempt > 0) await sleep(Math.min(50 * 2 ** attempt, 2000), signal)
      order = await client.getOrder(order)
    }
  }

  /**
   * The account, registered once per process and shared by every order. The
   * registration has its own deadline and request context: an order that gives
   * up waiting for it does not fail the orders that share it.
   */
  #account (signal: AbortSignal): Promise<acme.Client> {
    if (this.#client === undefined) {
      const own = AbortSignal.timeout(ORDER_DEADLINE)
      this.#client = ordering.run(own, () => this.#register(own)).catch((err: unknown) => {
        this.#client = undefined
        throw err
      })
    }
    return untilAborted(this.#client, signal)
  }

  /*
   * The usual path is one request: the key is in the store and the CA knows it.
   * Otherwise, under the cluster lock, the key is created (or found new to this
   * CA, e.g. another directory URL) and registered before the lock is released.
   * A new key is written while the CA registers it: an instance that reads it
   * meanwhile finds it unknown to the CA, so it takes this lock, and by then the
   * account exists (or, if registering failed, it registers the stored key).
   */
  async #register (signal: AbortSignal): Promise<acme.Client> {
    const { store, locks } = this.#opts
    const stored = await readBounded(store, storeKeys.account, storeLimits.account)
    if (stored !== undefined) {
      const client = this.#newClient(stored)
      if (await this.#lookUp(client)) return client
    }
    const onWait = (holder: string | undefined): void => { for (const waiter of this.#accountWaiters) waiter(holder) }
    const lock = await locks.take(storeKeys.account, signal, { onWait })
    try {
      let accountKey = await readBounded(store, storeKeys.account, storeLimits.account)
      const created = accountKey === undefined
      accountKey ??= await acme.crypto.createPrivateEcdsaKey('P-256')
      const client = this.#newClient(accountKey)
      const saved = created ? store.put(storeKeys.account, accountKey) : undefined
      saved?.catch(() => {})
      if (created || !(await this.#lookUp(client))) await client.createAccount(this.#newAccount())
      await saved
      return client
    } finally {
      // Not awaited: the orders waiting for the account need not wait for the lease's release too.
      void lock.release()
    }
  }

  #newClient (accountKey: Buffer): acme.Client {
    const { directoryUrl, externalAccountBinding } = this.#opts
    // 429s, 5xx and network errors retried with a fresh nonce, the CA's Retry-After, within the order's signal (retry.ts).
    return retrying(new acme.Client({ directoryUrl, accountKey, externalAccountBinding }), () => ordering.getStore())
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

/** The first of `solvers` whose type the CA offers for `authz`, with that challenge. */
function pick (solvers: readonly ChallengeSolver[], authz: acme.Authorization): [ChallengeSolver, acme.Authorization['challenges'][number]] {
  for (const solver of solvers) {
    const challenge = authz.challenges.find((c) => c.type === solver.type)
    if (challenge !== undefined) return [solver, challenge]
  }
  throw new Error(`the CA offers none of ${solvers.map((s) => s.type).join(', ')} for ${authz.identifier.value} (options.challenges)`)
}

/** Why the CA refused an order: the first failed challenge's problem detail. */
async function problem (client: acme.Client, order: acme.Order): Promise<string> {
  const authorizations = await client.getAuthorizations(order).catch(() => [])
  for (const authz of authorizations) {
    // RFC 8555 problem documents; acme-client types them as plain objects.
    const error = authz.challenges.find((c) => c.error !== undefined)?.error as { type?: string, detail?: string } | undefined
    if (error !== undefined) return `${authz.identifier.value}: ${error.detail ?? error.type ?? 'validation failed'}`
  }
  return 'the CA marked the order invalid'
}

function newKey (keyType: KeyType): Promise<Buffer> {
  return keyType === 'rsa' ? acme.crypto.createPrivateRsaKey(2048) : acme.crypto.createPrivateEcdsaKey('P-256')
}
