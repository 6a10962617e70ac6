// Unit tier: the name's lock as status() and the events show it, on a manual clock (see test/helpers/unit.ts).
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { EncryptedStore } from '../../lib/store/encrypted'
import { storeKeys } from '../../lib/store/keys'
import { MemoryStore } from '../../lib/store/memory'
import type { CertStore } from '../../lib/store/store'
import { settle, unitManager } from '../helpers/unit'

const A = 'a.example.test'

for (const [what, sealed] of [['a plain store', false], ['an EncryptedStore', true]] as const) {
  t.test(`${what}: a lock held by another instance is reported (lock-wait, status().lockHolder) until it is released`, async (t) => {
    const inner = new MemoryStore()
    const store: CertStore = sealed ? new EncryptedStore(inner, { key: randomBytes(32) }) : inner
    const held = await inner.lock(A, undefined, { holder: 'web-2/4711' })
    const { manager, issuer } = unitManager({ domains: [A], store, instanceId: 'web-1/42' })
    t.teardown(() => manager.close())
    const waits: Array<{ domain: string, holder?: string, lock: string }> = []
    manager.events.on('lock-wait', (e) => waits.push(e))

    const first = manager.certificate(A)
    await settle()
    t.same(waits, [{ domain: A, holder: 'web-2/4711', lock: 'name' }], 'one lock-wait event naming the holder and the lock')
    t.equal(manager.status()[0].lockHolder, 'web-2/4711', 'status() shows who holds it')
    t.equal(issuer.calls.length, 0, 'no order while another instance holds the lock')

    await held.release()
    const cert = await first
    t.equal(issuer.calls.length, 1)
    t.equal(manager.status()[0].lockHolder, undefined, 'nobody once released')
    if (sealed) t.equal(String(await inner.get(A)).slice(0, 4), 'ACS1', 'and the certificate is stored sealed')
    t.ok(cert.serial)
  })
}

t.test('while this instance holds the lock, status() says so', async (t) => {
  const { manager, issuer } = unitManager({ domains: [A], instanceId: 'web-1/42' })
  t.teardown(() => manager.close())
  issuer.stall = true
  const first = manager.certificate(A)
  first.catch(() => {})
  await settle()
  t.equal(manager.status()[0].lockHolder, 'web-1/42')
  await manager.close()
  await t.rejects(first, { code: 'FST_AUTOCERT_CLOSED' }, 'close() ends the order')
  t.equal(manager.status()[0].lockHolder, undefined, 'and releases the lock')
})

t.test('an order gives up a lock another instance keeps at lockTimeout: FST_AUTOCERT_LOCK_TIMEOUT naming the holder, a warning, status() meanwhile', async (t) => {
  const store = new MemoryStore()
  const held = await store.lock(A, undefined, { holder: 'stuck/1' })
  t.teardown(() => held.release())
  const { manager, clock, issuer, log } = unitManager({ domains: [A], store, instanceId: 'web-1/42', lockTimeout: 30_000 })
  t.teardown(() => manager.close())
  const t0 = clock.now()
  const order = manager.certificate(A)
  order.catch(() => {})
  await clock.advance(29_000)
  t.same(manager.status()[0].waitingFor, { lock: 'name', holder: 'stuck/1', since: new Date(t0) }, 'status() shows the wait: which lock, who, since when')
  await clock.advance(1_000)
  await t.rejects(order, { code: 'FST_AUTOCERT_LOCK_TIMEOUT', message: /lock a\.example\.test, held by stuck\/1, after 30000 ms/ })
  t.equal(issuer.calls.length, 0, 'no order placed')
  const warning = log.lines.find((l) => l.msg.startsWith('gave up waiting for a lock'))
  t.same(warning && { level: warning.level, ...warning.obj }, { level: 'warn', lock: A, holder: 'stuck/1', waitedMs: 30_000 }, 'a warning names the lock and its holder')
  t.equal(manager.status()[0].waitingFor, undefined, 'no longer waiting')
  t.equal(manager.status()[0].lockHolder, undefined)
})

