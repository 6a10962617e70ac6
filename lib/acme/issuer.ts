// One issuance with acme-client: account, order, challenges, finalize.
import { AsyncLocalStorage } from 'node:async_hooks'
import { isIP } from 'node:net'
import * as acme from 'acme-client'
import type { Certificate } from '../certificate'
import { FST_AUTOCERT_INVALID_PROFILE } from '../errors'
import { errorMessage } from '../events'
import type { FleetLocks, LockWaitListener } from '../fleet/locks'
import { sleep, untilAborted } from '../signals'
import { storeKeys, storeLimits } from '../store/keys'
import { readBounded, type CertStore } from '../store/store'
import { certificateId, parseRenewalInfo, type RenewalInfo } from './ari'
import type { ChallengeSolver } from './challenges'
import { CaRefusal, parseRetryAfter, retrying, retryingRequest } from './retry'

export type KeyType = 'ecdsa' | 'rsa'

export interface IssuerOptions {
  directoryUrl: string
  email?: string
  externalAccountBinding?: { kid: string, hmacKey: string }
  /** Where the account key of this CA is kept (a storeKeys.account* key); also the name of its lock. Default: storeKeys.account. */
  accountKey?: string
  /** The CA's profile (draft-ietf-acme-profiles) named in every new order; checked against the directory's `meta.profiles`. */
  profile?: string
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
const SERVER_INTERNAL = 'urn:ietf:params:acme:error:serverInternal'
/** The profile Let's Encrypt issues certificates for IP addresses under. */
const SHORT_LIVED = 'shortlived'
const ordering = new AsyncLocalStorage<RequestContext>()

/**
 * The async context of the requests made on behalf of one order (or check, or
 * registration): its signal, and the last ACME problem document (RFC 8555 6.7)
 * the CA answered with. acme-client turns a problem into an Error of its
 * `detail` alone; the type is read from here.
 */
interface RequestContext {
  signal: AbortSignal
  /** The CA's last error answer: its status, and its problem type when it sent a problem document. */
  problem?: { type?: string, status: number }
}

/**
 * Runs `fn` with its requests bound to `signal` (see RequestContext). An
 * error that shows the CA unable to serve (see isCaUnavailable) is marked so.
 */
async function inContext<T> (signal: AbortSignal, fn: (context: RequestContext) => Promise<T>): Promise<T> {
  const context: RequestContext = { signal }
  try {
    return await ordering.run(context, () => fn(context))
  } catch (err) {
    if (!signal.aborted && unavailable(err, context) && typeof err === 'object' && err !== null) caUnavailable.add(err)
    throw err
  }
}

/** Errors that show the CA unable to serve: it could not be reached, it failed (5xx), or it said it is rate limited. */
const caUnavailable = new WeakSet<object>()

/** Network failures: the CA refused the connection, reset it, could not be found or did not answer in time. */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ECONNABORTED', 'EPIPE'])

function unavailable (err: unknown, context: RequestContext): boolean {
  // A 429 or 5xx answer retried as long as the order may (retry.ts).
  if (err instanceof CaRefusal) return true
  const { problem } = context
  if (problem !== undefined && (problem.status >= 500 || problem.status === 429 || problem.type === 'urn:ietf:params:acme:error:rateLimited')) return true
  const code = (err as { code?: unknown } | undefined)?.code
  return typeof code === 'string' && UNREACHABLE.has(code)
}

/** True for an error of an order or account lookup that shows its CA unable to serve: another CA may. */
export function isCaUnavailable (err: unknown): boolean {
  return typeof err === 'object' && err !== null && caUnavailable.has(err)
}
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
    const signal = ordering.getStore()?.signal
    if (signal === undefined) return config
    signal.throwIfAborted()
    config.timeout ||= REQUEST_TIMEOUT
    return config
  })
  acme.axios.interceptors.response.use((response) => {
    noteClock(response)
    noteProblem(response)
    return response
  }, (err: unknown) => {
    const { response } = err as { response?: ClockSample & { status: number } }
    noteClock(response)
    noteProblem(response)
    throw err
  })
}

