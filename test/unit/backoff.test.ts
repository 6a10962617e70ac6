// Unit tier: the failure backoff and the order budget, on a manual clock (see test/helpers/unit.ts).
import t from 'tap'
import { ORDER_LOG_CAPACITY } from '../../lib/fleet/budget'
import { storeKeys, storeLimits } from '../../lib/store/keys'
import { MemoryStore } from '../../lib/store/memory'
import { spyStore } from '../support/app'
import { unitManager } from '../helpers/unit'

const MIN = 60_000
const HOUR = 60 * MIN
const A = 'a.example.test'

t.test('a failing name is tried at 0, 1, 11, 31 and 61 minutes, by the record the fleet shares; handshakes meanwhile get FST_AUTOCERT_BACKOFF', async (t) => {
  const { manager, clock, issuer, store } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const backoffs: Array<{ retryAt: Date, reason: string }> = []
  manager.events.on('backoff', (e) => backoffs.push(e))
  issuer.failWith = new Error('the CA says no')
  const t0 = clock.now()
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 1, 'ordered once at start')
  const record = JSON.parse(String(await store.get(storeKeys.failure(A))))
  t.same(record, { failures: 1, error: 'the CA says no', at: t0, retryAt: t0 + MIN }, 'the failure record in the store')
  t.same(manager.status()[0].retryAfter, new Date(t0 + MIN), 'status() shows the backoff')

  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_BACKOFF', message: /the last attempt failed/ })
  t.equal(issuer.calls.length, 1, 'a handshake in backoff places no order')

  await clock.advance(61 * MIN)
  t.same(issuer.calls.map((c) => (c.at - t0) / MIN), [0, 1, 11, 31, 61], 'retried at the default steps: 4 attempts in any hour')
  t.same(backoffs.map((b) => (b.retryAt.getTime() - t0) / MIN), [1, 11, 31, 61, 121], 'a backoff event per failure, with its retry time')
  t.ok(backoffs.every((b) => b.reason === 'failures'))
  t.equal(JSON.parse(String(await store.get(storeKeys.failure(A)))).failures, 5)

  issuer.failWith = undefined
  await clock.advance(60 * MIN)
  t.equal(issuer.calls.length, 6, 'the sixth attempt, an hour later (the 1 h step)')
  t.ok(manager.status()[0].serial, 'and it has a certificate')
  t.equal(await store.get(storeKeys.failure(A)), undefined, 'the failure record is gone')
  t.equal(manager.status()[0].retryAfter, undefined)
})

t.test('retryDelays replaces the steps; the last one repeats', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [A], retryDelays: [5_000, 30_000] })
  t.teardown(() => manager.close())
  issuer.failWith = new Error('down')
  const t0 = clock.now()
  manager.start()
  await clock.advance(100_000)
  t.same(issuer.calls.map((c) => (c.at - t0) / 1000), [0, 5, 35, 65, 95])
})

t.test('a failure record another instance left is honoured: no order before its retryAt', async (t) => {
  const { manager, clock, issuer, store } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  await store.put(storeKeys.failure(A), JSON.stringify({ failures: 3, error: 'rate limited by the CA', at: t0 - MIN, retryAt: t0 + 10 * MIN }))
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 0, 'no order')
  t.same(manager.status()[0].lastError, { message: 'rate limited by the CA', at: new Date(t0 - MIN) }, 'the other instance\'s error')
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_BACKOFF' })
  await clock.advance(10 * MIN)
  t.same(issuer.calls.map((c) => c.at - t0), [10 * MIN], 'ordered when the record says')
})

t.test('an implausible failure record (a retry a year away, a failure in the future, malformed) is ignored, and replaced at the next failure', async (t) => {
  const planted = (t0: number): unknown[] => [
    { failures: 1, error: 'planted', at: t0, retryAt: t0 + 365 * 24 * HOUR },
    { failures: 1, error: 'planted', at: t0 + 24 * HOUR, retryAt: t0 + MIN },
    { failures: 1, error: 'planted', at: 'yesterday', retryAt: t0 + MIN },
    { failures: 1, at: t0, retryAt: t0 + MIN }
  ]
  const what = ['a retry a year away', 'a failure a day ahead', 'a time that is not a number', 'no error message']
  for (const [i, record] of what.entries()) {
    const { manager, clock, issuer, store } = unitManager({ domains: [A] })
    const t0 = clock.now()
    await store.put(storeKeys.failure(A), JSON.stringify(planted(t0)[i]))
    manager.start()
    await clock.advance(0)
    t.equal(issuer.calls.length, 1, `${record}: ignored, ordered at once`)
    await manager.close()
  }
  const { manager, clock, issuer, store } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  await store.put(storeKeys.failure(A), JSON.stringify(planted(t0)[0]))
  issuer.failWith = new Error('the CA says no')
  manager.start()
  await clock.advance(0)
  t.same(JSON.parse(String(await store.get(storeKeys.failure(A)))), { failures: 1, error: 'the CA says no', at: t0, retryAt: t0 + MIN }, 'the planted record is replaced by a true one, counting from 1')
  // The longest step with custom delays is the bound: a record within it is honoured.
  const custom = unitManager({ domains: ['b.example.test'], retryDelays: [MIN, 2 * HOUR * 24] })
  t.teardown(() => custom.manager.close())
  await custom.store.put(storeKeys.failure('b.example.test'), JSON.stringify({ failures: 2, error: 'x', at: custom.clock.now(), retryAt: custom.clock.now() + 47 * HOUR }))
  custom.manager.start()
  await custom.clock.advance(0)
  t.equal(custom.issuer.calls.length, 0, 'a retry within the longest of retryDelays is honoured')
})