t.test('waits for the order log\'s lock are reported like a name\'s, and end at lockTimeout too', async (t) => {
  const store = new MemoryStore()
  const held = await store.lock(storeKeys.orderLog, undefined, { holder: 'web-2/7' })
  t.teardown(() => held.release())
  const { manager, clock, issuer } = unitManager({ domains: [A], store, lockTimeout: 10_000 })
  t.teardown(() => manager.close())
  const waits: Array<{ domain: string, holder?: string, lock: string }> = []
  manager.events.on('lock-wait', (e) => waits.push(e))
  const order = manager.certificate(A)
  order.catch(() => {})
  await clock.advance(1_000)
  t.same(waits, [{ domain: A, holder: 'web-2/7', lock: 'order-log' }], 'a lock-wait event for the order log, with the domain waiting')
  t.match(manager.status()[0].waitingFor, { lock: 'order-log', holder: 'web-2/7' })
  await clock.advance(9_000)
  await t.rejects(order, { code: 'FST_AUTOCERT_LOCK_TIMEOUT', message: /acme_orders\+log, held by web-2\/7/ })
  t.equal(issuer.calls.length, 0)

  await held.release()
  const cert = await manager.certificate(A)
  t.ok(cert.serial, 'once the holder lets go, the next attempt orders')
  t.equal(manager.status()[0].waitingFor, undefined)
})

t.test('a handshake waits at most handshakeTimeout: FST_AUTOCERT_HANDSHAKE_TIMEOUT, and the order goes on for the next one', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [A], handshakeTimeout: 5_000 })
  t.teardown(() => manager.close())
  let open!: () => void
  issuer.gate = new Promise((resolve) => { open = resolve })
  const first = new Promise<unknown>((resolve) => manager.resolve(A, (err, ctx) => resolve(err ?? ctx)))
  await clock.advance(5_000)
  t.match(await first, { code: 'FST_AUTOCERT_HANDSHAKE_TIMEOUT', message: /"a\.example\.test" within 5000 ms/ }, 'the handshake fails with the coded error')
  t.equal(issuer.calls.length, 1, 'the order is under way')
  open()
  await clock.advance(0)
  const second = await new Promise<unknown>((resolve) => manager.resolve(A, (err, ctx) => resolve(err ?? ctx)))
  t.notOk(second instanceof Error, 'the next handshake is served by the order the first one started')
  t.equal(issuer.calls.length, 1, 'one order in all')
})

t.test('close() ends an order waiting for the account at once', async (t) => {
  const { manager, clock, issuer } = unitManager({ domains: [A] })
  issuer.account = new Promise(() => {})
  const order = manager.certificate(A)
  order.catch(() => {})
  await clock.advance(1_000)
  await manager.close()
  await t.rejects(order, { code: 'FST_AUTOCERT_CLOSED' })
  t.equal(issuer.calls.length, 0)
})

t.test('an order that finds the certificate stored meanwhile ends at once, without waiting for the order log\'s lock it had asked for', async (t) => {
  const store = new MemoryStore()
  const nameLock = await store.lock(A, undefined, { holder: 'web-2/7' })
  const logLock = await store.lock(storeKeys.orderLog, undefined, { holder: 'web-2/7' })
  t.teardown(() => logLock.release())
  const { manager, clock, issuer } = unitManager({ domains: [A], store })
  t.teardown(() => manager.close())
  const order = manager.certificate(A)
  await clock.advance(1_000)
  // The other instance stores its certificate and lets the name go; it still holds the order log.
  const theirs = issuer.ca.issue(A, { notBefore: clock.now(), lifetime: 90 * 86_400_000 })
  await store.put(A, `${theirs.key.trim()}\n${theirs.chain.trim()}\n`)
  await nameLock.release()
  await clock.advance(0)
  const cert = await order
  t.equal(cert.chain.trim(), theirs.chain.trim(), 'the stored certificate is adopted')
  t.equal(issuer.calls.length, 0, 'no order')
  t.equal(manager.status()[0].waitingFor, undefined, 'and no wait is left reported')
})
