// Unit tier: when certificates are renewed, on a manual clock (see test/helpers/unit.ts).
import t from 'tap'
import { storeKeys } from '../../lib/store/keys'
import { MemoryStore } from '../../lib/store/memory'
import { unitManager } from '../helpers/unit'

const MIN = 60_000
const HOUR = 60 * MIN
const DAY = 24 * HOUR
const A = 'a.example.test'

t.test('a 90-day certificate is renewed 30 days before expiry, less up to an hour of jitter, once', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const renewed: Array<{ serial: string, previousSerial: string }> = []
  manager.events.on('renewed', (e) => renewed.push(e))
  manager.start()
  await clock.advance(0)
  const [first] = manager.status()
  const notAfter = (first.notAfter as Date).getTime()
  const renewAt = (first.renewAt as Date).getTime()
  t.ok(renewAt <= notAfter - 30 * DAY && renewAt >= notAfter - 30 * DAY - HOUR, 'renewAt in [notAfter - 30 d - 1 h, notAfter - 30 d]')

  await clock.advance(renewAt - clock.now() - 1000)
  t.equal(issuer.calls.length, 1, 'not a second early')
  await clock.advance(2000)
  t.equal(issuer.calls.length, 2, 'renewed when due')
  t.same(renewed.map((e) => e.previousSerial), [first.serial], 'a renewed event names the certificate it replaces')
  const [second] = manager.status()
  t.not(second.serial, first.serial, 'and the new one is served')
  t.ok((second.renewAt as Date).getTime() > notAfter, 'its own renewal is armed')
  await clock.advance(DAY)
  t.equal(issuer.calls.length, 2, 'nothing more')
})

t.test('each certificate renews by its own lifetime: a third left, half for under 10 days; renewBefore overrides, capped at half', async (t) => {
  for (const [lifetime, renewBefore, before, jitter] of [
    // Let's Encrypt's lifetimes: classic (90 d, 64 d from 2027, 45 d from 2028), tlsserver (45 d), shortlived (160 h).
    [64 * DAY, undefined, 64 * DAY / 3, HOUR],
    [45 * DAY, undefined, 15 * DAY, HOUR],
    [11 * DAY, undefined, 11 * DAY / 3, HOUR],
    [9 * DAY, undefined, 4.5 * DAY, HOUR],
    [160 * HOUR, undefined, 80 * HOUR, HOUR],
    [10 * MIN, undefined, 300_000, 30_000],
    [10 * MIN, DAY, 300_000, 30_000],
    [7 * DAY, HOUR, HOUR, 6 * MIN],
    [90 * DAY, 40 * DAY, 40 * DAY, HOUR]
  ] as const) {
    const { manager, clock, issuer } = unitManager({ domains: [A], renewBefore })
    issuer.lifetime = lifetime
    manager.start()
    await clock.advance(0)
    const [status] = manager.status()
    const left = (status.notAfter as Date).getTime() - (status.renewAt as Date).getTime()
    t.ok(left >= before && left <= before + jitter, `lifetime ${lifetime / HOUR} h, renewBefore ${renewBefore ?? 'default'}: renews ${left / HOUR} h before expiry`)
    await clock.advance(lifetime)
    t.ok(issuer.calls.length >= 2, 'and renews before it expires')
    t.ok(manager.status()[0].notAfter! > new Date(clock.now()), 'what it serves is live')
    await manager.close()
  }
})

t.test('a certificate another instance renewed is adopted from the store at the renewal time, without an order', async (t) => {
  const shared = unitManager({ domains: [A] })
  const other = unitManager({ domains: [A], store: shared.store, instanceId: 'other' }, shared.clock)
  t.teardown(async () => { await shared.manager.close(); await other.manager.close() })
  shared.manager.start()
  await shared.clock.advance(0)
  t.equal(shared.issuer.calls.length, 1)
  await other.manager.prewarm()
  other.manager.start()
  t.equal(other.manager.status()[0].serial, shared.manager.status()[0].serial, 'the other instance loaded it')
  await shared.clock.advance(61 * DAY)
  t.equal(shared.issuer.calls.length + other.issuer.calls.length, 2, 'one renewal for the two instances')
  t.equal(other.manager.status()[0].serial, shared.manager.status()[0].serial, 'both serve the renewed certificate')
})

t.test('renew() while the first order is still writing its certificate: a new certificate, not the one just served', async (t) => {
  const store = new MemoryStore()
  const { manager, clock, issuer } = unitManager({ domains: [A], store })
  t.teardown(() => manager.close())
  // The store's write of the first certificate waits: that order is served but not done.
  let written!: () => void
  const writing = new Promise<void>((resolve) => { written = resolve })
  const put = store.put.bind(store)
  store.put = async (key, value) => { if (key === storeKeys.certificate(A, 'ecdsa')) await writing; await put(key, value) }
  manager.start()
  await clock.advance(0)
  const first = manager.status()[0].serial
  t.ok(first, 'the first certificate is served')
  const renewing = manager.renew(A)
  written()
  const renewed = await renewing
  t.not(renewed.serial, first, 'renew() answers with a certificate issued after it was called')
  t.equal(manager.status()[0].serial, renewed.serial, 'and it is served')
  t.equal(issuer.calls.length, 2, 'the first order and the renewal')
})
