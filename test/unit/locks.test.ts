// Unit tier: the name's lock as status() and the events show it, on a manual clock (see test/helpers/unit.ts).
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { EncryptedStore } from '../../lib/store/encrypted'
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
    const waits: Array<{ domain: string, holder?: string }> = []
    manager.events.on('lock-wait', (e) => waits.push(e))

    const first = manager.certificate(A)
    await settle()
    t.same(waits, [{ domain: A, holder: 'web-2/4711' }], 'one lock-wait event naming the holder')
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
