// A certificate's state in its blob's metadata, on real Pebble and real Azurite: what a start-up reads, and a container without it.
import { BlobServiceClient } from '@azure/storage-blob'
import t from 'tap'
import { AzureBlobStore, type CertStore } from '../lib'
import { startServices } from './helpers/services'
import { eventually, startApp, type TestApp } from './support/app'
import { handshake } from './support/tls'

const DOMAINS = ['a.metadata.example.test', 'b.metadata.example.test', 'c.metadata.example.test']
const CONTAINER = 'metadata'

/** The real AzureBlobStore, every call passed on (options and entries() too), counting get() per key. */
function countingStore (inner: AzureBlobStore): CertStore & { reads: () => number } {
  let reads = 0
  return {
    reads: () => reads,
    get: async (key, options) => { if (DOMAINS.includes(key)) reads++; return await inner.get(key, options) },
    put: async (key, value, options) => { await inner.put(key, value, options) },
    delete: async (key) => { await inner.delete(key) },
    list: async (prefix) => await inner.list(prefix),
    entries: (prefix) => inner.entries(prefix),
    lock: async (key, signal, options) => await inner.lock(key, signal, options)
  }
}

const serials = (app: TestApp): Record<string, string | undefined> => Object.fromEntries(app.app.autocert.status().map((s) => [s.domain, s.serial]))

t.test('past contextCacheSize, a start-up learns each certificate from its blob\'s metadata; a container without metadata is read blob by blob', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  const azure = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })

  const first = await startApp(pebble, httpPort, azure(), { domains: DOMAINS })
  await eventually(() => first.app.autocert.status().every((s) => s.serial !== undefined && s.lockHolder === undefined))
  const stored = serials(first)
  await first.app.close()
  for (const name of DOMAINS) {
    const { metadata } = await container.getBlobClient(name).getProperties()
    t.equal(metadata?.autocert_serial, stored[name], `${name}: stored with its serial as metadata`)
    t.ok(Date.parse(metadata?.autocert_notafter ?? '') > Date.now(), 'and its expiry')
  }

  const start = async (): Promise<{ app: TestApp, store: ReturnType<typeof countingStore> }> => {
    const store = countingStore(azure())
    const app = await startApp(pebble, httpPort, store, { domains: DOMAINS, contextCacheSize: 1 })
    t.teardown(() => app.app.close())
    await eventually(() => app.app.autocert.status().every((s) => s.serial !== undefined))
    return { app, store }
  }

  const second = await start()
  t.same(serials(second.app), stored, 'every certificate known, by its serial')
  t.equal(second.store.reads(), 1, 'one certificate read: the one the cache holds')
  const orders = pebble.orderCount()
  for (const name of DOMAINS) {
    const served = await handshake(second.app.port, name, root)
    t.ok(served.authorized, `${name}: verified against Pebble's root`)
    t.equal(served.serial, stored[name], 'the stored certificate')
  }
  t.equal(second.store.reads(), 3, 'the other two read at their first handshake')
  t.equal(pebble.orderCount(), orders, 'nothing ordered')
  await second.app.app.close()

  // As Go autocert (azcertcache) writes them: the same bytes, no metadata.
  for (const name of DOMAINS) {
    const blob = container.getBlockBlobClient(name)
    const body = await blob.downloadToBuffer()
    await blob.upload(body, body.length)
  }
  const third = await start()
  t.same(serials(third.app), stored, 'without metadata: every certificate known')
  t.equal(third.store.reads(), 3, 'each read from its blob')
  for (const name of DOMAINS) t.ok((await handshake(third.app.port, name, root)).authorized, `${name}: served`)
  t.equal(pebble.orderCount(), orders, 'nothing ordered')
})
