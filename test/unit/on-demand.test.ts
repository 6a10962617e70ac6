// Unit tier: on-demand names (allow() answers, their TTLs, the LRU) and refusals, on a manual clock (see test/helpers/unit.ts).
import t from 'tap'
import { ALLOWED_TTL, BUDGET_RETRY_SPREAD, DENIED_TTL } from '../../lib/on-demand'
import { storeKeys } from '../../lib/store/keys'
import { MemoryStore } from '../../lib/store/memory'
import { spyStore } from '../support/app'
import { unitManager } from '../helpers/unit'

const MIN = 60_000
const HOUR = 60 * MIN

const onDemand = (allow: (name: string) => boolean | Promise<boolean>, cacheSize = 100): { allow: typeof allow, timeout: number, cacheSize: number } =>
  ({ allow, timeout: 5000, cacheSize })

t.test('allow() answers are kept: yes for 10 minutes, no for 1 minute, one call in flight per name', async (t) => {
  const asked: string[] = []
  const { manager, clock } = unitManager({ domains: [], onDemand: onDemand((name) => { asked.push(name); return name.startsWith('yes.') }) })
  t.teardown(() => manager.close())
  manager.start()
  await Promise.all([manager.certificate('yes.example.test'), manager.certificate('yes.example.test')])
  await Promise.all([1, 2].map(async () => await t.rejects(manager.certificate('no.example.test'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' })))
  t.same(asked, ['yes.example.test', 'no.example.test'], 'one call per name')
  await clock.advance(DENIED_TTL - 1)
  await t.rejects(manager.certificate('no.example.test'))
  t.equal(asked.length, 2, 'no is trusted for a minute')
  await clock.advance(1)
  await t.rejects(manager.certificate('no.example.test'))
  t.same(asked.slice(2), ['no.example.test'], 'then asked again')
  t.equal(ALLOWED_TTL, 10 * 60_000)
})

t.test('allow() that throws or outlasts its timeout means no, and says so in the log', async (t) => {
  const { manager, clock, log, issuer } = unitManager({
    domains: [],
    onDemand: onDemand(async (name) => {
      if (name.startsWith('throws.')) throw new Error('decision service down')
      return await new Promise<boolean>(() => {})
    })
  })
  t.teardown(() => manager.close())
  await t.rejects(manager.certificate('throws.example.test'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' })
  const slow = manager.certificate('slow.example.test')
  slow.catch(() => {})
  await clock.advance(4999)
  t.equal(log.lines.filter((l) => l.msg.startsWith('onDemand.allow() failed')).length, 1, 'still waiting before the timeout')
  await clock.advance(1)
  await t.rejects(slow, { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' }, 'refused at the timeout, on the clock')
  t.same(log.lines.filter((l) => l.msg.startsWith('onDemand.allow() failed')).map((l) => l.obj.domain), ['throws.example.test', 'slow.example.test'])
  t.equal(issuer.calls.length, 0)
})

t.test('names that do not normalise never reach allow(); refusals are logged once per 10 s with a count', async (t) => {
  const asked: string[] = []
  const { manager, clock, log } = unitManager({ domains: ['listed.example.test'], onDemand: onDemand((name) => { asked.push(name); return false }) })
  t.teardown(() => manager.close())
  for (const name of ['../etc/passwd', '*.example.test', '127.0.0.1', 'a..example.test', 'x'.repeat(300)]) {
    await t.rejects(manager.certificate(name), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' })
  }
  t.same(asked, [], 'allow() never saw them')
  const refusals = (): Array<Record<string, unknown>> => log.lines.filter((l) => l.msg === 'refused TLS server name').map((l) => l.obj)
  t.equal(refusals().length, 1, 'one log line for the burst')
  await clock.advance(10_000)
  await t.rejects(manager.certificate('other.example.test'))
  t.match(refusals()[1], { refused: 5, servername: '"other.example.test"' }, 'then one with the count since')
})

t.test('without onDemand, names not listed are refused without a store call', async (t) => {
  const { manager, store } = unitManager({ domains: ['listed.example.test'] })
  t.teardown(() => manager.close())
  const reads: string[] = []
  const get = store.get.bind(store)
  store.get = async (key) => { reads.push(key); return await get(key) }
  await t.rejects(manager.certificate('other.example.test'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED', message: /"other\.example\.test"/ })
  t.same(reads, [])
})

t.test('on-demand names beyond cacheSize are dropped least recently used first, with their timers, and read back from the store', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [], onDemand: onDemand(() => true, 2) })
  t.teardown(() => manager.close())
  manager.start()
  const names = (): string[] => manager.status().map((s) => s.domain).sort()
  const a = await manager.certificate('a.example.test')
  await manager.certificate('b.example.test')
  await manager.certificate('c.example.test')
  t.same(names(), ['b.example.test', 'c.example.test'], 'a, the least recently used, is dropped')
  t.equal(manager.timersArmed, 2, 'and its renewal timer with it')
  t.equal(clock.pending, 1, 'on the one clock timer of the manager')
  await manager.certificate('b.example.test')
  await manager.certificate('d.example.test')
  t.same(names(), ['b.example.test', 'd.example.test'], 'b was used since: c goes')
  const again = await manager.certificate('a.example.test')
  t.equal(again.serial, a.serial, 'a dropped name is read back from the store')
  t.equal(issuer.calls.length, 4, 'with no new order')
  t.ok(manager.status().every((s) => s.onDemand === true))
})

t.test('at renewal, allow() is asked again: a name it refuses now is dropped, not renewed', async (t) => {
  let allowed = true
  const { manager, clock, issuer } = unitManager({ domains: [], onDemand: onDemand(() => allowed) })
  t.teardown(() => manager.close())
  manager.start()
  issuer.lifetime = 30 * 60_000
  await manager.certificate('tenant.example.test')
  allowed = false
  await clock.advance(30 * 60_000)
  t.equal(issuer.calls.length, 1, 'not renewed')
  t.same(manager.status(), [], 'and dropped from memory')
  t.equal(manager.timersArmed, 0, 'with no timer left')
  t.equal(clock.pending, 0, 'none on the clock either')
})

t.test('on-demand names refused for the budget retry each at its own time, after the slot and within BUDGET_RETRY_SPREAD; the refusal names the slot', async (t) => {
  const retries: Array<{ name: string, at: number }> = []
  const { manager, clock, issuer } = unitManager({ domains: [], maxOrdersPerHour: 1, onDemand: onDemand((name) => { retries.push({ name, at: clock.now() }); return true }) })
  t.teardown(() => manager.close())
  manager.start()
  const backoffs: Array<{ domain: string, retryAt: Date }> = []
  manager.events.on('backoff', (e) => backoffs.push(e))
  const slot = clock.now() + HOUR
  await manager.certificate('first.example.test')
  const names = Array.from({ length: 20 }, (_, i) => `n${i}.example.test`)
  const refusal = { code: 'FST_AUTOCERT_RATE_LIMITED', message: new RegExp(`next slot at ${new Date(slot).toISOString()}`) }
  for (const name of names) await t.rejects(manager.certificate(name), refusal, `${name}: refused until the slot`)
  t.ok(backoffs.every((b) => b.retryAt.getTime() >= slot && b.retryAt.getTime() < slot + BUDGET_RETRY_SPREAD), 'each backoff event gives a retry time in [slot, slot + BUDGET_RETRY_SPREAD)')
  t.ok(manager.status().filter((s) => s.domain !== 'first.example.test').every((s) => s.retryAfter?.getTime() === slot), 'status() shows the slot as retryAfter')
  // Asked for again, so each is retried rather than forgotten.
  await clock.advance(HOUR - 1)
  for (const name of names) await t.rejects(manager.certificate(name), refusal, `${name}: still refused, with the same slot, a millisecond before it`)
  retries.length = 0
  await clock.advance(1 + BUDGET_RETRY_SPREAD)
  const times = retries.map((r) => r.at)
  t.same(retries.map((r) => r.name).sort(), [...names].sort(), 'each name retried once (allow() asked again)')
  t.equal(new Set(times).size, names.length, 'at distinct times')
  t.ok(times.every((at) => at >= slot && at < slot + BUDGET_RETRY_SPREAD), 'none before the slot, none later than BUDGET_RETRY_SPREAD after it')
  t.equal(issuer.calls.length, 2, 'the first retry took the slot the hour freed')
  t.ok(issuer.calls[1].at === Math.min(...times), 'and it was the earliest')
})

t.test('while the budget is known spent, a new name is refused without its lock: one read of its certificate, one of its failure record', async (t) => {
  const store = spyStore(new MemoryStore())
  const { manager, clock, issuer } = unitManager({ domains: [], maxOrdersPerHour: 1, onDemand: onDemand(() => true), store: store as unknown as MemoryStore })
  t.teardown(() => manager.close())
  manager.start()
  await manager.certificate('first.example.test')
  const slot = clock.now() + HOUR
  const refusal = { code: 'FST_AUTOCERT_RATE_LIMITED', message: new RegExp(`next slot at ${new Date(slot).toISOString()}`) }
  // This one reads the order log: from then on this instance knows the budget is spent until the slot.
  await t.rejects(manager.certificate('learns.example.test'), refusal)
  const names = Array.from({ length: 10 }, (_, i) => `n${i}.example.test`)
  store.keys.length = 0
  for (const name of names) await t.rejects(manager.certificate(name), refusal, `${name}: refused until the slot`)
  // The name's lock (its key is the name's) would be a third entry per name, its read under the lock a fourth.
  t.same(store.keys, names.flatMap((n) => [n, storeKeys.failure(n)]), 'each: its certificate and its failure record read, no lock taken, nothing written')

  // A failure record another instance left still holds the name until its own time.
  const failed = 'failed.example.test'
  const retryAt = clock.now() + 2 * HOUR
  await store.put(storeKeys.failure(failed), JSON.stringify({ failures: 6, error: 'the CA says no', at: clock.now(), retryAt }))
  await t.rejects(manager.certificate(failed), { code: 'FST_AUTOCERT_BACKOFF', message: new RegExp(new Date(retryAt).toISOString()) }, 'its backoff, not the budget\'s slot')

  await clock.advance(HOUR)
  await manager.certificate('late.example.test')
  t.same(issuer.names, ['first.example.test', 'late.example.test'], 'at the slot, a new name orders again')
})

t.test('a refused on-demand name nobody asks for again is forgotten when its hold ends; one asked for again is retried', async (t) => {
  const asked: string[] = []
  const { manager, clock, issuer, log } = unitManager({ domains: [], maxOrdersPerHour: 1, onDemand: onDemand((name) => { asked.push(name); return true }) })
  t.teardown(() => manager.close())
  manager.start()
  await manager.certificate('first.example.test')
  await t.rejects(manager.certificate('idle.example.test'), { code: 'FST_AUTOCERT_RATE_LIMITED' })
  await t.rejects(manager.certificate('wanted.example.test'), { code: 'FST_AUTOCERT_RATE_LIMITED' })
  await clock.advance(30 * MIN)
  await t.rejects(manager.certificate('wanted.example.test'), { code: 'FST_AUTOCERT_RATE_LIMITED' }, 'wanted is asked for again')
  asked.length = 0
  await clock.advance(30 * MIN + BUDGET_RETRY_SPREAD)
  t.same(asked, ['wanted.example.test'], 'allow() asked again for the wanted name only')
  t.same(issuer.names, ['first.example.test', 'wanted.example.test'], 'wanted ordered; idle not')
  t.same(manager.status().map((s) => s.domain).sort(), ['first.example.test', 'wanted.example.test'], 'idle is no longer in memory')
  t.equal(manager.timersArmed, 2, 'and has no timer: only the two renewals are armed')
  t.ok(log.lines.some((l) => l.msg === 'on-demand name not asked for since it was refused: forgotten' && l.obj.domain === 'idle.example.test'))
  await clock.advance(HOUR)
  t.equal(issuer.calls.length, 2, 'nor is it ordered an hour later')
  const served = await manager.certificate('idle.example.test')
  t.equal(served.name, 'idle.example.test', 'its next handshake starts over, and gets a certificate once the budget allows')
})

t.test('an on-demand name whose order failed is forgotten at its retry if nobody asked for it since; its failure record stays', async (t) => {
  const asked: string[] = []
  const { manager, clock, issuer, store } = unitManager({ domains: [], onDemand: onDemand((name) => { asked.push(name); return true }) })
  t.teardown(() => manager.close())
  manager.start()
  issuer.failWith = new Error('the CA says no')
  await t.rejects(manager.certificate('failing.example.test'), { code: 'FST_AUTOCERT_ORDER_FAILED' })
  await clock.advance(10 * MIN)
  t.equal(issuer.calls.length, 1, 'not retried at the first backoff step (1 min)')
  t.same(asked, ['failing.example.test'], 'nor was allow() asked again')
  t.same(manager.status(), [], 'and the name is no longer in memory')
  t.equal(manager.timersArmed, 0, 'with no timer left')
  t.equal(clock.pending, 0, 'none on the clock either')
  t.ok(await store.get(storeKeys.failure('failing.example.test')), 'the fleet\'s failure record is kept')
})

t.test('a closed manager orders nothing', async (t) => {
  const { manager, issuer } = unitManager({ domains: ['a.example.test'] })
  await manager.close()
  await t.rejects(manager.certificate('a.example.test'), { code: 'FST_AUTOCERT_CLOSED' })
  t.equal(issuer.calls.length, 0)
})
