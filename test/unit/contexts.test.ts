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

/** 12 listed names whose certificates a first manager obtained and stored (with metadata), on `store`. */
async function filled (store: MemoryStore): Promise<string[]> {
  const names = Array.from({ length: 12 }, (_, i) => `n${i}.example.test`)
  const first = unitManager({ domains: names, store })
  for (const name of names) await first.manager.certificate(name)
  await first.manager.close()
  return names
}

t.test('listed names beyond contextCacheSize: prewarm learns their state from the store\'s listing, and reads whole only as many as the cache holds', async (t) => {
  const store = countingStore()
  const names = await filled(store)
  const { manager, issuer } = unitManager({ domains: names, contextCacheSize: 4, store })
  t.teardown(() => manager.close())
  const before = names.reduce((n, name) => n + store.reads(name), 0)
  await manager.prewarm()
  t.ok(manager.status().every((s) => s.serial !== undefined && s.notAfter !== undefined && s.renewAt !== undefined), 'every certificate known: serial, expiry, renewal time')
  t.equal(names.reduce((n, name) => n + store.reads(name), 0) - before, 4, 'four certificates read')
  t.equal(names.filter((name) => manager.current(name).length === 1).length, 4, 'those four whole')
  for (const name of names) await contextOf(manager, name)
  t.equal(issuer.calls.length, 0, 'every name served, none ordered')
  t.equal(names.reduce((n, name) => n + store.reads(name), 0) - before, 12, 'each of the others read once, at its first handshake')
})

t.test('a container without metadata (Go autocert\'s, or older) is read value by value, and gains metadata at the next write', async (t) => {
  const store = countingStore()
  const names = await filled(store)
  // Written again as Go autocert writes: the same bundles, no metadata.
  for (const name of names) await store.put(name, (await store.get(name)) as Buffer)
  const { manager, clock } = unitManager({ domains: names, contextCacheSize: 4, store })
  t.teardown(() => manager.close())
  const before = names.map((name) => store.reads(name))
  await manager.prewarm()
  t.same(names.map((name, i) => store.reads(name) - before[i]), names.map(() => 1), 'each certificate read once')
  t.ok(manager.status().every((s) => s.serial !== undefined), 'every certificate known')
  t.equal(names.filter((name) => manager.current(name).length === 1).length, 4, 'four kept whole')

  const serials = new Map(manager.status().map((s) => [s.domain, s.serial]))
  manager.start()
  await clock.advance((manager.status()[0].renewAt as Date).getTime() - clock.now() + 1000)
  const renewed = manager.status().filter((s) => s.serial !== serials.get(s.domain))
  t.ok(renewed.length > 0, `renewed: ${renewed.length}`)
  const metadata = new Map<string, Record<string, string> | undefined>()
  for await (const { key, metadata: m } of store.entries()) metadata.set(key, m)
  for (const s of renewed) t.equal(metadata.get(s.domain)?.autocert_serial, s.serial, `${s.domain}: its new certificate stored with its serial as metadata`)
  t.ok(names.filter((name) => !renewed.some((s) => s.domain === name)).every((name) => metadata.get(name) === undefined), 'the others still without')
})

t.test('metadata is believed for scheduling only: altered, the bundle\'s own fields win at the next read; unusable, the bundle is read at once', async (t) => {
  const store = countingStore()
  const names = await filled(store)
  const [forged, broken] = names
  const bundle = async (name: string): Promise<Buffer> => (await store.get(name)) as Buffer
  const truth = unitManager({ domains: names, store })
  await truth.manager.prewarm()
  const real = truth.manager.status().find((s) => s.domain === forged)
  await truth.manager.close()
  const claimed = new Date(Date.now() + 300 * 86_400_000)
  await store.put(forged, await bundle(forged), { metadata: { autocert_serial: real?.serial as string, autocert_notbefore: new Date(Date.now() - 1000).toISOString(), autocert_notafter: claimed.toISOString() } })
  await store.put(broken, await bundle(broken), { metadata: { autocert_serial: 'not hex', autocert_notbefore: 'x', autocert_notafter: 'y' } })

  const { manager } = unitManager({ domains: names, contextCacheSize: 1, store })
  t.teardown(() => manager.close())
  const brokenReads = store.reads(broken)
  await manager.prewarm()
  t.equal(store.reads(broken), brokenReads + 1, 'unusable metadata: the bundle read at start-up')
  t.equal(manager.status().find((s) => s.domain === broken)?.serial !== undefined, true, 'and known')
  t.same(manager.status().find((s) => s.domain === forged)?.notAfter, claimed, 'the altered expiry, until the bundle is read')
  await contextOf(manager, forged)
  t.same(manager.status().find((s) => s.domain === forged)?.notAfter, real?.notAfter, 'the bundle\'s own expiry wins once it is read')
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

t.test('a listed IP address past contextCacheSize is read whole at start-up, not learnt from the listing', async (t) => {
  const store = countingStore()
  const names = ['127.0.0.1', ...await filled(store)]
  const first = unitManager({ domains: ['127.0.0.1'], store })
  await first.manager.certificate('127.0.0.1')
  await first.manager.close()
  const served: string[] = []
  const { manager } = unitManager({ domains: names, contextCacheSize: 2, store, adopted: (name) => { served.push(name) } })
  t.teardown(() => manager.close())
  await manager.prewarm()
  t.equal(manager.current('127.0.0.1').length, 1, 'the address\'s certificate is whole')
  t.ok(served.includes('127.0.0.1'), 'and the front end was told, to make it the server\'s default')
  t.equal(names.filter((name) => manager.current(name).length === 1).length, 3, 'besides it, two whole: the cache\'s share')
})
