// Unit tier: renewal windows (ACME Renewal Information, RFC 9773) for a fleet, on a manual clock (see test/helpers/unit.ts).
import t from 'tap'
import { RENEWAL_INFO_INTERVALS } from '../../lib/acme/ari'
import type { ManagerOptions } from '../../lib/manager'
import { storeKeys } from '../../lib/store/keys'
import { AriIssuer, ManualClock, unitManager, type Unit } from '../helpers/unit'

const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
const A = 'a.example.test'

/** `n` instances on one store and clock, each with its own AriIssuer (the same CA, as far as the store can tell). */
function fleet (n: number, options: Partial<ManagerOptions> & { domains: string[] }): Array<Unit<AriIssuer>> {
  const clock = new ManualClock()
  const first = unitManager(options, clock, (c) => new AriIssuer(c))
  const others = Array.from({ length: n - 1 }, (_, i) =>
    unitManager({ ...options, store: first.store, instanceId: `unit-${i + 1}` }, clock, (c) => new AriIssuer(c)))
  return [first, ...others]
}

async function startAll (units: Array<Unit<AriIssuer>>): Promise<void> {
  // The first obtains the certificates; the others load them, as instances started after it.
  units[0].manager.start()
  await units[0].clock.advance(0)
  for (const unit of units.slice(1)) {
    await unit.manager.prewarm()
    unit.manager.start()
  }
  await units[0].clock.advance(0)
}

const orders = (units: Array<Unit<AriIssuer>>): Array<{ name: string, at: number, replaces?: string }> => units.flatMap((u) => u.issuer.calls)
const checks = (units: Array<Unit<AriIssuer>>): number => units.reduce((n, u) => n + u.issuer.checks.length, 0)

t.test('a window in the future is honoured: no order before it, one inside it, naming the certificate it replaces', async (t) => {
  const [unit] = fleet(1, { domains: [A] })
  const { manager, clock, issuer } = unit
  t.teardown(() => manager.close())
  const start = clock.now() + 10 * DAY
  issuer.answer = () => ({ window: { start, end: start + HOUR, explanationURL: 'https://ca.example/why' }, retryAfter: 6 * HOUR })
  await startAll([unit])
  const [status] = manager.status()
  t.same(status.renewalWindow, { start: new Date(start), end: new Date(start + HOUR), explanationURL: 'https://ca.example/why' }, 'status() shows the window and its explanation')
  const renewAt = (status.renewAt as Date).getTime()
  t.ok(renewAt >= start && renewAt <= start + HOUR, 'the renewal time is inside the window')
  t.ok((status.renewalInfoCheck as Date).getTime() <= clock.now() + 6 * HOUR + 5 * MIN, 'and the window is looked at again after Retry-After')
  await clock.advance(start - clock.now() - 1)
  t.equal(issuer.calls.length, 1, 'no order before the window, however many checks (the window stays)')
  t.ok(issuer.checks.length >= 40, `checked every 6 hours meanwhile (${issuer.checks.length} checks)`)
  await clock.advance(HOUR)
  t.equal(issuer.calls.length, 2, 'one order inside it')
  t.equal(issuer.calls[1].replaces, status.serial, 'naming the certificate it replaces')
})

t.test('the fleet asks the CA once per certificate and interval, whatever its size; the others read the store', async (t) => {
  const units = fleet(3, { domains: [A] })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  await startAll(units)
  t.equal(checks(units), 1, 'the certificate\'s first window: asked for once, by the instance that ordered it')
  const stored = units[0].store.get(storeKeys.renewalInfo(A))
  t.ok(await stored, 'and stored for the fleet')
  t.same(units.map((u) => u.manager.status()[0].renewalWindow), units.map(() => units[0].manager.status()[0].renewalWindow), 'every instance knows the window')
  await units[0].clock.advance(2 * DAY)
  const asked = checks(units)
  t.ok(asked >= 8 && asked <= 9, `two days at Retry-After 6 h: ${asked} requests to the CA for the fleet of 3, not 24`)
  t.equal(orders(units).length, 1, 'and no order')
})

