import t from 'tap'
import { AzureBlobStore, type CertStore } from '../lib'
import { eventually, startApp, type TestApp } from './support/app'
import { startServices } from './helpers/services'
import { handshake, type Served } from './support/tls'

const SLOW = 'slow.example.test'
const B = 'b.example.test'
const C = 'c.example.test'
// The order the manager loads them in with `concurrency: 1`: slow first, so it holds the others back.
const DOMAINS = [SLOW, B, C]
const BACKGROUND = 'prewarming goes on in the background (options.prewarmTimeout)'

interface HeldStore extends CertStore {
  /** How many times get() was called for `key`. */
  reads: (key: string) => number
  /** Lets the held get() calls go on to Azurite. */
  release: () => void
}

/**
 * The real AzureBlobStore, counting get() per key, with get() of `held` kept
 * back until release(): a slow store read made on purpose. Not a fake: every
 * call still reaches Azurite, the held ones once released.
 */
function heldStore (inner: AzureBlobStore, held: string): HeldStore {
  const counts = new Map<string, number>()
  let open!: () => void
  const gate = new Promise<void>((resolve) => { open = resolve })
  return {
    reads: (key) => counts.get(key) ?? 0,
    release: () => { open() },
    get: async (key, options) => {
      counts.set(key, (counts.get(key) ?? 0) + 1)
      if (key === held) await gate
      return await inner.get(key, options)
    },
    put: async (key, value) => { await inner.put(key, value) },
    delete: async (key) => { await inner.delete(key) },
    list: async (prefix) => await inner.list(prefix),
    lock: async (key, signal, options) => await inner.lock(key, signal, options),
    lockState: async (key) => await inner.lockState(key)
  }
}

function serials (app: TestApp): Record<string, string | undefined> {
  return Object.fromEntries(app.app.autocert.status().map((s) => [s.domain, s.serial]))
}

t.test('prewarmTimeout on real Pebble and real Azurite', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const azure = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: 'prewarm' })

  // Three certificates on the container, their orders over (stored, renewal window asked for).
  const first = await startApp(pebble, httpPort, azure(), { domains: DOMAINS })
  await eventually(() => first.app.autocert.status().every((s) => s.serial !== undefined && s.lockHolder === undefined && s.renewalWindow !== undefined))
  const stored = serials(first)
  await first.app.close()
  t.equal(Object.values(stored).filter((s) => s !== undefined).length, 3, 'the first app ordered and stored three certificates')

  await t.test('a held store read holds neither ready() nor the other names', async (t) => {
    const orders = pebble.orderCount()
    const store = heldStore(azure(), SLOW)
    // Without prewarmTimeout, onReady waits for slow's read: never ready, and Fastify's pluginTimeout rejects it.
    const app = await startApp(pebble, httpPort, store, { domains: DOMAINS, concurrency: 1, prewarmTimeout: 500 })
    // Opened only after the close (and never when startApp failed): an app whose ready() was refused must not go on.
    t.teardown(async () => { await app.app.close(); store.release() })

    t.ok(app.port > 0, 'ready and listening while slow\'s read is held')
    t.equal(store.reads(SLOW), 1, 'slow\'s read is the one in flight')
    t.match(app.logs.find((l) => l.msg === BACKGROUND), { level: 30, done: 0, listed: 3 }, 'the timeout is logged: none of the 3 loaded')
    t.equal(store.reads(B), 0, 'b not read yet (concurrency 1, behind slow)')
    t.equal(store.reads(C), 0, 'c not read yet')
    t.same(serials(app), { [SLOW]: undefined, [B]: undefined, [C]: undefined }, 'nothing in memory yet')

    let slowServed: Served | undefined
    const slowHandshake = handshake(app.port, SLOW, root).then((served) => { slowServed = served; return served })

    const c = await handshake(app.port, C, root)
    t.ok(c.authorized, 'c\'s chain verifies against Pebble\'s root')
    t.equal(c.subject, C, 'for c')
    t.equal(c.serial, stored[C], 'c is served its stored certificate')
    t.equal(store.reads(C), 1, 'read once, by the handshake')
    t.equal(pebble.orderCount(), orders, 'no order')

    t.equal(slowServed, undefined, 'slow\'s handshake waits for the held read')
    t.equal(store.reads(SLOW), 1, 'no second read of slow')

    store.release()
    const slow = await slowHandshake
    t.ok(slow.authorized, 'once released, slow\'s handshake completes, verified')
    t.equal(slow.serial, stored[SLOW], 'with its stored certificate')

    await eventually(() => Object.values(serials(app)).every((s) => s !== undefined))
    t.same(serials(app), stored, 'every name has its stored serial in status()')
    t.equal((await handshake(app.port, B, root)).serial, stored[B], 'b is served its stored certificate')
    t.same(DOMAINS.map((d) => store.reads(d)), [1, 1, 1], 'each name read exactly once')
    t.equal(pebble.orderCount(), orders, 'no new order')
    t.notOk(app.logs.some((l) => l.msg === 'ordering certificate'), 'nothing was ordered')
  })

  await t.test('the default prewarmTimeout fits Fastify\'s default pluginTimeout', async (t) => {
    const store = heldStore(azure(), SLOW)
    // Fastify's defaults (pluginTimeout 10 s) and the plugin's (prewarmTimeout 5 s); slow's read held until the app is closed.
    const app = await startApp(pebble, httpPort, store, { domains: [SLOW] })
    t.teardown(async () => { await app.app.close(); store.release() })
    t.equal(app.app.initialConfig.pluginTimeout, 10_000, 'Fastify\'s default pluginTimeout')
    t.ok(app.port > 0, 'ready and listening, no pluginTimeout to raise')
    t.match(app.logs.find((l) => l.msg === BACKGROUND), { done: 0, listed: 1 }, 'the rest left to the background')
    t.equal(store.reads(SLOW), 1, 'one read, still held')
  })
})