t.test('once a refusal shows the budget spent, names waiting for it are refused from memory until the slot: no lock or read of the order log each', async (t) => {
  const names = Array.from({ length: 20 }, (_, i) => `n${i}.example.test`)
  const store = spyStore(new MemoryStore())
  // One name at a time: a claim opened before the first refusal still reads the log (at most `concurrency` of them).
  const { manager, clock, issuer } = unitManager({ domains: names, maxOrdersPerHour: 2, concurrency: 1, store: store as unknown as MemoryStore })
  t.teardown(() => manager.close())
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 2, 'two orders')
  const logLocks = store.keys.filter((k) => k === storeKeys.orderLog).length
  // Two spends (lock, read, write), then one refusal that learns the slot (lock, read); 40 calls without the memory.
  t.equal(logLocks, 8, 'the order log was touched 8 times for 20 names')
  for (const name of names.slice(2)) await t.rejects(manager.certificate(name), { code: 'FST_AUTOCERT_RATE_LIMITED' })
  t.equal(store.keys.filter((k) => k === storeKeys.orderLog).length, logLocks, 'later refusals do not touch it either')
  await clock.advance(60 * MIN)
  t.equal(issuer.calls.length, 4, 'at the slot, the next two orders go')
})

t.test('a chain too long to be read back from the store is a failed order, never stored', async (t) => {
  const { manager, issuer, store } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const issue = issuer.issue.bind(issuer)
  // 200 copies of the CA certificate after the leaf: valid PEM, over the 64 KiB a certificate bundle may have.
  issuer.issue = async (...args) => {
    const { key, chain } = await issue(...args)
    return { key, chain: chain + issuer.ca.cert.repeat(200) }
  }
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_ORDER_FAILED', message: /bundle of \d+ bytes, over the 65536/ })
  t.equal(await store.get(A), undefined, 'nothing stored under the name')
  t.match(JSON.parse(String(await store.get(storeKeys.failure(A)))), { failures: 1 }, 'and the failure is the fleet\'s backoff')
})

t.test('the fleet\'s order budget: orders past maxOrdersPerHour wait for the next slot and are refused with FST_AUTOCERT_RATE_LIMITED', async (t) => {
  const names = ['a.example.test', 'b.example.test', 'c.example.test', 'd.example.test']
  const { manager, clock, issuer, store, log } = unitManager({ domains: names, maxOrdersPerHour: 2 })
  t.teardown(() => manager.close())
  const backoffs: Array<{ domain: string, retryAt: Date, reason: string }> = []
  manager.events.on('backoff', (e) => backoffs.push(e))
  const t0 = clock.now()
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 2, 'two orders in the first hour')
  const waiting = names.filter((n) => !issuer.names.includes(n))
  t.same(backoffs.map((b) => [b.domain, b.reason, b.retryAt.getTime() - t0]).sort(), waiting.map((n) => [n, 'budget', HOUR]),
    'the others are postponed to the next slot, for the budget')
  t.same(JSON.parse(String(await store.get(storeKeys.orderLog))), [t0, t0], 'the order log holds both orders')
  for (const name of waiting) t.equal(await store.get(storeKeys.failure(name)), undefined, `${name}: not a failure of the name`)
  t.ok(log.lines.some((l) => l.msg === 'order budget used up: order postponed' && l.obj.maxOrdersPerHour === 2))

  // A handshake meanwhile is told why, and when: the budget, not a failure.
  const err = await manager.certificate(waiting[0]).catch((e: unknown) => e)
  t.match(err, { code: 'FST_AUTOCERT_RATE_LIMITED', message: new RegExp(`placed 2 orders in the last hour .* next slot at ${new Date(t0 + HOUR).toISOString()}`) })
  t.match(manager.status().find((s) => s.domain === waiting[0]), { retryAfter: new Date(t0 + HOUR), lastError: { message: /maxOrdersPerHour/ } })
  t.equal(issuer.calls.length, 2, 'and no order')

  await clock.advance(HOUR)
  t.equal(issuer.calls.length, 4, 'ordered once the first hour\'s orders left the log')
  t.ok(manager.status().every((s) => s.serial !== undefined && s.retryAfter === undefined))
})

