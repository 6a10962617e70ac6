import t from 'tap'
import { AzureBlobStore } from '../lib'
import { startApp } from './support/app'
import { startInstance } from './helpers/instance'
import { startAzurite } from './support/azurite'
import { startPebble } from './support/pebble'
import { startServices } from './helpers/services'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

// Certificates that live 24 s: the default rule renews a certificate of under
// 10 days when half its lifetime (12 s) remains, about 12 s after issuance.
const VALIDITY = 24
// Pebble 2.4, a CA without renewal windows (ARI): renewals follow the lifetime rule the tests here time (2.10's window for a certificate this short is its whole life).
const WITHOUT_ARI = { version: '2.4' } as const

t.test('a short-lived certificate is renewed and the new one served, with every handshake succeeding', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t, { ...WITHOUT_ARI, validityPeriod: VALIDITY })
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'renewal-test' })
  const { app, port, logs } = await startApp(pebble, httpPort, store, { domains: ['r.example.test'] })
  t.teardown(() => app.close())

  const first = await app.autocert.certificate('r.example.test')
  const status = app.autocert.status()[0]
  t.ok(status.renewAt !== undefined && status.renewAt < first.notAfter, 'a renewal is scheduled before expiry')

  // Handshakes every 100 ms until a new serial is served (or the first certificate expires).
  const serials = new Set<string>()
  let handshakes = 0
  let unverified = 0
  while (Date.now() < first.notAfter.getTime()) {
    const served = await handshake(port, 'r.example.test', root)
    handshakes++
    if (!served.authorized) unverified++
    serials.add(served.serial)
    if (serials.size === 2) break
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  t.equal(serials.size, 2, `renewed before expiry, served after ${handshakes} successful handshakes`)
  t.equal(unverified, 0, 'every served chain verified against the root')
  t.equal(pebble.orderCount(), 2, 'one order to obtain, one to renew')
  const renewed = logs.find((l) => l.msg === 'certificate renewed')
  t.ok(renewed, 'the renewal is logged')
  t.equal(renewed?.serial, app.autocert.status()[0].serial, 'status() shows the new serial')
  const stored = await store.get('r.example.test')
  t.ok(stored?.toString().includes('CERTIFICATE'), 'the renewed certificate is in the store')
})

t.test('a fleet renews once: one renewal order, every instance serves the new serial', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({ ...WITHOUT_ARI, httpPort, validityPeriod: VALIDITY })
  t.teardown(() => pebble.stop())
  const root = await pebble.root()
  const base = { connectionString: azurite.connectionString, container: 'fleet-renewal', domains: ['fr.example.test'] }
  // The instance answering Pebble's validation first: the others order as soon as they listen.
  const responder = await startInstance(pebble, { ...base, name: 'r1', httpPort })
  const fleet = [responder, ...await Promise.all([
    startInstance(pebble, { ...base, name: 'r2' }),
    startInstance(pebble, { ...base, name: 'r3' })
  ])]
  t.teardown(() => Promise.all(fleet.map((i) => i.stop())))
  const serve = (): Promise<string[]> => Promise.all(fleet.map(async (i) => (await handshake(i.port, 'fr.example.test', root)).serial))

  const first = await serve()
  t.equal(new Set(first).size, 1, 'one certificate for the fleet')
  const renewed = await Promise.any(fleet.map((i) => i.waitForLog((l) => l.msg === 'certificate renewed', 60_000)))
  // Every instance adopts it at its own renewal time, at most the jitter window later.
  await new Promise((resolve) => setTimeout(resolve, 3000))
  const after = await serve()
  t.same(after, [renewed.serial, renewed.serial, renewed.serial], 'all three serve the renewed certificate')
  t.not(renewed.serial, first[0])
  t.equal(pebble.orderCount(), 2, 'one order to obtain, one to renew, for the whole fleet')
  const renewals = fleet.flatMap((i) => i.logs.filter((l) => l.msg === 'certificate renewed'))
  t.equal(renewals.length, 1, 'one instance renewed; the others adopted')
})
