// What the plugin tells the outside: logger, events, status() and error fields.
import { EventEmitter } from 'node:events'
import type { KeyType } from './acme/issuer'
import type { LockKind } from './fleet/locks'
// Shared by the options, the manager and both front ends.

/** The subset of a pino / Fastify logger the plugin writes to: an object first, then a message. */
export interface Logger {
  debug (obj: object, msg: string): void
  info (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  error (obj: object, msg: string): void
}

/** A certificate, as events report it. */
export interface CertificateEvent {
  domain: string
  keyType: KeyType
  /** Upper-case hex. */
  serial: string
  notAfter: Date
}

/**
 * Why no order is placed for a while: the name's failures (shared by the
 * fleet), the fleet's spent order budget, or this machine's clock, far off the CA's.
 */
export type BackoffReason = 'failures' | 'budget' | 'clock'

/** Which of the fleet's locks an order waits for: the name's, the order log's (the budget) or the account key's. */
export type { LockKind } from './fleet/locks'

/** The events of `fastify.autocert.on()` and `AutocertServer.on()`, with their payloads. */
export interface AutocertEvents {
  /** This instance ordered the first certificate it serves for `domain`. */
  obtained: [CertificateEvent]
  /** This instance ordered a certificate to replace the one it served (`previousSerial`). */
  renewed: [CertificateEvent & { previousSerial: string }]
  /** This instance revoked a certificate of `domain` at the CA (`reason`: its RFC 5280 code, when given), after replacing it with `replacement`. */
  revoked: [CertificateEvent & { replacement: string, reason?: number }]
  /** A certificate was taken from the store: at start-up, or one another instance obtained. */
  loaded: [CertificateEvent]
  /** An order failed, or the store could not be read; `retryAt` when a retry is scheduled. */
  failed: [{ domain: string, error: { message: string, code?: string }, retryAt?: Date }]
  /** No order for `domain` before `retryAt`: after failures (shared by the fleet), or the fleet's order budget is spent. */
  backoff: [{ domain: string, retryAt: Date, reason: BackoffReason }]
  /**
   * An order for `domain` waits for a lock held by `holder` (that instance's
   * instanceId, when the store knows it): the name's own, the fleet's order
   * log's, or the account key's (`lock`).
   */
  'lock-wait': [{ domain: string, holder?: string, lock: LockKind }]
}

/** What status() reports for one certificate of a domain. */
export interface DomainStatus {
  domain: string
  /** Which of the name's certificates this is: one entry per name and key type. */
  keyType: KeyType
  /** Serial of the certificate being served, upper-case hex; undefined before the first one. */
  serial?: string
  notAfter?: Date
  /** When this instance will next try to renew (or retry after a failure). */
  renewAt?: Date
  /**
   * The renewal window the CA suggests for this certificate (ACME Renewal
   * Information, RFC 9773), with the page that explains it when the CA gave
   * one; undefined while none is known (the lifetime rule applies then).
   */
  renewalWindow?: { start: Date, end: Date, explanationURL?: string }
  /** When the CA's renewal information for this certificate is next looked at (the fleet's record, then the CA if nobody has). */
  renewalInfoCheck?: Date
  /** The last failure to load or obtain a certificate, cleared by the next success. */
  lastError?: { message: string, at: Date }
  /** Set while the fleet-wide failure backoff (or order budget) forbids a new order. */
  retryAfter?: Date
  /** While this instance holds the domain's lock (its own instanceId) or waits for it (the holder's, `'unknown'` if not recorded). */
  lockHolder?: string
  /** While an order for the domain waits for a lock held by someone else: which lock, its holder (`'unknown'` if not recorded), since when. */
  waitingFor?: { lock: LockKind, holder: string, since: Date }
  /** The name is not listed: allowed by onDemand.allow(). */
  onDemand?: true
}

/** The event emitter behind on()/off(): a listener that throws is logged and never breaks the work that emitted. */
export class AutocertEmitter extends EventEmitter<AutocertEvents> {
  readonly #log: Logger

  constructor (log: Logger) {
    super()
    this.#log = log
  }

  /** Emits `event`; a throwing listener is logged, never thrown to the emitter. */
  tell<E extends keyof AutocertEvents> (event: E, ...args: AutocertEvents[E]): void {
    try {
      (this.emit as (event: E, ...args: AutocertEvents[E]) => boolean)(event, ...args)
    } catch (err) {
      this.#log.error({ event, error: errorFields(err) }, 'an autocert event listener threw')
    }
  }
}

export function errorMessage (err: unknown): string {
  return err instanceof Error ? err.message : String(err)
}

/** An error as log fields: its type, message and code (never its stack or its cause, which may quote a request). */
export function errorFields (err: unknown): { type?: string, message: string, code?: unknown } {
  return err instanceof Error
    ? { type: err.name, message: err.message, code: (err as { code?: unknown }).code }
    : { message: String(err) }
}

/** An error's `code`, when it is a string (the plugin's FST_AUTOCERT_*, Node's, the SDK's). */
export function errorCode (err: unknown): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code
  return typeof code === 'string' ? code : undefined
}

/** Client-sent text made safe for a log line or an error message. */
export function printable (text: string): string {
  return JSON.stringify(String(text).slice(0, 100))
}