t.test('renew() orders past the backoff, still inside the budget', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [A], maxOrdersPerHour: 1 })
  t.teardown(() => manager.close())
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 1)
  await t.rejects(manager.renew(A), { code: 'FST_AUTOCERT_RATE_LIMITED' }, 'the budget binds renew() too')
  await clock.advance(HOUR)
  const serial = manager.status()[0].serial
  const renewed = await manager.renew(A)
  t.not(renewed.serial, serial, 'a new certificate once the budget has room')
})

t.test('a poisoned order log cannot block the fleet: far-future, huge and malformed entries are dropped, the rest still count', async (t) => {
  const names = ['a.example.test', 'b.example.test', 'c.example.test']
  const { manager, clock, issuer, store, log } = unitManager({ domains: names, maxOrdersPerHour: 2 })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  const yearAhead = Array.from({ length: 100 }, (_, i) => t0 + 365 * 24 * HOUR + i)
  const skewed = t0 + 2 * MIN // another instance whose clock runs 2 minutes fast: still counted
  await store.put(storeKeys.orderLog, JSON.stringify([...yearAhead, 1e300, -1, 'x', null, Number.MAX_VALUE, skewed]))
  const backoffs: Array<{ domain: string, retryAt: Date }> = []
  manager.events.on('backoff', (e) => backoffs.push(e))
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 1, 'one order: the budget of 2 less the skewed instance\'s entry')
  t.same(JSON.parse(String(await store.get(storeKeys.orderLog))), [t0, skewed], 'the log is rewritten with the plausible entries only, oldest first')
  t.equal(backoffs.length, 2, 'the two others wait for the budget')
  t.ok(backoffs.every((b) => b.retryAt.getTime() === t0 + HOUR), 'until the oldest entry leaves the hour')
  t.notOk(log.lines.some((l) => l.level === 'error'), 'no error: nothing threw on 1e300')
  await clock.advance(HOUR + 2 * MIN)
  t.equal(issuer.calls.length, 3, 'then the others are ordered')
})

t.test('a log with more entries than the budget (it was lowered, or unsorted) gives the true next slot', async (t) => {
  const { manager, clock, issuer, store } = unitManager({ domains: [A], maxOrdersPerHour: 2 })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  await store.put(storeKeys.orderLog, JSON.stringify([t0 - 10 * MIN, t0 - 50 * MIN, t0 - 30 * MIN]))
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 0)
  t.same(manager.status()[0].retryAfter, new Date(t0 + 30 * MIN), 'once two of the three have left the hour: the one of -30 min, at +30 min')
  await clock.advance(30 * MIN)
  t.equal(issuer.calls.length, 1, 'ordered then, not refused again at -50 min + 1 h')
})

t.test('the order log stays within its store limit: a full log is a spent budget, whatever maxOrdersPerHour says', async (t) => {
  const { manager, clock, issuer, store, log } = unitManager({ domains: [A], maxOrdersPerHour: 10_000 })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  const full = Array.from({ length: ORDER_LOG_CAPACITY }, (_, i) => t0 - 30 * MIN + i)
  t.ok(JSON.stringify(full).length <= storeLimits.orderLog, `${ORDER_LOG_CAPACITY} entries fit in ${storeLimits.orderLog} bytes`)
  t.ok(JSON.stringify([...full, t0]).length > storeLimits.orderLog, 'one more does not')
  await store.put(storeKeys.orderLog, JSON.stringify(full))
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 0, 'no order: the log cannot take one more')
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_RATE_LIMITED' })
  t.same(manager.status()[0].retryAfter, new Date(full[0] + HOUR), 'the next slot is when the oldest entry leaves the hour')
  t.notOk(log.lines.some((l) => l.msg === 'ignoring unusable order log'), 'the log was read, not found unusable')
  await clock.advance(30 * MIN)
  t.equal(issuer.calls.length, 1, 'then ordered')
  t.ok((await store.get(storeKeys.orderLog))!.length <= storeLimits.orderLog, 'and the log written stays within the limit')
})

t.test('a failure record stays within its store limit: a long error message is cut', async (t) => {
  const { manager, clock, issuer, store, log } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  // Control characters: each takes 6 bytes as a JSON escape, the worst case.
  issuer.failWith = new Error('\u0001'.repeat(100_000))
  manager.start()
  await clock.advance(0)
  const stored = (await store.get(storeKeys.failure(A)))!
  t.ok(stored.length <= storeLimits.failure, `the record takes ${stored.length} bytes`)
  t.equal(JSON.parse(String(stored)).error.length, 2000, 'its message cut to 2,000 characters')
  await clock.advance(MIN)
  t.equal(issuer.calls.length, 2, 'the next attempt follows the record: 1 minute later')
  t.notOk(log.lines.some((l) => l.msg === 'ignoring unusable failure record'), 'which was read back, not found unusable')
})
