// Retries of the CA's 429 and 5xx answers for acme-client: a fresh nonce, the CA's Retry-After, the order's signal.
import * as acme from 'acme-client'
import { sleep } from '../signals'

/*
 * acme-client 5.4.0 retries a 429, a 5xx or a network error by itself
 * (src/axios.js): up to 5 times, waiting the answer's Retry-After, however
 * long, or 5, 10, 15, 20, 25 s without one, in a timer nothing cancels; and it
 * sends the very same body again. For a signed request that is the same JWS,
 * so the same nonce, which the CA has already spent on the refused request
 * (its upstream issue 103): the CA answers the retry badNonce, and only
 * acme-client's badNonce path, one round trip later, gets the request through.
 *
 * For the clients the issuer makes (retrying()), each request made on behalf
 * of an order goes through an axios adapter of this module's instead, beneath
 * acme-client's interceptors, which does the retrying:
 * - a retried signed request is signed again with a fresh nonce: the refused
 *   answer's Replay-Nonce (RFC 8555 6.5), else a new one from newNonce;
 * - it waits the CA's Retry-After (seconds or an HTTP date, read against the
 *   answer's Date header), or 1, 2, 4, 8, 16 s without one, never less than
 *   1 s; at most 5 retries per request and 60 s of waiting in all per order
 *   (RETRY_LIMITS); every wait ends when the order's signal aborts;
 * - an answer that is not waited for (its request's retries used up, or a wait
 *   longer than the order has left) is final: the request fails with a
 *   CaRefusal, which carries the time of the CA's Retry-After into the fleet's
 *   failure record (FailureRecords.record, which caps it at the longest
 *   backoff step). A network error given up on fails as it is, a timeout is
 *   not retried (each attempt has 30 s already, see issuer.ts).
 * Both kinds of failure leave the adapter without their axios config, which
 * is how acme-client's own retry knows to let them pass (the issuer's request
 * guard relies on the same); every other answer is returned as acme-client
 * expects it. Requests made outside an order's context are left to acme-client.
 */

export const RETRY_LIMITS = {
  /** Retries of one request after a 429, a 5xx or a network error. */
  retries: 5,
  /**
   * Retries of one request after a network error (a refused or reset
   * connection): one, a second later. A CA that is down fails the order within
   * seconds, so that the fleet's backoff, or the next CA of a fallback list,
   * takes over.
   */
  networkRetries: 1,
  /** All the waiting one order may do between retries (ms): a Retry-After past what is left is not waited for. */
  orderWait: 60_000,
  /** The first wait without a Retry-After (ms), doubled at each retry. */
  firstWait: 1000,
  /** No retry sooner than this (ms), whatever Retry-After says. */
  minWait: 1000,
  /** A Retry-After is read as at most this far away (ms): the time stays a date. */
  maxRetryAfter: 30 * 24 * 3_600_000
} as const

/** The CA refused a request, and its retries: what it answered, and when it asked to be tried again. */
export class CaRefusal extends Error {
  /** The answer's HTTP status: 429 or 5xx. */
  readonly status: number
  /** The problem document's type (RFC 8555 6.7), e.g. urn:ietf:params:acme:error:rateLimited. */
  readonly type: string | undefined
  /** When the CA's Retry-After allows the next try (ms since the epoch, this machine's clock); undefined without one. */
  readonly retryAt: number | undefined

  constructor (message: string, status: number, type: string | undefined, retryAt: number | undefined) {
    super(message)
    this.name = 'CaRefusal'
    this.status = status
    this.type = type
    this.retryAt = retryAt
  }
}

/**
 * The wait before the next try of a request that was refused `attempt` times
 * (1 after the first answer), given the answer's Retry-After (ms, undefined
 * without one) and what the order has waited so far; undefined: not waited
 * for, the answer is final.
 */