t.test('the drill: every window moved to the past, the whole fleet renews each certificate exactly once, exempt from the budget', async (t) => {
  const domains = Array.from({ length: 20 }, (_, i) => `d${i}.example.test`)
  // The 20 first orders spend the hour's budget: any renewal within the hour that counted against it would be refused.
  const units = fleet(3, { domains, maxOrdersPerHour: 20 })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  const normal = (cert: { notAfter: number }): { window: { start: number, end: number }, retryAfter: number } =>
    ({ window: { start: cert.notAfter - 30 * DAY, end: cert.notAfter - 29 * DAY }, retryAfter: MIN })
  for (const u of units) u.issuer.answer = normal
  await startAll(units)
  t.equal(orders(units).length, 20, 'one order per domain to start with')
  const old = new Map(units[0].manager.status().map((s) => [s.domain, s.serial]))
  const revokedAt = units[0].clock.now()
  const past = { start: revokedAt - HOUR, end: revokedAt - HOUR + 1000 }
  for (const u of units) u.issuer.answer = (cert) => cert.notBefore <= revokedAt ? { window: past, retryAfter: MIN } : normal(cert)
  await units[0].clock.advance(10 * MIN)
  const renewals = orders(units).slice(20)
  t.equal(renewals.length, 20, 'each domain renewed once, within minutes, though the budget is spent')
  t.same(new Set(renewals.map((o) => o.name)).size, 20, 'every domain')
  t.same(renewals.map((o) => o.replaces).sort(), [...old.values()].sort(), 'each naming the certificate it replaces')
  for (const u of units) {
    t.same(u.manager.status().filter((s) => s.serial === old.get(s.domain)).map((s) => s.domain), [], 'every instance serves the new serials')
  }
  // The CA keeps giving the old answer: the same window again, now about the new certificates.
  for (const u of units) u.issuer.answer = () => ({ window: past, retryAfter: MIN })
  await units[0].clock.advance(2 * HOUR)
  t.equal(orders(units).length, 40, 'a second identical answer causes no order')
})

t.test('a CA whose windows keep moving to the past gets one exempt renewal an hour per name; the rest counts against the budget', async (t) => {
  const units = fleet(2, { domains: [A], maxOrdersPerHour: 3 })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  // Every answer a window in the past, a new one each time, to be asked again in a minute.
  let n = 0
  for (const u of units) {
    u.issuer.answer = () => {
      n++
      return { window: { start: u.clock.now() - HOUR - n, end: u.clock.now() - HOUR }, retryAfter: MIN }
    }
  }
  await startAll(units)
  await units[0].clock.advance(3 * HOUR - MIN)
  const placed = orders(units).length
  const exempt = units.flatMap((u) => u.log.lines).filter((l) => l.msg === 'ordering certificate' && l.obj.exempt === true).length
  // Nearly 3 hours: one exempt renewal an hour, and the budget's 3 an hour (the first order included); a loop would be one a minute, 180.
  t.ok(exempt >= 2 && exempt <= 3, `${exempt} exempt renewals in 3 hours`)
  t.ok(placed - exempt <= 3 * 3, `${placed - exempt} orders within the budget`)
  t.ok(units.flatMap((u) => u.log.lines).some((l) => l.msg === 'order budget used up: order postponed'), 'which refuses the rest')
})

t.test('ARI failing or missing: the lifetime rule, and the check tried again after an hour', async (t) => {
  const [unit] = fleet(1, { domains: [A] })
  const { manager, clock, issuer, log } = unit
  t.teardown(() => manager.close())
  issuer.answer = () => new Error('503 from the CA')
  await startAll([unit])
  const [status] = manager.status()
  const left = (status.notAfter as Date).getTime() - (status.renewAt as Date).getTime()
  t.ok(left >= 30 * DAY && left <= 30 * DAY + HOUR, 'a third of 90 days left')
  t.equal(status.renewalWindow, undefined, 'no window shown')
  t.ok(log.lines.some((l) => l.level === 'warn' && /renewal information could not be read/.test(l.msg)), 'the failure is logged')
  const asked = issuer.checks.length
  await clock.advance(RENEWAL_INFO_INTERVALS.afterFailure + 6 * MIN)
  t.equal(issuer.checks.length, asked + 1, 'asked again after an hour')
  issuer.answer = () => undefined
  await clock.advance(RENEWAL_INFO_INTERVALS.afterFailure + 6 * MIN)
  const none = issuer.checks.length
  await clock.advance(11 * HOUR)
  t.equal(issuer.checks.length, none, 'a CA without renewal information is not asked again for 12 hours')
})

t.test('a CA whose directory has no renewal windows costs the store nothing: no record read, no lock but the order\'s', async (t) => {
  const units = fleet(3, { domains: [A] })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  const { store, clock } = units[0]
  const used: string[] = []
  const { get, lock } = store
  store.get = async (key, options) => { used.push(`get ${key}`); return await get.call(store, key, options) }
  store.lock = async (key, signal, options) => { used.push(`lock ${key}`); return await lock.call(store, key, signal, options) }
  for (const unit of units) unit.issuer.offers = false
  await startAll(units)
  await clock.advance(2 * DAY + MIN)
  t.same(used.filter((u) => u.endsWith('+ari') || u === `lock ${A}`), [`lock ${A}`], 'three instances, two days: the name locked once, for its order, and no record read')
  t.same(units.map((u) => u.manager.status()[0].renewalInfoCheck === undefined || (u.manager.status()[0].renewalInfoCheck as Date).getTime() > clock.now()), [true, true, true], 'the next look is hours away')
  t.equal(orders(units).length, 1, 'one order')
})

