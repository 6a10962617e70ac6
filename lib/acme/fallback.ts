// Several CAs in order of preference: an order the first cannot serve goes to the next.
import { isWhole, type Certificate, type CertificateSummary } from '../certificate'
import { errorFields, type Logger } from '../events'
import type { LockWaitListener } from '../fleet/locks'
import { authorityKeyId, type RenewalInfo } from './ari'
import { isCaUnavailable, type Issuer, type IssueOptions, type KeyType } from './issuer'

/**
 * How long a CA that could not serve an order is passed over (ms): later
 * orders go straight to the next one meanwhile, then try it first again.
 */
export const CA_RETRY_AFTER = 60_000

/**
 * The CAs of options.directoryUrl as one certificate source. Each order is
 * placed with the first CA that is not passed over; one that is unreachable,
 * answers 5xx or says it is rate limited (after the retries of its own
 * requests) is passed over for CA_RETRY_AFTER and the order goes to the next.
 * A certificate's renewal information, its replacement (`replaces`) and its
 * revocation go to the CA that issued it, known by its issuer's key
 * identifier: remembered from the certificates each CA issues here, else
 * found by asking each CA for the certificate's renewal information.
 */
export class FallbackIssuer {
  readonly #issuers: readonly Issuer[]
  readonly #log: Logger
  /** When each CA may be tried first again (ms since the epoch), by index. */
  readonly #passedOver = new Map<number, number>()
  /** The CA (index) of each issuer key identifier seen. */
  readonly #issuerOf = new Map<string, number>()

  constructor (issuers: readonly Issuer[], log: Logger) {
    this.#issuers = issuers
    this.#log = log
  }

  /** Gets the first CA that is not passed over ready (its account, its directory). */
  async prepare (onLockWait?: LockWaitListener): Promise<void> {
    let last: unknown
    for (const i of this.#order()) {
      try {
        await this.#issuers[i].prepare(onLockWait)
        return
      } catch (err) {
        if (!this.#passOver(i, err)) throw err
        last = err
      }
    }
    throw last
  }

  clockOffset (): number | undefined {
    return this.#issuers[this.#order()[0]].clockOffset()
  }

  async issue (name: string, keyType: KeyType, signal: AbortSignal, { replaces }: IssueOptions = {}): Promise<{ key: string, chain: string }> {
    const from = replaces === undefined ? undefined : this.#known(replaces)
    let last: unknown
    for (const i of this.#order()) {
      try {
        // `replaces` names a certificate to the CA that issued it, and to no other (it would refuse it).
        const issued = await this.#issuers[i].issue(name, keyType, signal, from === i ? { replaces } : {})
        this.#remember(issued.chain, i)
        return issued
      } catch (err) {
        if (signal.aborted || !this.#passOver(i, err)) throw err
        last = err
      }
    }
    throw last
  }

  async renewalInfo (cert: Certificate, signal: AbortSignal): Promise<RenewalInfo | undefined> {
    const known = this.#known(cert)
    if (known !== undefined) return await this.#issuers[known].renewalInfo(cert, signal)
    // Not issued here since this process started: the CA that knows it answers.
    let last: unknown
    let answered = false
    for (const [i, issuer] of this.#issuers.entries()) {
      try {
        const info = await issuer.renewalInfo(cert, signal)
        if (info === undefined) continue
        this.#remember(cert.chain, i)
        return info
      } catch (err) {
        if (signal.aborted) throw err
        last = err
        answered = true
      }
    }
    if (answered) throw last
    return undefined
  }

  /** The issuing CA's directory when it is known (from the chain, when `cert` has it), else whether any CA's has `renewalInfo` (one of them may know `cert`). */
  async offersRenewalInfo (cert: CertificateSummary): Promise<boolean> {
    const known = this.#known(cert)
    if (known !== undefined) return await this.#issuers[known].offersRenewalInfo()
    const offers = await Promise.all(this.#issuers.map((issuer) => issuer.offersRenewalInfo().catch(() => true)))
    return offers.includes(true)
  }

  async revoke (cert: Certificate, reason: number | undefined, signal: AbortSignal): Promise<void> {
    await this.#issuers[this.#known(cert) ?? 0].revoke(cert, reason, signal)
  }

  /** The CAs to try, in order: those not passed over first, the others after (better a CA that may be back than none). */
  #order (): number[] {
    const now = Date.now()
    const all = this.#issuers.map((_, i) => i)
    return [...all.filter((i) => (this.#passedOver.get(i) ?? 0) <= now), ...all.filter((i) => (this.#passedOver.get(i) ?? 0) > now)]
  }

  /** Passes CA `i` over after `err`, if it is the CA's inability to serve and another CA may; says whether it did. */
  #passOver (i: number, err: unknown): boolean {
    if (this.#issuers.length === 1 || !isCaUnavailable(err)) return false
    this.#passedOver.set(i, Date.now() + CA_RETRY_AFTER)
    this.#log.warn({ ca: this.#issuers[i].directoryUrl, retryAt: new Date(Date.now() + CA_RETRY_AFTER), error: errorFields(err) }, 'the CA cannot serve orders now: trying the next one')
    return true
  }

  #remember (chain: string, i: number): void {
    const keyId = authorityKeyId(chain)
    if (keyId !== undefined) this.#issuerOf.set(keyId, i)
  }

  #known (cert: CertificateSummary): number | undefined {
    const keyId = isWhole(cert) ? authorityKeyId(cert.chain) : undefined
    return keyId === undefined ? undefined : this.#issuerOf.get(keyId)
  }
}
