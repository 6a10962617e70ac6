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

/** A MemoryStore that counts the reads of each key, and fails them for the keys in `failing`. */
function countingStore (): MemoryStore & { reads: (key: string) => number, failing: Set<string> } {
  const store = new MemoryStore()
  const get = store.get.bind(store)
  const counts = new Map<string, number>()
  const failing = new Set<string>()
  return Object.assign(store, {
    failing,
    reads: (key: string) => counts.get(key) ?? 0,
    get: async (key: string, options?: Parameters<MemoryStore['get']>[1]) => {
      counts.set(key, (counts.get(key) ?? 0) + 1)
      if (failing.has(key)) throw new Error('the store is unreachable')
      return await get(key, options)
    }
  })
}

t.test('past contextCacheSize names, the least recently used keep only what is known of their certificates: the next handshake reads the certificate once and builds a new context, no order', async (t) => {
  const store = countingStore()
  const { manager, issuer } = unitManager({ domains: [A, B, C], contextCacheSize: 2, store })
  t.teardown(() => manager.close())

  const a = await contextOf(manager, A)
  const b = await contextOf(manager, B)
  t.equal(await contextOf(manager, A), a, 'a from the cache: it is now the most recently served')
  const c = await contextOf(manager, C)
  t.equal(issuer.calls.length, 3, 'one order per name')
  const serials = manager.status().map((s) => s.serial)
  t.same(manager.current(B), [], 'b, the least recently used when c came, keeps no key or chain')
  t.equal(manager.current(A).length, 1, 'a keeps its certificate whole')
  const readsOfB = store.reads(B)

  t.equal(await contextOf(manager, A), a, 'a kept its context')
  const b2 = await contextOf(manager, B)
  t.not(b2, b, 'b got a new context')
  t.equal(store.reads(B), readsOfB + 1, 'after one read of its certificate')
  t.equal(manager.current(B)[0]?.serial, serials[1], 'the same certificate, whole again')
  t.not(await contextOf(manager, C), c, 'then c, the least recently used, lost its own')
  t.equal(await contextOf(manager, B), b2, 'b kept its new one')
  t.equal(store.reads(B), readsOfB + 1, 'with no further read')
  t.equal(issuer.calls.length, 3, 'no order for a cooled name')
  t.same(manager.status().map((s) => s.serial), serials, 'every certificate still known, by the same serials')
})

t.test('a cooled name: handshakes at once share one read; a store that fails is an error, never an order; a certificate gone from the store is ordered again', async (t) => {
  const store = countingStore()
  const { manager, issuer, clock } = unitManager({ domains: [A, B], contextCacheSize: 1, store })
  t.teardown(() => manager.close())
  await contextOf(manager, A)
  await contextOf(manager, B)
  t.same(manager.current(A), [], 'a cooled')

  const before = store.reads(A)
  const contexts = await Promise.all(Array.from({ length: 5 }, async () => await contextOf(manager, A)))
  t.equal(store.reads(A), before + 1, '5 handshakes at once: one read')
  t.ok(contexts.every((ctx) => ctx === contexts[0]), 'and one context for all')

  await contextOf(manager, B)
  store.failing.add(A)
  await t.rejects(contextOf(manager, A), /the store is unreachable/, 'a read that fails fails the handshake')
  t.equal(issuer.calls.length, 2, 'and orders nothing')
  store.failing.delete(A)
  // A failed read is repeated to handshakes for a second, not asked of the store again.
  await clock.advance(1001)

  const serial = manager.status()[0].serial
  await store.delete(A)
  await contextOf(manager, B)
  await contextOf(manager, A)
  t.equal(issuer.calls.length, 3, 'a certificate the store lost is ordered again')
  t.not(manager.status()[0].serial, serial, 'a new one')
})

t.test('a cooled certificate is renewed naming the certificate it replaces, read whole under the lock', async (t) => {
  const store = countingStore()
  const { manager, issuer, clock } = unitManager({ domains: [A, B], contextCacheSize: 1, store })
  t.teardown(() => manager.close())
  manager.start()
  await contextOf(manager, A)
  await contextOf(manager, B)
  t.same(manager.current(A), [], 'a cooled')
  const [{ serial, renewAt }] = manager.status()
  await clock.advance((renewAt as Date).getTime() - clock.now() + 1000)
  t.not(manager.status()[0].serial, serial, 'renewed')
  t.equal(issuer.calls.at(-1)?.name, A)
  t.equal(issuer.calls.at(-1)?.replaces, serial, 'naming the certificate it replaces')
  t.equal(manager.current(A)[0]?.serial, manager.status()[0].serial, 'and its certificate is whole')
})

t.test('a certificate not stored yet is never cooled: the store has no copy of it', async (t) => {
  const store = countingStore()
  const put = store.put.bind(store)
  store.put = async (key, value) => {
    if (key === A) throw new Error('the store refuses writes')
    await put(key, value)
  }
  const { manager } = unitManager({ domains: [A, B, C], contextCacheSize: 1, store })
  t.teardown(() => manager.close())
  const a = await contextOf(manager, A)
  const reads = store.reads(A)
  await contextOf(manager, B)
  await contextOf(manager, C)
  t.equal(manager.current(A).length, 1, 'a keeps its key and chain')
  t.not(await contextOf(manager, A), a, 'its context was freed and is built again')
  t.equal(store.reads(A), reads, 'from memory, with no read')
})

t.test('listed names beyond contextCacheSize: prewarm keeps that many whole, and the others by their serials', async (t) => {
  const names = Array.from({ length: 12 }, (_, i) => `n${i}.example.test`)
  const store = countingStore()
  const first = unitManager({ domains: names, store })
  for (const name of names) await first.manager.certificate(name)
  await first.manager.close()

  const { manager, issuer } = unitManager({ domains: names, contextCacheSize: 4, store })
  t.teardown(() => manager.close())
  await manager.prewarm()
  t.ok(manager.status().every((s) => s.serial !== undefined), 'every certificate known')
  t.equal(names.filter((name) => manager.current(name).length === 1).length, 4, 'four of them whole')
  for (const name of names) await contextOf(manager, name)
  t.equal(issuer.calls.length, 0, 'every name served, none ordered')
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

t.test('a listed IP address is never cooled: its certificate is the server\'s default one', async (t) => {
  const { manager } = unitManager({ domains: ['127.0.0.1', A, B], contextCacheSize: 1 })
  t.teardown(() => manager.close())
  await manager.certificate('127.0.0.1')
  await contextOf(manager, A)
  await contextOf(manager, B)
  t.same(manager.current(A), [], 'a host name is cooled')
  t.equal(manager.current('127.0.0.1').length, 1, 'the address keeps its certificate whole')
})
