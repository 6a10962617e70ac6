// TLS-ALPN-01: challenge certificates in the store, and the ALPNCallback that serves them.
import type { SecureContext, TLSSocket } from 'node:tls'
import * as acme from 'acme-client'
import { decodeBundle, encodeBundle, toSecureContext } from '../certificate'
import { FST_AUTOCERT_CHALLENGE_BUSY } from '../errors'
import type { Logger } from '../events'
import { addressOfReverse, normalizeAddress, normalizeName, reverseName } from '../names'
import { storeKeys, storeLimits } from '../store/keys'
import { CorruptLog } from '../store/corrupt-log'
import { readRecord, type CertStore } from '../store/store'
import { CHALLENGE_LOOKUP_LIMITS, ChallengeLookups } from './challenge-lookups'
import type { ChallengeSolver } from './challenges'

/** The ALPN protocol of RFC 8737: the CA validating offers it, alone. */
const ACME_TLS_1 = 'acme-tls/1'

export type ALPNCallbackFn = (this: TLSSocket, hello: { servername: string, protocols: string[] }) => string | undefined

// Connections taken for the CA's validation: their SNICallback serves the
// challenge certificate instead of the real one.
const validations = new WeakSet<TLSSocket>()

/**
 * An ALPNCallback that selects what Node selects from `ALPNProtocols:
 * serverProtocols` (the first of them the client offers, in the server's order;
 * none: `undefined`, which fails the handshake with no_application_protocol just
 * as Node does). A ClientHello without ALPN never calls it.
 *
 * The exception is the CA validating: a TLS 1.3 ClientHello offering acme-tls/1
 * alone, for a well-formed name, gets acme-tls/1. Only TLS 1.3: there OpenSSL
 * asks for the protocol before the certificate, so the SNICallback that follows
 * can serve the challenge certificate; over TLS 1.2 the certificate is already
 * chosen when this runs, and acme-tls/1 gets Node's answer (refused). CAs
 * validate over TLS 1.3 when the server offers it, as Node does by default.
 */
export function alpnCallback (serverProtocols: readonly string[]): ALPNCallbackFn {
  return function ({ servername, protocols }) {
    if (protocols.length === 1 && protocols[0] === ACME_TLS_1 && this.getProtocol() === 'TLSv1.3' &&
        normalizeName(servername) !== undefined) {
      validations.add(this)
      return ACME_TLS_1
    }
    return serverProtocols.find((p) => protocols.includes(p))
  }
}

/** True, once, for a connection alpnCallback() took for the CA's validation. */
export function isValidation (socket: TLSSocket): boolean {
  return validations.delete(socket)
}

/**
 * TLS-ALPN-01 challenge certificates (RFC 8737), kept in the store under
 * `<name>+tls-alpn-01` from before the CA is asked to validate until it is done,
 * so whichever instance the CA's connection reaches can answer it.
 */
export class TlsAlpn01Challenges implements ChallengeSolver {
  readonly type = 'tls-alpn-01'
  readonly #store: CertStore
  // Contexts this instance published: served without a store round trip.
  readonly #local = new Map<string, SecureContext>()
  // The issuer does not wait for withdrawals: a later challenge for the same name
  // waits here, or the late delete would remove the new certificate.
  readonly #withdrawing = new Map<string, Promise<void>>()

  // Challenges other instances published: read from the store within CHALLENGE_LOOKUP_LIMITS.inFlight.
  // Names are never remembered as unknown, unlike HTTP-01 tokens: a name is no
  // secret, and anyone could keep it "unknown" on every instance just before the CA asks.
  readonly #lookups: ChallengeLookups<SecureContext>
  // An unusable stored challenge is asked for at every acme-tls/1 connection for its name: logged once.
  readonly #corrupt: CorruptLog

  constructor (store: CertStore, log: Logger) {
    this.#store = store
    this.#corrupt = new CorruptLog(log, 'ignoring unusable stored TLS-ALPN-01 challenge')
    this.#lookups = new ChallengeLookups((name) => this.#stored(name), log, { ...CHALLENGE_LOOKUP_LIMITS, unknownTtl: 0 })
  }

  async publish (authz: acme.Authorization, _challenge: { token: string }, keyAuthorization: string): Promise<void> {
    const name = validationName(authz.identifier)
    await this.#withdrawing.get(name)?.catch(() => {})
    // A throwaway P-256 key (about 10 ms; acme-client's default RSA key takes
    // 200-700 ms). Its certificate's key usage would make OpenSSL refuse it for
    // every TLS 1.2 cipher, but it is only ever served over TLS 1.3 (alpnCallback).
    const [key, cert] = await acme.crypto.createAlpnCertificate(authz, keyAuthorization, await acme.crypto.createPrivateEcdsaKey('P-256'))
    const bundle = encodeBundle({ key: key.toString(), chain: cert.toString() })
    this.#local.set(name, contextOf(name, bundle))
    await this.#store.put(storeKeys.tlsAlpn01(name), bundle)
  }

  withdraw (authz: acme.Authorization): Promise<void> {
    const name = validationName(authz.identifier)
    this.#local.delete(name)
    const done = this.#store.delete(storeKeys.tlsAlpn01(name)).finally(() => {
      if (this.#withdrawing.get(name) === done) this.#withdrawing.delete(name)
    })
    this.#withdrawing.set(name, done)
    return done
  }

  /**
   * The context that answers the CA's acme-tls/1 connection for `servername`,
   * or undefined when no challenge is pending for it. Malformed names never
   * reach the store, nor does a challenge this instance published; the
   * store's reads are shared by the connections asking for one name at once,
   * and refused past CHALLENGE_LOOKUP_LIMITS.inFlight (FST_AUTOCERT_CHALLENGE_BUSY).
   * A stored certificate that is not one for the name (over its size limit,
   * not PEM, another name's) is no challenge, and logged once; a store failure
   * rejects (logged once per interval by the lookups).
   */
  async context (servername: string, connection: object): Promise<SecureContext | undefined> {
    const name = normalizeName(servername)
    if (name === undefined) return undefined
    const local = this.#local.get(name)
    if (local !== undefined) return local
    const found = await this.#lookups.lookup(name, connection)
    if ('refused' in found) throw new FST_AUTOCERT_CHALLENGE_BUSY()
    return found.value
  }

  async #stored (name: string): Promise<SecureContext | undefined> {
    return await readRecord(this.#store, storeKeys.tlsAlpn01(name), storeLimits.tlsAlpn01, (data) => contextOf(name, data), this.#corrupt)
  }
}

/**
 * The SNI of the CA's validation connection for `identifier`: its name, or for
 * an IP address its reverse-mapping name (RFC 8738 section 6).
 */
function validationName ({ type, value }: acme.Authorization['identifier']): string {
  const address = type === 'ip' ? normalizeAddress(value) : undefined
  return address === undefined ? value : reverseName(address)
}

/**
 * The context of a stored challenge for the validation name `name`: key then
 * certificate, PEM (the certificates' own format), for the name, or the address
 * a reverse-mapping name stands for.
 */
function contextOf (name: string, bundle: Buffer | string): SecureContext {
  return toSecureContext(decodeBundle(addressOfReverse(name) ?? name, storeKeys.tlsAlpn01(name), bundle))
}
