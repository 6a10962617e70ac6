// Unit tier: the bounds of the CA retries (lib/acme/retry.ts) and how a CA's Retry-After enters the fleet's backoff.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import * as acme from 'acme-client'
import t, { type Test } from 'tap'
import { CaRefusal, nextWait, parseRetryAfter, retrying, RETRY_LIMITS } from '../../lib/acme/retry'
import { FailureRecords } from '../../lib/fleet/failures'
import { storeKeys } from '../../lib/store/keys'
import { MemoryStore } from '../../lib/store/memory'
import { ManualClock, recordingLogger, unitManager } from '../helpers/unit'

const SEC = 1000
const MIN = 60 * SEC
const HOUR = 60 * MIN
const A = 'a.example.test'

t.test('nextWait(): 1, 2, 4, 8, 16 s without Retry-After, then the answer is final', async (t) => {
  const waits = []
  let waited = 0
  for (let attempt = 1; ; attempt++) {
    const wait = nextWait(attempt, undefined, waited)
    if (wait === undefined) break
    waits.push(wait)
    waited += wait
  }
  t.same(waits, [1, 2, 4, 8, 16].map((s) => s * SEC))
  t.equal(waits.length, RETRY_LIMITS.retries)
})

t.test('nextWait(): the CA\'s Retry-After, at least 1 s, and only within the 60 s an order may wait', async (t) => {
  t.equal(nextWait(1, 2 * SEC, 0), 2 * SEC, 'Retry-After: 2')
  t.equal(nextWait(1, 0, 0), SEC, 'Retry-After: 0 still waits a second')
  t.equal(nextWait(1, 60 * SEC, 0), 60 * SEC, 'a minute, all of it')
  t.equal(nextWait(1, 61 * SEC, 0), undefined, 'a minute and a second: not waited for, the answer is final')
  t.equal(nextWait(1, 600 * SEC, 0), undefined, 'ten minutes: not waited for')
  t.equal(nextWait(2, 2 * SEC, 58 * SEC), 2 * SEC, 'what is left of the order\'s minute')
  t.equal(nextWait(2, 2 * SEC, 59 * SEC), undefined, 'but no more')
  t.equal(nextWait(6, SEC, 0), undefined, 'five retries per request, whatever the wait')
})

t.test('parseRetryAfter(): delay-seconds, or an HTTP date read against the answer\'s Date', async (t) => {
  const now = Date.parse('2025-06-01T12:00:00Z')
  t.equal(parseRetryAfter('2', undefined, now), 2 * SEC)
  t.equal(parseRetryAfter(' 600 ', undefined, now), 600 * SEC)
  t.equal(parseRetryAfter('Sun, 01 Jun 2025 12:05:00 GMT', undefined, now), 5 * MIN, 'a date, against this clock without a Date header')
  // The CA's clock runs 3 minutes behind this one: its date means 5 minutes from its answer, not 2 from now.
  t.equal(parseRetryAfter('Sun, 01 Jun 2025 12:02:00 GMT', 'Sun, 01 Jun 2025 11:57:00 GMT', now), 5 * MIN, 'a date, against the answer\'s Date')
  t.equal(parseRetryAfter('Sun, 01 Jun 2025 11:00:00 GMT', undefined, now), 0, 'a date past: no wait')
  t.equal(parseRetryAfter('9'.repeat(40), undefined, now), RETRY_LIMITS.maxRetryAfter, 'an absurd number stays a date')
  for (const bad of [undefined, '', 'soon', '-5', '1.5', ['2']]) t.equal(parseRetryAfter(bad, undefined, now), undefined, `${JSON.stringify(bad)}: none`)
})

t.test('FailureRecords.record(): the later of the backoff step and the CA\'s Retry-After, never past the longest step', async (t) => {
  const clock = new ManualClock()
  const store = new MemoryStore()
  const records = new FailureRecords(store, [MIN, 10 * MIN, HOUR], clock, recordingLogger())
  const open = new AbortController().signal
  const refusal = (retryAt: number | undefined): CaRefusal => new CaRefusal('too many new orders', 429, 'urn:ietf:params:acme:error:rateLimited', retryAt)
  const cases: Array<[string, unknown, number, number]> = [
    ['a plain error: the step', new Error('down'), 1, MIN],
    ['no Retry-After: the step', refusal(undefined), 1, MIN],
    ['a Retry-After sooner than the step: the step', refusal(clock.now() + 5 * SEC), 1, MIN],
    ['a Retry-After of 10 minutes: 10 minutes', refusal(clock.now() + 10 * MIN), 1, 10 * MIN],
    ['a Retry-After of a day: the longest step (1 h)', refusal(clock.now() + 24 * HOUR), 1, HOUR],
    ['a third failure with a Retry-After of 10 minutes: its step (1 h) wins', refusal(clock.now() + 10 * MIN), 3, HOUR]
  ]
  for (const [what, err, failures, after] of cases) {
    await store.delete(storeKeys.failure(A))
    for (let i = 1; i < failures; i++) await records.record(A, new Error('earlier'), open)
    const record = await records.record(A, err, open)
    t.equal(record.retryAt - clock.now(), after, what)
    t.same(await records.read(A), record, `${what}: stored, and read() takes it as plausible`)
  }
})