interface ClockSample { headers?: Record<string, unknown>, config?: { url?: string } }

/** Notes a CA's error answer (its status, its problem type) in its request's context. */
function noteProblem (response: { status: number, data?: unknown } | undefined): void {
  const context = ordering.getStore()
  if (context === undefined) return
  // Only the last answer counts: an error answer retried with success is no error of the order's.
  const type = (response?.data as { type?: unknown } | undefined)?.type
  context.problem = response === undefined || response.status < 400 ? undefined : { ...(typeof type === 'string' ? { type } : {}), status: response.status }
}

function noteClock (response: ClockSample | undefined): void {
  const date = Date.parse(String(response?.headers?.date))
  const url = response?.config?.url
  if (!Number.isFinite(date) || url === undefined) return
  try {
    caClockOffsets.set(new URL(url).origin, date - Date.now())
  } catch {}
}

/** The parts of an ACME directory (RFC 8555 7.1.1) the issuer reads itself. */
interface Directory {
  renewalInfo?: string
  meta?: { profiles?: Record<string, unknown> }
}

/** A new order as sent: RFC 8555's, with a profile and the certificate it replaces. */
type OrderRequest = Parameters<acme.Client['createOrder']>[0] & { profile?: string, replaces?: string }

/** How long a directory read is kept: acme-client keeps its own copy as long. */
const DIRECTORY_MAX_AGE = 24 * 3_600_000

/** An order's options: the certificate it replaces (RFC 9773 `replaces`), when it renews one this CA issued. */
export interface IssueOptions {
  replaces?: Certificate
}

/**
 * The CA refused the new order because of its `replaces`: the certificate
 * already has a replacement order (RFC 9773 `alreadyReplaced`), or the CA
 * does not take it as one it may replace (`alreadyReplaced` false: another
 * account's, one it does not know). An order without `replaces` may go ahead.
 */
export class ReplacesRefusedError extends Error {
  readonly alreadyReplaced: boolean

  constructor (message: string, alreadyReplaced: boolean, options?: ErrorOptions) {
    super(message, options)
    this.alreadyReplaced = alreadyReplaced
  }
}

/** One issuance with acme-client: account, order, challenges, finalize. */
export class Issuer {
  readonly #opts: IssuerOptions
  readonly #origin: string
  #client: Promise<acme.Client> | undefined
  #directory: { at: number, read: Promise<Directory> } | undefined
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
      await Promise.all([this.#account(new AbortController().signal), this.#readDirectory()])
    } finally {
      if (onLockWait !== undefined) this.#accountWaiters.delete(onLockWait)
    }
  }

  /** The CA's directory URL. */
  get directoryUrl (): string {
    return this.#opts.directoryUrl
  }

