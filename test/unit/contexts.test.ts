// Unit tier: the TLS context cache (contextCacheSize), on a manual clock (see test/helpers/unit.ts).
import type { SecureContext } from 'node:tls'
import t from 'tap'
import { MemoryStore } from '../../lib'
import type { CertificateManager } from '../../lib/manager'
import { unitManager } from '../helpers/unit'

const [A, B, C] = ['a.example.test', 'b.example.test', 'c.example.test']

function contextOf (manager: CertificateManager, name: string): Promise<SecureContext> {
  return new Promise((resolve, reject) => { manager.resolve(name, (err, ctx) => { if (err === null) resolve(ctx as SecureContext); else reject(err) }) })
}

t.test('past contextCacheSize names, the least recently served lose their TLS contexts and get new ones at their next handshake: no read, no order', async (t) => {
  const store = new MemoryStore()
  const get = store.get.bind(store)
  let reads = 0
  store.get = async (key, options) => { reads++; return await get(key, options) }
  const { manager, issuer } = unitManager({ domains: [A, B, C], contextCacheSize: 2, store })
  t.teardown(() => manager.close())

  const a = await contextOf(manager, A)
  const b = await contextOf(manager, B)
  t.equal(await contextOf(manager, A), a, 'a from the cache: it is now the most recently served')
  const c = await contextOf(manager, C)
  t.equal(issuer.calls.length, 3, 'one order per name')
  const readsBefore = reads

  t.equal(await contextOf(manager, A), a, 'a kept its context: b was the least recently served when c came')
  const b2 = await contextOf(manager, B)
  t.not(b2, b, 'b got a new context')
  t.not(await contextOf(manager, C), c, 'then c, the least recently served, lost its own')
  t.equal(await contextOf(manager, B), b2, 'b kept its new one')
  t.not(await contextOf(manager, A), a, 'and a, now the least recently served, lost its own')
  t.equal(issuer.calls.length, 3, 'rebuilt from the certificates in memory: no order')
  t.equal(reads, readsBefore, 'and no store read')
  t.same(manager.status().map((s) => s.serial !== undefined), [true, true, true], 'every certificate still in memory')
})

t.test('with both key types, a name counts once and loses both contexts together', async (t) => {
  const { manager, issuer } = unitManager({ domains: [A, B], keyType: ['ecdsa', 'rsa'], contextCacheSize: 1 })
  t.teardown(() => manager.close())
  const a = await contextOf(manager, A)
  t.equal(await contextOf(manager, A), a, 'a from the cache')
  await contextOf(manager, B)
  t.not(await contextOf(manager, A), a, 'b took the one place: a built again')
  t.equal(issuer.calls.length, 4, 'one order per name and key type, none for the rebuilds')
})
