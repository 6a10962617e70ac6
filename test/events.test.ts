import t from 'tap'
import { AzureBlobStore, type Autocert, type AutocertEvents } from '../lib'
import { startApp, eventually } from './support/app'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

type Seen = Array<{ event: keyof AutocertEvents, payload: Record<string, unknown> }>

const EVENTS: Array<keyof AutocertEvents> = ['obtained', 'renewed', 'loaded', 'failed', 'backoff', 'lock-wait']

t.test('events and status() for operators, on real Pebble and real Azurite', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: 'events' })
  const record = (autocert: Autocert): Seen => {
    const seen: Seen = []
    for (const event of EVENTS) autocert.on(event, (payload: object) => { seen.push({ event, payload: { ...payload } }) })
    return seen
  }

  const first = await startApp(pebble, httpPort, newStore(), { domains: ['a.example.test'], instanceId: 'instance-1' })
  t.teardown(() => first.app.close())
  const seen1 = record(first.app.autocert)
  const holderAtObtained: Array<string | undefined> = []
  first.app.autocert.on('obtained', () => { holderAtObtained.push(first.app.autocert.status()[0].lockHolder) })
  // A listener that throws is logged and changes nothing.
  first.app.autocert.on('obtained', () => { throw new Error('listener bug') })

  let serial = ''
  await t.test('obtained: the serial and expiry served, the lock held by this instance meanwhile', async (t) => {
    await eventually(() => seen1.some((e) => e.event === 'obtained'))
    const served = await handshake(first.port, 'a.example.test', root)
    serial = served.serial
    const obtained = seen1.find((e) => e.event === 'obtained')?.payload
    t.same(obtained, { domain: 'a.example.test', keyType: 'ecdsa', serial, notAfter: served.validTo })
    t.ok(first.logs.some((l) => l.msg === 'an autocert event listener threw'), 'the throwing listener is logged')
    t.same(holderAtObtained, ['instance-1'], 'status() names this instance as the lock holder while it orders')
    // The order ends a moment after `obtained`: once the certificate is stored and its renewal window (ARI) asked for.
    await eventually(() => first.app.autocert.status()[0].lockHolder === undefined)
    t.equal(first.app.autocert.status()[0].lockHolder, undefined, 'and no one once it is done')
  })

  await t.test('loaded: another instance takes it from the store', async (t) => {
    const second = await startApp(pebble, httpPort, newStore(), { domains: ['a.example.test'], instanceId: 'instance-2', http01: undefined })
    t.teardown(() => second.app.close())
    // Registered before ready() would be nicer; startApp is ready already, so status() shows what prewarm loaded.
    t.equal(second.app.autocert.status()[0].serial, serial)
    t.ok(second.logs.some((l) => l.msg === 'certificate loaded' && l.serial === serial))
  })

  await t.test('renewed: with the serial replaced', async (t) => {
    const renewed = await first.app.autocert.renew('a.example.test')
    const event = seen1.find((e) => e.event === 'renewed')?.payload
    t.same(event, { domain: 'a.example.test', keyType: 'ecdsa', serial: renewed.serial, notAfter: renewed.notAfter, previousSerial: serial })
  })

  await t.test('lock-wait: who holds the lock, in the event and in status()', async (t) => {
    // Another instance (here: a lock taken on the same container) holds the name's lock.
    const other = newStore()
    t.teardown(() => other.close())
    const held = await other.lock('a.example.test', undefined, { holder: 'instance-9' })
    const renewing = first.app.autocert.renew('a.example.test')
    await eventually(() => first.app.autocert.status()[0].lockHolder === 'instance-9')
    t.ok(seen1.some((e) => e.event === 'lock-wait' && e.payload.domain === 'a.example.test' && e.payload.holder === 'instance-9'), 'a lock-wait event names the holder')
    await held.release()
    const renewed = await renewing
    t.equal(first.app.autocert.status()[0].serial, renewed.serial, 'the wait ends when the holder releases')
    t.equal(first.app.autocert.status()[0].lockHolder, undefined)
  })

  await t.test('failed and backoff: an order the CA cannot validate', async (t) => {
    // No HTTP-01 listener of its own, and its challenges in a container the first app's listener does not read: validation fails.
    const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'events-failing' })
    const failing = await startApp(pebble, httpPort, store, {
      domains: ['fail.example.test'], http01: undefined, retryDelays: [3_600_000]
    })
    t.teardown(() => failing.app.close())
    const seen = record(failing.app.autocert)
    await eventually(() => seen.some((e) => e.event === 'backoff'))
    const failed = seen.find((e) => e.event === 'failed')?.payload as AutocertEvents['failed'][0]
    const backoff = seen.find((e) => e.event === 'backoff')?.payload as AutocertEvents['backoff'][0]
    t.equal(failed.domain, 'fail.example.test')
    t.match(failed.error.message, /fail\.example\.test/, 'the CA\'s reason')
    t.equal(backoff.reason, 'failures')
    t.ok(failed.retryAt instanceof Date && backoff.retryAt.getTime() === failed.retryAt.getTime(), 'the same retry time in both')
    const status = failing.app.autocert.status()[0]
    t.same(status.retryAfter, backoff.retryAt, 'status() shows the backoff')
    t.equal(status.lastError?.message, failed.error.message, 'and the last error')
    t.equal(status.renewAt?.getTime(), backoff.retryAt.getTime(), 'and the next attempt')
  })
})