t.test('a record no instance could have written is ignored: the CA is asked, the record replaced', async (t) => {
  const [unit] = fleet(1, { domains: [A] })
  const { manager, clock, issuer, store } = unit
  t.teardown(() => manager.close())
  await startAll([unit])
  const serial = manager.status()[0].serial as string
  const year = clock.now() + 365 * DAY
  await store.put(storeKeys.renewalInfo(A), JSON.stringify({ serial, checkedAt: clock.now(), nextCheck: year, window: { start: year, end: year + 1 }, renewAt: year }))
  const other = unitManager({ domains: [A], store, instanceId: 'other' }, clock, (c) => new AriIssuer(c))
  t.teardown(() => other.manager.close())
  await other.manager.prewarm()
  other.manager.start()
  await clock.advance(0)
  t.equal(other.issuer.checks.length, 1, 'the planted record is not believed: the CA is asked')
  t.ok((other.manager.status()[0].renewAt as Date).getTime() < year, 'the renewal is not put off')
  const record = JSON.parse(String(await store.get(storeKeys.renewalInfo(A)))) as { nextCheck: number }
  t.ok(record.nextCheck <= clock.now() + RENEWAL_INFO_INTERVALS.max, 'and the record is replaced')
  t.ok(issuer.checks.length >= 1)
})

t.test('a record planted in the store with a window in the past orders nothing: the CA is asked before an exempt renewal', async (t) => {
  const units = fleet(2, { domains: [A], maxOrdersPerHour: 1 })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  await startAll(units)
  const [a] = units
  const serial = a.manager.status()[0].serial as string
  const now = a.clock.now()
  // Fresh-looking, plausible, and saying "renew now": what someone with write access to the container could plant.
  await a.store.put(storeKeys.renewalInfo(A), JSON.stringify({ serial, checkedAt: now, nextCheck: now + 11 * HOUR, window: { start: now - HOUR, end: now - HOUR + 1 }, renewAt: now - HOUR }))
  const asked = checks(units)
  await a.clock.advance(7 * HOUR)
  t.equal(orders(units).length, 1, 'no order: the CA\'s own window is two months away')
  t.ok(checks(units) > asked, 'the CA was asked')
  const record = JSON.parse(String(await a.store.get(storeKeys.renewalInfo(A)))) as { window: { start: number } }
  t.ok(record.window.start > a.clock.now() + 30 * DAY, 'and the record says what the CA says again')
})

t.test('alreadyReplaced: the store has the replacement (adopted, no order), or the order goes again without replaces', async (t) => {
  const units = fleet(2, { domains: [A] })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  await startAll(units)
  const [a, b] = units
  const first = a.manager.status()[0].serial as string
  const firstBundle = await a.store.get(A) as Buffer
  // b renews; its certificate reaches the store only after a has read it (as a write that was pending, unsaved, would).
  await a.clock.advance(1000)
  await b.manager.renew(A)
  const replacement = await a.store.get(A) as Buffer
  await a.store.put(A, firstBundle)
  a.issuer.replaced.add(first)
  a.issuer.beforeRefusal = async () => { await a.store.put(A, replacement) }
  await a.manager.renew(A)
  a.issuer.beforeRefusal = undefined
  t.equal(a.issuer.calls.filter((c) => c.replaces === first).length, 1, 'a named the old certificate once')
  t.equal(a.manager.status()[0].serial, b.manager.status()[0].serial, 'and took b\'s replacement from the store instead of ordering')
  t.equal(a.issuer.calls.length, 2, 'a placed no second order')
  // Nothing in the store replaces it this time: one more order, without replaces.
  const current = a.manager.status()[0].serial as string
  a.issuer.replaced.add(current)
  await a.manager.renew(A)
  t.same(a.issuer.calls.slice(-2).map((c) => c.replaces), [current, undefined], 'then the order again without replaces')
  t.not(a.manager.status()[0].serial, current, 'and its certificate served')
  // Refused for another reason (another account's certificate, say): the order goes without replaces, the store is not asked.
  a.issuer.refuseReplaces = true
  const before = a.manager.status()[0].serial as string
  await a.manager.renew(A)
  t.same(a.issuer.calls.slice(-2).map((c) => c.replaces), [before, undefined], 'a refused replaces: once more without it')
  t.ok(a.log.lines.some((l) => l.msg === 'the CA refused the order\'s replaces: ordering without it'), 'and that is logged')
})