  /** The CA's clock minus this machine's (ms), from the Date header of the CA's last answer; undefined before any. */
  clockOffset (): number | undefined {
    return caClockOffsets.get(this.#origin)
  }

  /**
   * Orders a certificate for `name`; resolves with its PEM key and chain.
   * `replaces` names the certificate it renews to the CA (RFC 9773); a CA that
   * refuses it rejects with ReplacesRefusedError.
   */
  issue (name: string, keyType: KeyType, signal: AbortSignal, { replaces }: IssueOptions = {}): Promise<{ key: string, chain: string }> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(ORDER_DEADLINE)])
    return inContext(bounded, (context) => this.#issue(name, keyType, context, replaces))
  }

  /**
   * The CA's renewal information for `cert` (RFC 9773), or undefined when the
   * CA publishes none (no `renewalInfo` in its directory). Rejects when the
   * request fails or the answer is unusable.
   */
  async renewalInfo (cert: Certificate, signal: AbortSignal): Promise<RenewalInfo | undefined> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(REQUEST_TIMEOUT)])
    return await inContext(bounded, async () => {
      const { renewalInfo } = await untilAborted(this.#readDirectory(), bounded)
      if (renewalInfo === undefined) return undefined
      const url = `${renewalInfo.replace(/\/+$/, '')}/${certificateId(cert.chain)}`
      const response = await acme.axios.get(url, { validateStatus: (status: number) => status === 200, ...retryingRequest(bounded) })
      return parseRenewalInfo(response.data, parseRetryAfter(response.headers['retry-after'], response.headers.date, Date.now()))
    })
  }

  /** Whether the directory has `renewalInfo` (read once a day: no request per certificate). */
  async offersRenewalInfo (): Promise<boolean> {
    return (await this.#readDirectory()).renewalInfo !== undefined
  }

  /** Revokes `cert` at the CA with the fleet's account; `reason` is an RFC 5280 CRLReason code (default: none given, 0). */
  async revoke (cert: Certificate, reason: number | undefined, signal: AbortSignal): Promise<void> {
    const bounded = AbortSignal.any([signal, AbortSignal.timeout(ORDER_DEADLINE)])
    await inContext(bounded, async () => {
      const client = await this.#account(bounded)
      await client.revokeCertificate(cert.chain, reason === undefined ? {} : { reason })
    })
  }

  async #issue (name: string, keyType: KeyType, context: RequestContext, replaces: Certificate | undefined): Promise<{ key: string, chain: string }> {
    const { signal } = context
    const address = isIP(name) !== 0
    // The key and CSR (about 10 ms of CPU) are made while the account is looked up.
    const [client, [key, csr]] = await Promise.all([
      this.#account(signal),
      // An address goes in the SAN only: a CN holds a host name (and Let's Encrypt puts none in a short-lived certificate).
      newKey(keyType).then((key) => acme.crypto.createCsr(address ? { altNames: [name] } : { commonName: name, altNames: [name] }, key))
    ])
    const profile = address ? await this.#addressProfile() : this.#opts.profile
    const replacing = replaces === undefined ? undefined : await this.#replaces(replaces)
    // acme-client sends the request as given; its type knows neither field (draft-ietf-acme-profiles, RFC 9773).
    const request: OrderRequest = {
      identifiers: [{ type: address ? 'ip' : 'dns', value: name }],
      ...(profile === undefined ? {} : { profile }),
      ...(replacing === undefined ? {} : { replaces: replacing })
    }
    let order = await client.createOrder(request).catch((err: unknown) => {
      // Refused for its `replaces` (a 4xx about the order, not the CA's failure), or a serverInternal answer that
      // lasted through the retries (Pebble 2.10 answers 500 for about one certificate in 200 that it cannot find
      // the order of): the order may go once without it. A 429, a gateway's 5xx or a network error stays the CA's.
      const status = context.problem?.status ?? 0
      const refused = status >= 400 && status < 500 && status !== 429 && !(err instanceof CaRefusal)
      const internal = (err instanceof CaRefusal ? err.type : context.problem?.type) === SERVER_INTERNAL
      if (replacing !== undefined && (refused || internal)) {
        throw new ReplacesRefusedError(errorMessage(err), context.problem?.type === 'urn:ietf:params:acme:error:alreadyReplaced', { cause: err })
      }
      throw err
    })
    const pending = (await client.getAuthorizations(order)).filter((authz) => authz.status !== 'valid')
    const { solvers } = this.#opts
    const published: Array<() => Promise<void>> = []
    try {
      for (const authz of pending) {
        const [solver, challenge] = pick(solvers, authz)
        // Withdrawn even when publishing fails half-way (a DNS record may be set all the same).
        published.push(() => solver.withdraw(authz, challenge))
        // In the store (or the DNS) before the CA is told: its request may reach any instance.
        await solver.publish(authz, challenge, await client.getChallengeKeyAuthorization(challenge), signal)
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
   * The profile of an order for an IP address: `shortlived` when the CA offers
   * it (Let's Encrypt issues for addresses under no other), else options.profile.
   */
  async #addressProfile (): Promise<string | undefined> {
    const { meta } = await this.#readDirectory()
    return meta?.profiles?.[SHORT_LIVED] !== undefined ? SHORT_LIVED : this.#opts.profile
  }

  /**
   * The `replaces` of an order renewing `cert`: its ARI identifier, when the
   * CA publishes renewal information (a CA without it knows no `replaces`)
   * and the certificate has an authority key identifier.
   */
  async #replaces (cert: Certificate): Promise<string | undefined> {
    if (!(await this.offersRenewalInfo())) return undefined
    try {
      return certificateId(cert.chain)
    } catch {
      return undefined
    }
  }

  /**
   * The CA's directory, read once a day (and again after a failed read), and
   * the check of options.profile against the profiles it offers: an unknown
   * profile rejects with FST_AUTOCERT_INVALID_PROFILE, which names them.
   */
  #readDirectory (): Promise<Directory> {
    const now = Date.now()
    if (this.#directory === undefined || now - this.#directory.at > DIRECTORY_MAX_AGE) {
      const read = this.#fetchDirectory()
      this.#directory = { at: now, read }
      read.catch(() => { if (this.#directory?.read === read) this.#directory = undefined })
    }
    return this.#directory.read
  }

  async #fetchDirectory (): Promise<Directory> {
    const { directoryUrl, profile } = this.#opts
    const own = AbortSignal.timeout(REQUEST_TIMEOUT)
    // Retried as the order's requests are (retry.ts): a CA that is down fails the read within seconds, not acme-client's 75.
    const response = await inContext(own, async () => await acme.axios.get(directoryUrl, { validateStatus: (status: number) => status === 200, ...retryingRequest(own) }))
    const directory = (typeof response.data === 'object' && response.data !== null ? response.data : {}) as Directory
    if (profile !== undefined) {
      const profiles = Object.keys(directory.meta?.profiles ?? {})
      if (!profiles.includes(profile)) throw new FST_AUTOCERT_INVALID_PROFILE(JSON.stringify(profile), profiles.length === 0 ? 'none' : profiles.join(', '))
    }
    return { renewalInfo: typeof directory.renewalInfo === 'string' ? directory.renewalInfo : undefined, meta: directory.meta }
  }

  /**
   * The account, registered once per process and shared by every order. The
   * registration has its own deadline and request context: an order that gives
   * up waiting for it does not fail the orders that share it.
   */
  #account (signal: AbortSignal): Promise<acme.Client> {
    if (this.#client === undefined) {
      const own = AbortSignal.timeout(ORDER_DEADLINE)
      this.#client = inContext(own, async () => await this.#register(own)).catch((err: unknown) => {
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
    const { accountKey: accountStoreKey = storeKeys.account } = this.#opts
    const stored = await readBounded(store, accountStoreKey, storeLimits.account)
    if (stored !== undefined) {
      const client = this.#newClient(stored)
      if (await this.#lookUp(client)) return client
    }
    const onWait = (holder: string | undefined): void => { for (const waiter of this.#accountWaiters) waiter(holder) }
    const lock = await locks.take(accountStoreKey, signal, { onWait })
    try {
      let accountKey = await readBounded(store, accountStoreKey, storeLimits.account)
      const created = accountKey === undefined
      accountKey ??= await acme.crypto.createPrivateEcdsaKey('P-256')
      const client = this.#newClient(accountKey)
      const saved = created ? store.put(accountStoreKey, accountKey) : undefined
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
    return retrying(new acme.Client({ directoryUrl, accountKey, externalAccountBinding }), () => ordering.getStore()?.signal)
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
    // An address has no DNS name to put a record under (RFC 8738).
    if (authz.identifier.type === 'ip' && solver.type === 'dns-01') continue
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
