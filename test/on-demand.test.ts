import t from 'tap'
import { AzureBlobStore, type AutocertEvents } from '../lib'
import { startApp, eventually, spyStore, type TestApp } from './support/app'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

type BackoffEvent = AutocertEvents['backoff'][0]

t.test('on-demand names on real Pebble and real Azurite', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const store = spyStore(new AzureBlobStore({ connectionString: azurite.connectionString, container: 'on-demand' }))
  const asked: string[] = []
  const tenants = new Set(['tenant-a.example.test', 'tenant-b.example.test', 'tenant-c.example.test'])
  const allow = async (name: string): Promise<boolean> => {
    asked.push(name)
    if (name === 'throws.example.test') throw new Error('tenant database unreachable')
    // Never answers: the timeout decides.
    if (name === 'slow.example.test') return await new Promise<boolean>(() => {})
    return tenants.has(name)
  }
  const app = await startApp(pebble, httpPort, store, { domains: [], onDemand: { allow, timeout: 300, cacheSize: 2 } })
  t.teardown(() => app.app.close())
  const count = (name: string): number => asked.filter((n) => n === name).length
  const onDemandNames = (a: TestApp): string[] => a.app.autocert.status().filter((s) => s.onDemand === true).map((s) => s.domain).sort()

  let servedA = ''
  await t.test('an allowed name gets its certificate at its first handshake: one allow() call, one order', async (t) => {
    const orders = pebble.orderCount()
    const served = await Promise.all(Array.from({ length: 20 }, async () => await handshake(app.port, 'tenant-a.example.test', root)))
    t.ok(served.every((s) => s.authorized && s.subject === 'tenant-a.example.test'), '20 concurrent handshakes verify against Pebble\'s root')
    t.equal(new Set(served.map((s) => s.serial)).size, 1, 'all served one certificate')
    t.equal(pebble.orderCount(), orders + 1, 'one order')
    t.equal(count('tenant-a.example.test'), 1, 'allow() was asked once')
    servedA = served[0].serial
    t.same(onDemandNames(app), ['tenant-a.example.test'], 'status() lists it as on-demand')
    await handshake(app.port, 'TENANT-A.example.test.', root)
    t.equal(count('tenant-a.example.test'), 1, 'a later handshake, in another spelling, does not ask again')
    // Its order ends once its renewal window is asked for and stored: the next test counts store calls.
    await eventually(() => app.app.autocert.status().every((s) => s.lockHolder === undefined && s.renewalWindow !== undefined))
  })

  await t.test('a refused name fails the handshake, with no order and no store call; the answer is kept', async (t) => {
    const orders = pebble.orderCount()
    const before = store.keys.length
    for (let i = 0; i < 3; i++) await t.rejects(handshake(app.port, 'not-a-tenant.example.test', root))
    t.equal(count('not-a-tenant.example.test'), 1, 'allow() was asked once for three handshakes')
    t.same(store.keys.slice(before), [], 'no store call')
    t.equal(pebble.orderCount(), orders, 'no order')
  })

  await t.test('names that fail normalisation never reach allow()', async (t) => {
    const before = asked.length
    for (const name of ['*.example.test', 'bad..example.test', '-dash.example.test', 'under_score.example.test', 'single-label', 'x'.repeat(300), '1.2.3.4']) {
      await t.rejects(app.app.autocert.certificate(name), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' }, JSON.stringify(name.slice(0, 30)))
    }
    await t.rejects(handshake(app.port, 'under_score.example.test', root), 'nor does a handshake for one')
    t.same(asked.slice(before), [], 'allow() was never called')
  })

  await t.test('an allow() that throws or never answers means no', async (t) => {
    const orders = pebble.orderCount()
    await t.rejects(handshake(app.port, 'throws.example.test', root))
    await t.rejects(handshake(app.port, 'slow.example.test', root))
    t.equal(pebble.orderCount(), orders, 'no order')
    const warned = app.logs.filter((l) => l.msg === 'onDemand.allow() failed or timed out: the name is refused').map((l) => l.domain)
    t.same(warned.sort(), ['slow.example.test', 'throws.example.test'], 'each is logged')
  })

  await t.test('memory is bounded: the least recently used name is dropped, then read back from the store', async (t) => {
    // A handshake is served as soon as the certificate is in memory; a name whose
    // order is still writing it is not dropped. Each order ends before the next name.
    const settled = async (): Promise<void> => { await eventually(() => app.app.autocert.status().every((s) => s.lockHolder === undefined)) }
    await handshake(app.port, 'tenant-b.example.test', root)
    await settled()
    await handshake(app.port, 'tenant-a.example.test', root)
    await handshake(app.port, 'tenant-c.example.test', root)
    await settled()
    t.same(onDemandNames(app), ['tenant-a.example.test', 'tenant-c.example.test'], 'cacheSize 2: tenant-b, least recently used, was dropped')
    const orders = pebble.orderCount()
    const loaded: string[] = []
    app.app.autocert.on('loaded', (e) => loaded.push(e.domain))
    const again = await handshake(app.port, 'tenant-b.example.test', root)
    t.ok(again.authorized)
    t.equal(pebble.orderCount(), orders, 'no new order: it came from the store')
    t.same(loaded, ['tenant-b.example.test'], 'a loaded event')
    t.same(onDemandNames(app), ['tenant-b.example.test', 'tenant-c.example.test'], 'and tenant-a is the one dropped now')
    const a = await handshake(app.port, 'tenant-a.example.test', root)
    t.equal(a.serial, servedA, 'tenant-a read back: the same certificate')
  })
})