t.test('revoke(): replaced first, then revoked with its reason; the other instances adopt the replacement at their next check', async (t) => {
  const units = fleet(2, { domains: [A] })
  t.teardown(async () => { for (const u of units) await u.manager.close() })
  await startAll(units)
  const [a, b] = units
  const old = a.manager.status()[0].serial as string
  await a.clock.advance(1000)
  const revoked: string[] = []
  a.manager.events.on('revoked', (e) => revoked.push(`${e.serial}:${e.reason ?? ''}`))
  const replacement = await a.manager.revoke(A, 4)
  t.same(a.issuer.revoked, [{ serial: old, reason: 4 }], 'revoked at the CA, with the reason')
  t.same(revoked, [`${old}:4`], 'a revoked event')
  t.not(replacement.serial, old, 'a replacement')
  t.equal(a.manager.status()[0].serial, replacement.serial, 'served here at once')
  t.equal(b.manager.status()[0].serial, old, 'the other instance still serves the old one until it looks')
  await a.clock.advance(6 * HOUR + 6 * MIN)
  t.equal(b.manager.status()[0].serial, replacement.serial, 'and adopts the replacement at its next check')
  t.equal(orders(units).length, 2, 'one replacement order')
})

t.test('a cooled certificate: to ask the CA for its window, the instance reads it whole first, once', async (t) => {
  const B = 'b.example.test'
  const [unit] = fleet(1, { domains: [A, B], contextCacheSize: 1 })
  const { manager, clock, issuer, store } = unit
  t.teardown(() => manager.close())
  issuer.answer = () => ({ window: { start: clock.now() + 30 * DAY, end: clock.now() + 31 * DAY }, retryAfter: 6 * HOUR })
  await startAll([unit])
  t.same(manager.current(A), [], 'a, ordered first, is cooled')
  const get = store.get.bind(store)
  const reads: string[] = []
  store.get = async (key, options) => { reads.push(key); return await get(key, options) }
  const before = issuer.checks.length
  await clock.advance(6 * HOUR + 6 * MIN)
  t.equal(issuer.checks.length - before, 2, 'both windows asked for again')
  t.equal(reads.filter((key) => key === A).length, 1, 'a read whole once, to be named to the CA')
  // Reading a whole cools b (one place in the cache): b is read too if its check comes after a's.
  t.ok(reads.filter((key) => key === B).length <= 1, 'b read at most once')
  t.equal(issuer.calls.length, 2, 'nothing ordered')
})

t.test('a directory that cannot be read: the check takes another instance\'s answer, or fails without the name\'s lock or its certificate', async (t) => {
  const B = 'b.example.test'
  const [unit] = fleet(1, { domains: [A, B], contextCacheSize: 1 })
  const { manager, clock, issuer, store, log } = unit
  t.teardown(() => manager.close())
  issuer.answer = () => ({ window: { start: clock.now() + 30 * DAY, end: clock.now() + 31 * DAY }, retryAfter: 6 * HOUR })
  await startAll([unit])
  const calls: string[] = []
  const get = store.get.bind(store)
  const lock = store.lock.bind(store)
  store.get = async (key, options) => { calls.push(`get ${key}`); return await get(key, options) }
  store.lock = async (key, signal, options) => { calls.push(`lock ${key}`); return await lock(key, signal, options) }
  issuer.directoryFailure = new Error('connect ECONNREFUSED')
  const before = issuer.checks.length
  await clock.advance(6 * HOUR + 6 * MIN)
  t.equal(issuer.checks.length, before, 'the CA is not asked')
  t.same(calls.filter((c) => c.startsWith('lock')), [], 'no lock taken')
  t.same(calls.filter((c) => c === `get ${A}` || c === `get ${B}`), [], 'no certificate read')
  t.same(calls.filter((c) => c.endsWith('+ari')).sort(), [`get ${storeKeys.renewalInfo(A)}`, `get ${storeKeys.renewalInfo(B)}`], 'each record read once')
  t.ok(log.lines.some((l) => l.msg === 'renewal information check failed; will retry'), 'the failure logged')
  const [status] = manager.status()
  t.ok((status.renewalInfoCheck as Date).getTime() - clock.now() <= RENEWAL_INFO_INTERVALS.afterFailure + 5 * MIN, 'and looked at again after an hour')
  issuer.directoryFailure = undefined
  await clock.advance(RENEWAL_INFO_INTERVALS.afterFailure + 6 * MIN)
  t.equal(issuer.checks.length, before + 2, 'once the directory is back, both windows are asked for')
})
