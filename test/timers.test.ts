import t from 'tap'
import Fastify from 'fastify'
import autocert, { AzureBlobStore, SNICallback } from '../lib'
import { eventually, startApp } from './support/app'
import { startServices } from './helpers/services'
import { freePort } from './support/ports'

// Certificates that live 10 s: due for renewal 5 s after issuance (half the lifetime at most).
const VALIDITY = 10
// Pebble 2.4, a CA without renewal windows (ARI): renewals follow the lifetime rule the tests here time (2.10's window for a certificate this short is its whole life).
const WITHOUT_ARI = { version: '2.4' } as const
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('renewal timers', async (t) => {
  const { azurite, pebble, httpPort } = await startServices(t, { ...WITHOUT_ARI, validityPeriod: VALIDITY })
  const store = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: 'timers' })

  await t.test('a due certificate loaded before the server listens is not renewed until it listens', async (t) => {
    const first = await startApp(pebble, httpPort, store(), { domains: ['due.example.test'] })
    const cert = await first.app.autocert.certificate('due.example.test')
    await first.app.close()
    await sleep(Math.max(0, cert.notBefore.getTime() + VALIDITY * 500 + 300 - Date.now()))

    const orders = pebble.orderCount()
    const app = Fastify({ https: { SNICallback } })
    await app.register(autocert, {
      domains: ['due.example.test'],
      store: store(),
      directoryUrl: pebble.directoryUrl,
      termsOfServiceAgreed: true,
      http01: { port: httpPort, host: '127.0.0.1' }
    })
    t.teardown(() => app.close())
    await app.ready()
    t.equal(app.autocert.status()[0].serial, cert.serial, 'loaded at onReady, still valid')
    await sleep(1500)
    t.equal(pebble.orderCount(), orders, 'no order while the app is only ready')
    await app.listen({ port: 0, host: '127.0.0.1' })
    await eventually(() => app.autocert.status()[0].serial !== cert.serial, 10_000)
    t.equal(pebble.orderCount(), orders + 1, 'renewed once the server listens')
  })

  await t.test('a failed forced renewal does not cancel the scheduled renewal', async (t) => {
    const first = await startApp(pebble, httpPort, store(), { domains: ['keep.example.test'] })
    const cert = await first.app.autocert.certificate('keep.example.test')
    await first.app.close()
    // No HTTP-01 listener any more: every validation fails.
    const app = await startApp(pebble, await freePort(), store(), { domains: ['keep.example.test'], http01: undefined, retryDelays: [300] })
    t.teardown(() => app.app.close())
    const orders = pebble.orderCount()
    await t.rejects(app.app.autocert.renew('keep.example.test'), { code: 'FST_AUTOCERT_ORDER_FAILED' })
    t.equal(pebble.orderCount(), orders + 1, 'the forced renewal reached the CA and failed')
    // Its retry finds the current certificate still good; the renewal stays due at renewAt.
    await eventually(() => pebble.orderCount() > orders + 1, cert.notBefore.getTime() + VALIDITY * 1000 - Date.now())
    t.ok(Date.now() >= cert.notBefore.getTime() + VALIDITY * 1000 / 2 - 1000, 'the renewal was attempted when due, not at once')
  })
})