t.test('on-demand orders obey the fleet\'s order budget', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const app = await startApp(pebble, httpPort, new AzureBlobStore({ connectionString: azurite.connectionString, container: 'on-demand-budget' }), {
    domains: [], onDemand: { allow: () => true }, maxOrdersPerHour: 2
  })
  t.teardown(() => app.app.close())
  const backoff: BackoffEvent[] = []
  app.app.autocert.on('backoff', (e) => backoff.push(e))
  const results = []
  for (const name of ['flood-1.example.test', 'flood-2.example.test', 'flood-3.example.test', 'flood-4.example.test']) {
    results.push(await handshake(app.port, name, root).then(() => 'served', () => 'refused'))
  }
  t.same(results, ['served', 'served', 'refused', 'refused'], 'two names served, the rest refused')
  t.equal(pebble.orderCount(), 2, 'two orders')
  t.same(backoff.map((e) => [e.domain, e.reason]), [['flood-3.example.test', 'budget'], ['flood-4.example.test', 'budget']], 'backoff events say why')
  t.ok(backoff.every((e) => e.retryAt.getTime() > Date.now()), 'with a retry time in the future')
})

t.test('a name allow() no longer accepts is not renewed', async (t) => {
  // 30-second certificates renewed when 25 s remain: renewals within seconds.
  const { azurite, pebble, httpPort, root } = await startServices(t, { validityPeriod: 30 })
  const tenants = new Set(['keep.example.test', 'gone.example.test'])
  const app = await startApp(pebble, httpPort, new AzureBlobStore({ connectionString: azurite.connectionString, container: 'on-demand-renewal' }), {
    domains: [], renewBefore: 25_000, onDemand: { allow: (name) => tenants.has(name) }
  })
  t.teardown(() => app.app.close())
  const renewed: string[] = []
  app.app.autocert.on('renewed', (e) => renewed.push(e.domain))
  const ordering = (domain: string): number => app.logs.filter((l) => l.msg === 'ordering certificate' && l.domain === domain).length
  for (const name of tenants) t.ok((await handshake(app.port, name, root)).authorized, `${name} obtained`)
  const orders = pebble.orderCount()
  const keepOrders = ordering('keep.example.test')
  tenants.delete('gone.example.test')
  await eventually(() => renewed.includes('keep.example.test') &&
    app.logs.some((l) => l.msg === 'on-demand name no longer allowed: not renewed' && l.domain === 'gone.example.test'), 60_000)
  // Pebble 2.10's windows span the whole of a 30-second certificate, so keep.example.test may
  // renew more than once before gone.example.test comes due: every order since is one of its renewals.
  t.equal(ordering('gone.example.test'), 1, 'no order for gone.example.test since its first')
  await t.resolves(eventually(() => pebble.orderCount() === orders + ordering('keep.example.test') - keepOrders),
    'every order Pebble received since is one of keep.example.test\'s renewals')
  t.notOk(renewed.includes('gone.example.test'), 'gone.example.test was not renewed')
  t.same(app.app.autocert.status().map((s) => s.domain), ['keep.example.test'], 'and is no longer in memory')
  await t.rejects(handshake(app.port, 'gone.example.test', root), 'a handshake for it is refused once allow() says no')
})

t.test('a name just added is never the one dropped, even when the others are still being ordered', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'on-demand-evict' })
  const app = await startApp(pebble, httpPort, store, { domains: [], onDemand: { allow: () => true, cacheSize: 1 } })
  t.teardown(() => app.app.close())
  // Another instance holds x's lock: x's order waits, in flight, while y is added.
  const blocker = await store.lock('x.example.test', undefined, { holder: 'other-instance' })
  const x = handshake(app.port, 'x.example.test', root)
  await eventually(() => app.app.autocert.status().some((s) => s.domain === 'x.example.test' && s.lockHolder === 'other-instance'))
  t.ok((await handshake(app.port, 'y.example.test', root)).authorized, 'y served')
  t.same(app.app.autocert.status().map((s) => s.domain).sort(), ['x.example.test', 'y.example.test'],
    'y, just added, stays; x, in flight, stays: over cacheSize for a while')
  await blocker.release()
  t.ok((await x).authorized, 'x served once the lock is free')
  await eventually(() => app.app.autocert.status().every((s) => s.lockHolder === undefined))
  await handshake(app.port, 'z.example.test', root)
  t.same(app.app.autocert.status().map((s) => s.domain), ['z.example.test'], 'the next name added brings memory back to cacheSize')
})