t.test('a CaRefusal with a Retry-After: the manager honours it instead of the 1 minute step', async (t) => {
  const { manager, clock, issuer, store } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  issuer.failWith = new CaRefusal('too many certificates (the CA answered 429 ...)', 429, 'urn:ietf:params:acme:error:rateLimited', t0 + 10 * MIN)
  manager.start()
  await clock.advance(0)
  t.equal(JSON.parse(String(await store.get(storeKeys.failure(A)))).retryAt, t0 + 10 * MIN, 'the fleet\'s record')
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_BACKOFF' })
  issuer.failWith = undefined
  await clock.advance(9 * MIN)
  t.equal(issuer.calls.length, 1, 'no order at the 1 minute step')
  await clock.advance(MIN)
  t.same(issuer.calls.map((c) => c.at - t0), [0, 10 * MIN], 'the next order at the CA\'s time')
})

/** A CA that answers every request 503 with `retryAfter`, counting them. */
async function refusingCa (t: Test, retryAfter: string): Promise<{ url: string, requests: () => number }> {
  let requests = 0
  const server = createServer((_req: IncomingMessage, res: ServerResponse) => {
    requests++
    res.writeHead(503, { 'content-type': 'application/problem+json', 'retry-after': retryAfter })
    res.end(JSON.stringify({ type: 'urn:ietf:params:acme:error:serverInternal', detail: 'maintenance', status: 503 }))
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => server.close(resolve)))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/dir`, requests: () => requests }
}

t.test('a wait for the CA ends when the order\'s signal aborts', async (t) => {
  const ca = await refusingCa(t, '30')
  const accountKey = await acme.crypto.createPrivateEcdsaKey('P-256')
  const controller = new AbortController()
  const client = retrying(new acme.Client({ directoryUrl: ca.url, accountKey }), () => controller.signal)
  const reason = new Error('order over')
  const started = Date.now()
  const asking = client.getTermsOfServiceUrl()
  setTimeout(() => controller.abort(reason), 200)
  await t.rejects(asking, reason, 'the request fails with the signal\'s reason')
  t.ok(Date.now() - started < 5000, `at once, not after the 30 s Retry-After (${Date.now() - started} ms)`)
  t.equal(ca.requests(), 1, 'and was not sent again')
})

t.test('a refusal given up on is a CaRefusal with the status, the problem type and the retry time', async (t) => {
  const ca = await refusingCa(t, '120')
  const accountKey = await acme.crypto.createPrivateEcdsaKey('P-256')
  const client = retrying(new acme.Client({ directoryUrl: ca.url, accountKey }), () => new AbortController().signal)
  const before = Date.now()
  const err = await client.getTermsOfServiceUrl().then(() => undefined, (e: unknown) => e)
  t.ok(err instanceof CaRefusal, 'a CaRefusal')
  const refusal = err as CaRefusal
  t.equal(refusal.status, 503)
  t.equal(refusal.type, 'urn:ietf:params:acme:error:serverInternal')
  t.ok(refusal.retryAt !== undefined && refusal.retryAt >= before + 120 * SEC && refusal.retryAt <= Date.now() + 120 * SEC, 'retryAt: 120 s after the answer')
  t.match(refusal.message, /^maintenance \(the CA answered 503 urn:ietf:params:acme:error:serverInternal to GET \/dir; it asks for a wait of 120 s/)
  t.equal(ca.requests(), 1, 'a 120 s Retry-After is not waited for')
})

t.test('a refused connection is retried once, a second later (and the wait ends with the order); a timeout is not retried, and acme-client does not retry it either', async (t) => {
  const accountKey = await acme.crypto.createPrivateEcdsaKey('P-256')
  // A port nobody listens on: every attempt is ECONNREFUSED.
  const closed = createServer()
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve))
  const port = (closed.address() as AddressInfo).port
  await new Promise((resolve) => closed.close(resolve))
  const controller = new AbortController()
  const refused = retrying(new acme.Client({ directoryUrl: `http://127.0.0.1:${port}/dir`, accountKey }), () => controller.signal)
  const began = Date.now()
  // The retry's wait holds no process open (an unref'd timer, as all the plugin's): this test does meanwhile.
  const open = setInterval(() => {}, 100)
  await t.rejects(refused.getTermsOfServiceUrl(), { code: 'ECONNREFUSED' }, 'the refused connection is the error').finally(() => clearInterval(open))
  t.ok(Date.now() - began >= 1000, `after one retry a second later (${Date.now() - began} ms), not acme-client's 75 s`)
  const ending = new AbortController()
  const ended = retrying(new acme.Client({ directoryUrl: `http://127.0.0.1:${port}/dir`, accountKey }), () => ending.signal)
  const asking = ended.getTermsOfServiceUrl()
  setTimeout(() => ending.abort(new Error('order over')), 300)
  await t.rejects(asking, { message: 'order over' }, 'the wait for the retry ends with the order')

  // A CA that takes the request and never answers, with a 300 ms timeout per request.
  let requests = 0
  const silent = createServer(() => { requests++ })
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve))
  t.teardown(() => { silent.closeAllConnections(); return new Promise((resolve) => silent.close(resolve)) })
  const timeout = acme.axios.defaults.timeout
  acme.axios.defaults.timeout = 300
  t.teardown(() => { acme.axios.defaults.timeout = timeout })
  const hanging = retrying(new acme.Client({ directoryUrl: `http://127.0.0.1:${(silent.address() as AddressInfo).port}/dir`, accountKey }), () => new AbortController().signal)
  const started = Date.now()
  await t.rejects(hanging.getTermsOfServiceUrl(), { code: 'ECONNABORTED' }, 'the timeout is the error')
  t.ok(Date.now() - started < 3000, `at once (${Date.now() - started} ms): acme-client's retry let it pass`)
  t.equal(requests, 1, 'one request')
})