export function nextWait (attempt: number, retryAfter: number | undefined, waited: number): number | undefined {
  if (attempt > RETRY_LIMITS.retries) return undefined
  const wait = Math.max(RETRY_LIMITS.minWait, retryAfter ?? RETRY_LIMITS.firstWait * 2 ** (attempt - 1))
  return waited + wait <= RETRY_LIMITS.orderWait ? wait : undefined
}

/**
 * A Retry-After header (RFC 9110 10.2.3) as a wait in ms: delay-seconds, or an
 * HTTP date read against the answer's Date (the CA's clock), else against
 * `now`. Undefined when absent or unreadable; at most RETRY_LIMITS.maxRetryAfter.
 */
export function parseRetryAfter (value: unknown, date: unknown, now: number): number | undefined {
  if (typeof value !== 'string') return undefined
  const text = value.trim()
  let wait: number
  if (/^\d+$/.test(text)) {
    wait = Number(text) * 1000
  } else {
    // An HTTP date names its month (and day): nothing without letters is one, whatever Date.parse makes of it.
    const at = /[a-z]/i.test(text) ? Date.parse(text) : NaN
    if (!Number.isFinite(at)) return undefined
    const sent = typeof date === 'string' ? Date.parse(date) : NaN
    wait = at - (Number.isFinite(sent) ? sent : now)
  }
  return Math.min(Math.max(0, wait), RETRY_LIMITS.maxRetryAfter)
}

/** The parts of acme-client's src/http.js this module uses. */
interface HttpClient {
  request: (url: string, method: string, opts?: Record<string, unknown>) => Promise<Answer>
  getNonce: () => Promise<string>
  createSignedBody: (url: string, payload: unknown, opts: { nonce: string, kid: string | null }) => Jws
}

interface Jws { protected: string, payload: string, signature: string }

/** An axios response, as far as this module reads it. */
interface Answer {
  status: number
  headers: Record<string, unknown>
  data?: unknown
  config?: unknown
}

type Config = Record<string, unknown> & { method?: string, url?: string, data?: unknown }
type Transport = (config: Config) => Promise<Answer>

/** All the waiting done for each order (its signal). */
const waited = new WeakMap<AbortSignal, { ms: number }>()
let transport: Transport | undefined

/**
 * Makes `client`'s requests retry as described above whenever `orderSignal()`
 * (read at each request) returns a signal; returns `client`. A client of
 * another acme-client, without the parts used, keeps acme-client's retries.
 */
export function retrying (client: acme.Client, orderSignal: () => AbortSignal | undefined): acme.Client {
  const http = (client as unknown as { http?: Partial<HttpClient> }).http
  if (typeof http?.request !== 'function' || typeof http.getNonce !== 'function' || typeof http.createSignedBody !== 'function') return client
  const known = http as HttpClient
  const request = known.request.bind(known)
  known.request = (url, method, opts = {}) => {
    const signal = orderSignal()
    if (signal === undefined) return request(url, method, opts)
    const jws = isJws(opts.data) ? opts.data : undefined
    return request(url, method, { ...opts, adapter: (config: Config) => send(config, known, signal, jws) })
  }
  return client
}

/**
 * The axios config of an unsigned request (a GET of the directory, of
 * renewal information) made on behalf of an order or check bound to
 * `signal`: retried as above, and its failures left alone by acme-client's own
 * retry (which, past its attempts, fails a network error with a TypeError).
 */
export function retryingRequest (signal: AbortSignal): Parameters<typeof acme.axios.get>[1] {
  const adapter = (config: Config): Promise<Answer> => send(config, undefined, signal, undefined)
  return { adapter: adapter as never }
}

/** One request, with its retries; `http` re-signs a signed one (`jws`). */
async function send (config: Config, http: HttpClient | undefined, signal: AbortSignal, jws: Jws | undefined): Promise<Answer> {
  // A plain instance of acme-client's axios: its defaults, none of its interceptors (they ran already).
  transport ??= acme.axios.create() as unknown as Transport
  const order = waited.get(signal) ?? { ms: 0 }
  waited.set(signal, order)
  for (let attempt = 1; ; attempt++) {
    let answer: Answer | undefined
    let failure: unknown
    try {
      answer = await transport({ ...config, adapter: 'http' })
    } catch (err) {
      // acme-client's validateStatus (() => false) makes every answer an error: its response is the answer.
      answer = (err as { response?: Answer }).response
      failure = err
    }
    if (answer !== undefined) {
      answer.config = config
      if (answer.status !== 429 && !(answer.status >= 500 && answer.status <= 599)) return answer
    } else if (isTimeout(failure)) {
      throw detached(failure)
    }
    const retryAfter = answer === undefined ? undefined : parseRetryAfter(answer.headers['retry-after'], answer.headers.date, Date.now())
    const wait = answer === undefined && attempt > RETRY_LIMITS.networkRetries ? undefined : nextWait(attempt, retryAfter, order.ms)
    if (wait === undefined) throw answer === undefined ? detached(failure) : refusal(config, answer, retryAfter, attempt)
    order.ms += wait
    await sleep(wait, signal)
    if (jws !== undefined && http !== undefined) {
      jws = await resign(http, jws, answer)
      config.data = JSON.stringify(jws)
    }
  }
}

/** `jws` signed again with a fresh nonce: the refused answer's Replay-Nonce, else a new one. */
async function resign (http: HttpClient, jws: Jws, answer: Answer | undefined): Promise<Jws> {
  const header = JSON.parse(Buffer.from(jws.protected, 'base64url').toString('utf8')) as { url: string, nonce?: string, kid?: string }
  const offered = answer?.headers['replay-nonce']
  const nonce = typeof offered === 'string' && offered !== '' && offered !== header.nonce ? offered : await http.getNonce()
  const payload = jws.payload === '' ? null : JSON.parse(Buffer.from(jws.payload, 'base64url').toString('utf8'))
  return http.createSignedBody(header.url, payload, { nonce, kid: header.kid ?? null })
}

function refusal (config: Config, answer: Answer, retryAfter: number | undefined, attempt: number): CaRefusal {
  const problem = (typeof answer.data === 'object' && answer.data !== null ? answer.data : {}) as { type?: unknown, detail?: unknown }
  const type = typeof problem.type === 'string' ? problem.type.slice(0, 100) : undefined
  const detail = typeof problem.detail === 'string' ? problem.detail.replace(/\s+/g, ' ').slice(0, 300) : 'no detail'
  let path = String(config.url)
  try { path = new URL(path).pathname } catch {}
  const retries = `${attempt - 1} ${attempt === 2 ? 'retry' : 'retries'}`
  const why = attempt > RETRY_LIMITS.retries
    ? `after ${retries}`
    : retryAfter === undefined
      ? `after ${retries}, the order has no more time to wait (${RETRY_LIMITS.orderWait / 1000} s in all)`
      : `it asks for a wait of ${Math.ceil(retryAfter / 1000)} s, more than the order may still wait (${RETRY_LIMITS.orderWait / 1000} s in all)`
  const message = `${detail} (the CA answered ${answer.status}${type === undefined ? '' : ` ${type}`} to ${String(config.method).toUpperCase()} ${path}; ${why})`
  return new CaRefusal(message, answer.status, type, retryAfter === undefined ? undefined : Date.now() + retryAfter)
}

/** `err` without its axios config: acme-client's retry lets such an error pass. */
function detached (err: unknown): unknown {
  if (typeof err === 'object' && err !== null && 'config' in err) (err as { config?: unknown }).config = undefined
  return err
}

function isTimeout (err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code
  return code === 'ECONNABORTED' || code === 'ETIMEDOUT' || code === 'ERR_CANCELED'
}

function isJws (data: unknown): data is Jws {
  const jws = data as Partial<Jws> | undefined
  return typeof jws?.protected === 'string' && typeof jws.payload === 'string' && typeof jws.signature === 'string'
}
