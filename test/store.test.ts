import { createHook } from 'node:async_hooks'
import { randomBytes, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import * as fsp from 'node:fs/promises'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { inspect } from 'node:util'
import {
  BlobServiceClient,
  ContainerClient,
  ContainerSASPermissions,
  RestError,
  StorageSharedKeyCredential,
  generateBlobSASQueryParameters
} from '@azure/storage-blob'
import t from 'tap'
import { AzureBlobStore, type AzureBlobStoreOptions } from '../lib/store/azure-blob'
import type { Logger } from '../lib/events'
import { CodedStore } from '../lib/store/coded'
import { CorruptLog } from '../lib/store/corrupt-log'
import { EncryptedStore } from '../lib/store/encrypted'
import { FileStore } from '../lib/store/file'
import { MemoryStore } from '../lib/store/memory'
import { isCertStore, readBounded, readRecord, type CertStore, type Lock } from '../lib/store/store'
import { eventually } from './support/app'
import { entraCredential, startAzurite, trustAzurite, type Azurite } from './support/azurite'

const { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } = fsp
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// Waits for `signal` to abort, failing after `ms`.
function aborted (signal: AbortSignal, ms: number): Promise<unknown> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      resolve(signal.reason)
      return
    }
    const timer = setTimeout(() => reject(new Error(`signal not aborted after ${ms} ms`)), ms)
    signal.addEventListener('abort', () => {
      clearTimeout(timer)
      resolve(signal.reason)
    }, { once: true })
  })
}

const rejection = (p: Promise<unknown>): Promise<unknown> => p.then(
  () => { throw new Error('expected a rejection') },
  (err: unknown) => err
)

let azurite: Azurite
t.before(async () => { azurite = await startAzurite() })
t.teardown(() => azurite.stop())
// Over HTTPS, checking bearer tokens: the { accountUrl, credential } (managed identity) path.
let oauthAzurite: Azurite
t.before(async () => {
  oauthAzurite = await startAzurite({ oauth: true })
  t.teardown(trustAzurite(oauthAzurite))
})
t.teardown(() => oauthAzurite.stop())

const service = (): BlobServiceClient => BlobServiceClient.fromConnectionString(azurite.connectionString)
const freshContainer = (): string => `t${randomBytes(8).toString('hex')}`

// The lock blobs in `container`, listed by the SDK itself.
async function lockBlobs (container: string): Promise<string[]> {
  const names: string[] = []
  for await (const blob of service().getContainerClient(container).listBlobsFlat({ prefix: 'locks/' })) names.push(blob.name)
  return names
}

// What a test needs from a backend: a fresh store, and for shared backends a second
// instance on the same storage (another process of the cluster).
interface Backend {
  store: CertStore
  sibling?: () => CertStore
}

// One contract, three backends: everything the plugin relies on.
/** Timers created by the stores' code and still alive, by async id (their creation stack as value). */
function storeTimers (t: tap.Test): Map<number, string> {
  const timers = new Map<number, string>()
  const hook = createHook({
    init (id, type) {
      const stack = new Error().stack ?? ''
      if (type === 'Timeout' && stack.includes(`${path.sep}lib${path.sep}store${path.sep}`)) timers.set(id, stack)
    },
    destroy (id) { timers.delete(id) }
  }).enable()
  t.teardown(() => { hook.disable() })
  return timers
}

function conformance (parent: tap.Test, name: string, make: (t: tap.Test) => Promise<Backend>, validatesKeys: boolean): void {
  parent.test(name, async (t) => {
    t.test('implements the contract', async (t) => {
      const { store } = await make(t)
      t.ok(isCertStore(store))
    })

    t.test('a missing key is undefined', async (t) => {
      const { store } = await make(t)
      t.equal(await store.get('missing.example.com'), undefined)
    })

    t.test('binary data round trip', async (t) => {
      const { store } = await make(t)
      const value = Buffer.concat([Buffer.from([0, 255, 0, 10, 13]), randomBytes(8192)])
      await store.put('a.example.com', value)
      const got = await store.get('a.example.com')
      t.ok(Buffer.isBuffer(got))
      t.ok(value.equals(got!), 'same bytes')
      await store.put('tok+http-01', 'key authorization ✓')
      t.equal((await store.get('tok+http-01'))?.toString('utf8'), 'key authorization ✓', 'strings are stored as UTF-8')
    })

    t.test('maxBytes: a larger value is refused with its size and the limit, never its data', async (t) => {
      const { store } = await make(t)
      const value = Buffer.alloc(100, 'Q')
      await store.put('a.example.com', value)
      t.same(await store.get('a.example.com', { maxBytes: 100 }), value, 'a value of exactly maxBytes is read')
      t.same(await store.get('a.example.com', { maxBytes: 1e9 }), value, 'so is a smaller one')
      const err = await rejection(store.get('a.example.com', { maxBytes: 99 }))
      t.match(err, { code: 'FST_AUTOCERT_CORRUPT', message: 'stored data under a.example.com is unusable: 100 bytes, over the limit of 99 bytes for this kind of value' })
      t.notOk(inspect(err).includes('QQQ'), 'no data in the error')
      t.equal(await store.get('missing.example.com', { maxBytes: 10 }), undefined, 'a missing key is still undefined')
      await store.put('empty.example.com', '')
      t.same(await store.get('empty.example.com', { maxBytes: 10 }), Buffer.alloc(0), 'an empty value is read')
      t.same(await store.get('empty.example.com', { maxBytes: 0 }), Buffer.alloc(0), 'also with a limit of 0')
    })

    t.test('put overwrites', async (t) => {
      const { store } = await make(t)
      await store.put('a.example.com', 'first, and longer')
      await store.put('a.example.com', 'second')
      t.equal((await store.get('a.example.com'))?.toString(), 'second')
    })

    t.test('delete, also of a missing key', async (t) => {
      const { store } = await make(t)
      await store.put('a.example.com', 'x')
      await store.delete('a.example.com')
      t.equal(await store.get('a.example.com'), undefined)
      await store.delete('a.example.com')
      await store.delete('never.example.com')
    })

    t.test('list with and without prefix, locks not listed', async (t) => {
      const { store } = await make(t)
      t.same(await store.list(), [], 'empty store')
      for (const key of ['a.example.com', 'b.example.com', 'tok+http-01', 'acme_account+key']) await store.put(key, key)
      const lock = await store.lock('a.example.com')
      t.teardown(() => lock.release())
      t.same((await store.list()).sort(), ['a.example.com', 'acme_account+key', 'b.example.com', 'tok+http-01'])
      t.same(await store.list('tok'), ['tok+http-01'])
      t.same((await store.list('a')).sort(), ['a.example.com', 'acme_account+key'])
      t.same(await store.list('zzz'), [])
    })

    if (validatesKeys) {
      t.test('keys that are not plain names are refused', async (t) => {
        const { store } = await make(t)
        for (const key of ['', '../etc', 'a/b', 'a\\b', '.hidden', 'a..b', 'a\0b']) {
          await t.rejects(store.put(key, 'x'), TypeError, `put ${JSON.stringify(key)}`)
          await t.rejects(store.get(key), TypeError, `get ${JSON.stringify(key)}`)
          await t.rejects(store.lock(key), TypeError, `lock ${JSON.stringify(key)}`)
        }
      })
    }

    t.test('metadata: kept with its value, listed by entries() without it, gone with a write that has none', async (t) => {
      const { store } = await make(t)
      if (store.entries === undefined) {
        t.ok(store instanceof FileStore, 'only FileStore lists no metadata: the plugin reads each value instead')
        return
      }
      const entries = async (prefix?: string): Promise<Array<{ key: string, metadata?: Record<string, string> }>> => {
        const found = []
        for await (const entry of (store.entries as NonNullable<CertStore['entries']>)(prefix)) found.push(entry)
        return found.sort((a, b) => a.key.localeCompare(b.key))
      }
      const fields = { autocert_serial: '0A1B', autocert_notafter: '2027-03-03T05:40:00.000Z' }
      await store.put('a.example.com', 'x', { metadata: fields })
      await store.put('b.example.com', 'y')
      await store.put('tok+http-01', 'z', { metadata: { kind: 'answer' } })
      const lock = await store.lock('a.example.com')
      t.teardown(() => lock.release())
      t.same(await entries(), [{ key: 'a.example.com', metadata: fields }, { key: 'b.example.com' }, { key: 'tok+http-01', metadata: { kind: 'answer' } }], 'every key once, locks not listed')
      t.same(await entries('tok'), [{ key: 'tok+http-01', metadata: { kind: 'answer' } }], 'with a prefix')
      t.equal((await store.get('a.example.com'))?.toString(), 'x', 'the value is as written')
      await store.put('a.example.com', 'x2')
      t.same((await entries('a.'))[0], { key: 'a.example.com' }, 'a write without metadata leaves none')
    })

    t.test('a second lock() waits until the first releases', async (t) => {
      const { store } = await make(t)
      const events: string[] = []
      const first = await store.lock('a.example.com')
      const second = store.lock('a.example.com').then((lock) => { events.push('second acquired'); return lock })
      const other = await store.lock('b.example.com')
      events.push('other key locked')
      await other.release()
      // Long enough for the waiter to have found the lock taken at least once.
      await sleep(1500)
      events.push('first released')
      await first.release()
      const lock = await second
      t.same(events, ['other key locked', 'first released', 'second acquired'])
      t.notOk(lock.signal.aborted)
      await lock.release()
    })

    t.test('a waiter is told who holds the lock, and the holder is forgotten on release', async (t) => {
      const { store } = await make(t)
      const first = await store.lock('a.example.com', undefined, { holder: 'host-1/101' })
      const told: Array<string | undefined> = []
      const second = store.lock('a.example.com', undefined, { holder: 'host-2/202', onWait: (holder) => told.push(holder) })
      // The holder may record itself a moment after taking the lock: the waiter sees it by its next retry.
      for (let i = 0; i < 600 && !told.includes('host-1/101'); i++) await sleep(50)
      t.equal(told.at(-1), 'host-1/101', 'the waiter learns the holder')
      t.ok(told.every((h) => h === undefined || h === 'host-1/101'), 'and no one else')
      await first.release()
      const lock = await second
      const third = store.lock('a.example.com', undefined, { onWait: (holder) => told.push(`third saw ${String(holder)}`) })
      for (let i = 0; i < 600 && !told.includes('third saw host-2/202'); i++) await sleep(50)
      t.ok(told.includes('third saw host-2/202'), 'the next holder is recorded in turn')
      await lock.release()
      await (await third).release()
      const quiet = await store.lock('a.example.com', undefined, { onWait: () => told.push('waited') })
      t.notOk(told.includes('waited'), 'a free lock calls no onWait')
      await quiet.release()
    })

    t.test('a lock aborted by its signal rejects with the reason and leaves the lock usable', async (t) => {
      const { store } = await make(t)
      const held = await store.lock('a.example.com')
      const controller = new AbortController()
      const reason = new Error('gave up')
      const waiting = store.lock('a.example.com', controller.signal)
      setTimeout(() => controller.abort(reason), 300)
      t.equal(await rejection(waiting), reason, 'rejects with signal.reason')
      const early = new AbortController()
      early.abort(new Error('before'))
      t.equal(await rejection(store.lock('b.example.com', early.signal)), early.signal.reason, 'an aborted signal rejects at once')
      await held.release()
      const again = await store.lock('a.example.com')
      const b = await store.lock('b.example.com')
      await Promise.all([again.release(), b.release()])
    })

    t.test('release is idempotent', async (t) => {
      const { store } = await make(t)
      const lock = await store.lock('a.example.com')
      await lock.release()
      await lock.release()
      await Promise.all([lock.release(), lock.release()])
      t.notOk(lock.signal.aborted, 'releasing does not abort the signal')
      const again = await store.lock('a.example.com')
      await again.release()
      await lock.release()
      const third = await store.lock('a.example.com')
      await third.release()
    })

    t.test('lock excludes another instance on the same storage', async (t) => {
      const { store, sibling } = await make(t)
      if (sibling === undefined) {
        t.pass('process-local store')
        return
      }
      const other = sibling()
      const events: string[] = []
      const first = await store.lock('a.example.com')
      const second = other.lock('a.example.com').then((lock) => { events.push('sibling acquired'); return lock })
      await sleep(1500)
      events.push('first released')
      await first.release()
      const lock = await second
      t.same(events, ['first released', 'sibling acquired'])
      await other.put('a.example.com', 'written by the sibling')
      t.equal((await store.get('a.example.com'))?.toString(), 'written by the sibling')
      await lock.release()
    })
  })
}

// The backends run side by side; the tests of one backend run one at a time.
t.test('conformance', { jobs: 4 }, async (t) => {
  conformance(t, 'MemoryStore', async () => ({ store: new MemoryStore() }), false)

  conformance(t, 'FileStore', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'autocert-store-'))
    const store = new FileStore(dir)
    const siblings: CertStore[] = [store]
    t.teardown(async () => {
      await Promise.all(siblings.map((s) => s.close?.()))
      await rm(dir, { recursive: true, force: true })
    })
    return { store, sibling: () => { const s = new FileStore(dir); siblings.push(s); return s } }
  }, true)

  conformance(t, 'AzureBlobStore', async (t) => {
    const options = { connectionString: azurite.connectionString, container: freshContainer(), prefix: 'certs/' }
    const store = new AzureBlobStore(options)
    const siblings: CertStore[] = [store]
    t.teardown(() => Promise.all(siblings.map((s) => s.close?.())))
    return { store, sibling: () => { const s = new AzureBlobStore(options); siblings.push(s); return s } }
  }, true)

  // The real bearer path of the SDK: every request carries a token the oauth Azurite checks.
  conformance(t, 'AzureBlobStore with a TokenCredential', async (t) => {
    const options = { accountUrl: oauthAzurite.blobEndpoint, credential: entraCredential(), container: freshContainer(), prefix: 'certs/' }
    const store = new AzureBlobStore(options)
    const siblings: CertStore[] = [store]
    t.teardown(() => Promise.all(siblings.map((s) => s.close?.())))
    return { store, sibling: () => { const s = new AzureBlobStore(options); siblings.push(s); return s } }
  }, true)
})

interface ProxyHooks {
  // Runs before a request is forwarded; a status code answers it with that error instead.
  onRequest?: (call: string, path: string) => Promise<number | undefined>
  // Holds Azurite's answer back for that many milliseconds.
  responseDelay?: (call: string) => number
}

// Counts the Blob REST calls that go through it, e.g. 'GET', 'PUT lease:acquire', and
// injects what Azurite cannot be made to do on cue: a slow answer, a race, an error.
async function countingProxy (t: tap.Test, port: number, hooks: ProxyHooks = {}): Promise<{ endpoint: string, calls: string[], received: () => number }> {
  const calls: string[] = []
  // Response body bytes Azurite sent through the proxy.
  let received = 0
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy')
    const what = url.searchParams.get('comp') ?? url.searchParams.get('restype') ?? ''
    const action = req.headers['x-ms-lease-action']
    const call = [req.method, what + (typeof action === 'string' ? `:${action}` : '')].filter(Boolean).join(' ')
    calls.push(call)
    void (async () => {
      const status = await hooks.onRequest?.(call, url.pathname)
      if (status !== undefined) {
        req.resume()
        res.writeHead(status, { 'content-type': 'application/xml', 'x-ms-error-code': 'InjectedFault' })
        res.end('<?xml version="1.0" encoding="utf-8"?><Error><Code>InjectedFault</Code><Message>injected by the test</Message></Error>')
        return
      }
      const upstream = http.request({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (up) => {
        setTimeout(() => {
          res.writeHead(up.statusCode ?? 502, up.headers)
          // Counted as it is piped: a listener added earlier would start the flow before the pipe.
          up.on('data', (chunk: Buffer) => { received += chunk.length })
          up.pipe(res)
        }, hooks.responseDelay?.(call) ?? 0)
      })
      upstream.on('error', () => res.destroy())
      req.pipe(upstream)
    })()
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  t.teardown(() => new Promise<void>((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  }))
  return { endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}/${azurite.accountName}`, calls, received: () => received }
}

t.test('AzureBlobStore specifics', async (t) => {
  // Tests that wait on lease timing run side by side; the close() test below counts
  // the store's timers, so it runs alone.
  t.test('leases', { jobs: 3 }, async (t) => {
    t.test('Blob operations per store call', async (t) => {
      const proxy = await countingProxy(t, azurite.port)
      const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container: freshContainer() })
      t.teardown(() => store.close())
      const measure = async (what: string, fn: () => Promise<unknown>): Promise<string[]> => {
        proxy.calls.length = 0
        await fn()
        t.comment(`${what}: ${proxy.calls.length} (${proxy.calls.join(', ')})`)
        return [...proxy.calls]
      }
      t.same(await measure('first call (creates the container)', () => store.get('a.example.com')), ['PUT container', 'GET'])
      t.same(await measure('get, miss', () => store.get('a.example.com')), ['GET'])
      t.same(await measure('put', () => store.put('a.example.com', 'x')), ['PUT'])
      t.same(await measure('get, hit', () => store.get('a.example.com')), ['GET'])
      t.same(await measure('delete', () => store.delete('a.example.com')), ['DELETE'])
      t.same(await measure('list', () => store.list()), ['GET list'])
      let lock!: Lock
      t.same(await measure('lock (creates the lock blob, leases it)', async () => { lock = await store.lock('a.example.com') }),
        ['PUT', 'PUT lease:acquire'])
      t.same(await measure('release (deletes the lock blob)', () => lock.release()), ['DELETE'])
      t.same(await measure('lock again', async () => { lock = await store.lock('a.example.com') }), ['PUT', 'PUT lease:acquire'])
      t.same(await measure('holding for 5.5 s (lease 15 s)', () => sleep(5500)), ['PUT lease:renew'])
      t.notOk(lock.signal.aborted)
      t.same(await measure('release', () => lock.release()), ['DELETE'])
    })

    t.test('a lock() aborted while its lease request is in flight gives the lease back', async (t) => {
      let slow = false
      const proxy = await countingProxy(t, azurite.port, { responseDelay: (call) => slow && call === 'PUT lease:acquire' ? 500 : 0 })
      const options = { accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container: freshContainer() }
      const store = new AzureBlobStore(options)
      const other = new AzureBlobStore(options)
      t.teardown(() => Promise.all([store.close(), other.close()]))
      await (await store.lock('a.example.com')).release()
      slow = true
      proxy.calls.length = 0
      const controller = new AbortController()
      const pending = store.lock('a.example.com', controller.signal)
      // Azurite has granted the lease by now; the proxy holds the answer back.
      await sleep(200)
      controller.abort(new Error('gave up'))
      t.match(await rejection(pending), { message: 'gave up' })
      slow = false
      while (!proxy.calls.includes('DELETE')) await sleep(10)
      t.same(proxy.calls, ['PUT', 'PUT lease:acquire', 'DELETE'], 'the lease is ended with its blob')
      t.same(await lockBlobs(options.container), [], 'no lock blob is left')
      await other.list()
      proxy.calls.length = 0
      const lock = await other.lock('a.example.com')
      t.same(proxy.calls, ['PUT', 'PUT lease:acquire'], 'another instance gets the lease at once')
      await lock.release()
    })

    t.test('a lock() given up while creating its lock blob leaves none', async (t) => {
      const proxy = await countingProxy(t, azurite.port, { responseDelay: (call) => call === 'PUT' ? 500 : 0 })
      const container = freshContainer()
      const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container })
      t.teardown(() => store.close())
      await store.list()
      const controller = new AbortController()
      const pending = store.lock('a.example.com', controller.signal)
      // Azurite has created the blob by now; the proxy holds the answer back.
      await sleep(200)
      controller.abort(new Error('gave up'))
      t.match(await rejection(pending), { message: 'gave up' })
      await eventually(async () => (await lockBlobs(container)).length === 0)
      t.pass('the blob it created is removed')
      t.notOk(proxy.calls.includes('PUT lease:acquire'), 'and no lease was asked for')
    })

    t.test('a released lock leaves no blob; a waiter finds it gone and creates it again', async (t) => {
      const container = freshContainer()
      const options = { connectionString: azurite.connectionString, container }
      const store = new AzureBlobStore(options)
      const other = new AzureBlobStore(options)
      t.teardown(() => Promise.all([store.close(), other.close()]))
      const first = await store.lock('a.example.com', undefined, { holder: 'host-1' })
      t.same(await lockBlobs(container), ['locks/a.example.com'], 'the lock blob exists while the lock is held')
      const told: Array<string | undefined> = []
      const second = other.lock('a.example.com', undefined, { holder: 'host-2', onWait: (holder) => told.push(holder) })
      await eventually(() => told.length > 0)
      await first.release()
      const lock = await second
      t.notOk(lock.signal.aborted, 'the waiter took it after the holder deleted it')
      t.same(told, ['host-1'])
      await eventually(async () => (await service().getContainerClient(container).getBlobClient('locks/a.example.com').getProperties()).metadata?.holder === 'host-2')
      t.pass('it records its holder on the blob it created')
      await lock.release()
      t.same(await lockBlobs(container), [], 'and after its release no lock blob is left')
    })

    t.test('releasing a lock whose lease was lost does not remove the next holder\'s blob', { timeout: 30_000 }, async (t) => {
      const container = freshContainer()
      const options = { connectionString: azurite.connectionString, container }
      const store = new AzureBlobStore(options)
      const other = new AzureBlobStore(options)
      t.teardown(() => Promise.all([store.close(), other.close()]))
      const lost = await store.lock('a.example.com')
      await service().getContainerClient(container).getBlockBlobClient('locks/a.example.com').getBlobLeaseClient().breakLease(0)
      const taken = await other.lock('a.example.com')
      await lost.release()
      const props = await service().getContainerClient(container).getBlobClient('locks/a.example.com').getProperties()
      t.equal(props.leaseState, 'leased', 'the new holder\'s blob and lease are still there')
      t.notOk(taken.signal.aborted)
      await taken.release()
      t.same(await lockBlobs(container), [], 'gone once its holder releases it')
    })

    t.test('a lease held by a crashed holder is taken over once it lapses', { timeout: 60_000 }, async (t) => {
      const container = freshContainer()
      const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
      t.teardown(() => store.close())
      await store.list()
      // The crashed holder: a 15 s lease that nobody renews.
      const blob = service().getContainerClient(container).getBlockBlobClient('locks/a.example.com')
      await blob.upload('', 0)
      await blob.getBlobLeaseClient(randomUUID()).acquireLease(15)
      const started = Date.now()
      const lock = await store.lock('a.example.com')
      const waited = Date.now() - started
      t.comment(`took over after ${waited} ms`)
      t.ok(waited > 10_000, 'waited for the lease to lapse')
      t.notOk(lock.signal.aborted)
      await lock.release()
    })

    t.test('a lock whose lease was broken aborts its signal at the next renewal', { timeout: 30_000 }, async (t) => {
      const container = freshContainer()
      const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
      t.teardown(() => store.close())
      const lock = await store.lock('a.example.com')
      await service().getContainerClient(container).getBlockBlobClient('locks/a.example.com').getBlobLeaseClient().breakLease(0)
      const reason = await aborted(lock.signal, 8000)
      t.match(reason, { message: /lost: its lease could not be renewed/ })
      t.match((reason as Error).cause, { statusCode: 409 })
      await lock.release()
      const again = await store.lock('a.example.com')
      t.notOk(again.signal.aborted, 'the key can be locked again')
      await again.release()
    })
  })

  t.test('maxBytes: a blob over the limit is not transferred (one range request), one within it is read whole', async (t) => {
    const proxy = await countingProxy(t, azurite.port)
    const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container: freshContainer() })
    t.teardown(() => store.close())
    const size = 8 * 1024 * 1024
    await store.put('big.example.com', Buffer.alloc(size, 'B'))
    const measure = async (fn: () => Promise<unknown>): Promise<{ bytes: number, calls: string[], result: unknown }> => {
      proxy.calls.length = 0
      const before = proxy.received()
      const result = await fn().catch((err: unknown) => err)
      return { bytes: proxy.received() - before, calls: [...proxy.calls], result }
    }
    const refused = await measure(() => store.get('big.example.com', { maxBytes: 65536 }))
    t.match(refused.result, { code: 'FST_AUTOCERT_CORRUPT', message: /8388608 bytes, over the limit of 65536 bytes/ })
    t.same(refused.calls, ['GET'], 'one request')
    t.ok(refused.bytes <= 65537, `${refused.bytes} bytes of the blob sent (at most the limit and one)`)
    const whole = await measure(() => store.get('big.example.com'))
    t.equal((whole.result as Buffer).length, size, 'without a limit, the whole blob')
    t.ok(whole.bytes >= size, `${whole.bytes} bytes sent (the proxy counts them)`)
    const within = await measure(() => store.get('big.example.com', { maxBytes: size }))
    t.equal((within.result as Buffer).length, size, 'with a limit of its size, the whole blob')
    t.same(within.calls, ['GET'])
  })

  t.test('two instances creating the same lock blob at once', async (t) => {
    const container = freshContainer()
    let raced = false
    const proxy = await countingProxy(t, azurite.port, {
      onRequest: async (call, path) => {
        // The other instance's create lands just before ours.
        if (call === 'PUT' && path.endsWith('/locks/a.example.com') && !raced) {
          raced = true
          await service().getContainerClient(container).getBlockBlobClient('locks/a.example.com').upload('', 0)
        }
        return undefined
      }
    })
    const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container })
    t.teardown(() => store.close())
    const lock = await store.lock('a.example.com')
    t.same(proxy.calls, ['PUT container', 'PUT', 'PUT lease:acquire'], 'the conflict on create is not an error: the blob is leased')
    await lock.release()
  })

  t.test('an unexpected error while taking a lock rejects lock()', async (t) => {
    let fail = ''
    const proxy = await countingProxy(t, azurite.port, { onRequest: async (call) => call === fail ? 403 : undefined })
    const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint: proxy.endpoint, container: freshContainer() })
    t.teardown(() => store.close())
    await store.list()
    fail = 'PUT'
    t.match(await rejection(store.lock('a.example.com')), { statusCode: 403, code: 'InjectedFault' }, 'creating the lock blob fails')
    fail = 'PUT lease:acquire'
    t.match(await rejection(store.lock('a.example.com')), { statusCode: 403, code: 'InjectedFault' }, 'acquiring the lease fails')
  })

  t.test('names blobs <prefix><key> and lock blobs <prefix>locks/<key>', async (t) => {
    const container = freshContainer()
    const plain = new AzureBlobStore({ connectionString: azurite.connectionString, container })
    const prefixed = new AzureBlobStore({ connectionString: azurite.connectionString, container, prefix: 'certs/' })
    t.teardown(() => Promise.all([plain.close(), prefixed.close()]))
    await plain.put('a.example.com', 'plain')
    await prefixed.put('a.example.com', 'prefixed')
    const lock = await plain.lock('a.example.com')
    const names: string[] = []
    for await (const blob of service().getContainerClient(container).listBlobsFlat()) names.push(blob.name)
    t.same(names.sort(), ['a.example.com', 'certs/a.example.com', 'locks/a.example.com'])
    t.same(await plain.list(), ['a.example.com'], 'neither the lock nor the prefixed blob is a key of the plain store')
    t.same(await prefixed.list(), ['a.example.com'])
    await lock.release()
    // What Go autocert + azcertcache writes: blobs named by the bare key.
    await service().getContainerClient(container).getBlockBlobClient('acme_account+key').upload('from go', 7)
    t.equal((await plain.get('acme_account+key'))?.toString(), 'from go')
  })

  t.test('creates its container, private, when it is missing', async (t) => {
    const container = freshContainer()
    const client = service().getContainerClient(container)
    const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
    t.teardown(() => store.close())
    t.notOk(await client.exists(), 'no container before first use')
    t.equal(await store.get('a.example.com'), undefined)
    t.ok(await client.exists(), 'created on first use')
    t.equal((await client.getAccessPolicy()).blobPublicAccess, undefined, 'no public access')
    // A second instance finds it there.
    const other = new AzureBlobStore({ connectionString: azurite.connectionString, container })
    t.equal(await other.get('a.example.com'), undefined)
  })

  t.test('an outage is never a miss; a failed container creation is retried', async (t) => {
    const own = await startAzurite()
    t.teardown(() => own.stop())
    const store = new AzureBlobStore({ connectionString: own.connectionString, container: freshContainer(), retryOptions: { maxTries: 2, retryDelayInMs: 50 } })
    t.teardown(() => store.close())
    await own.stop()
    const err = await rejection(store.get('a.example.com'))
    t.type(err, RestError, 'get rejects while Azurite is down (container creation)')
    t.match(err, { code: 'ECONNREFUSED' })
    await own.start()
    t.equal(await store.get('a.example.com'), undefined, 'the container is created once Azurite is back')
    await store.put('a.example.com', 'x')
    await own.stop()
    t.match(await rejection(store.get('a.example.com')), { code: 'ECONNREFUSED' }, 'get rejects, not undefined')
    t.match(await rejection(store.list()), { code: 'ECONNREFUSED' }, 'list rejects')
    t.match(await rejection(store.lock('a.example.com')), { code: 'ECONNREFUSED' }, 'lock rejects')
  })

  t.test('an operation that gets no answer times out', async (t) => {
    const sockets = new Set<net.Socket>()
    const silent = net.createServer((s) => { sockets.add(s) })
    silent.listen(0, '127.0.0.1')
    await once(silent, 'listening')
    t.teardown(() => { for (const s of sockets) s.destroy(); silent.close() })
    const endpoint = `http://127.0.0.1:${(silent.address() as AddressInfo).port}/${azurite.accountName}`
    const store = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint, timeout: 300 })
    t.match(await rejection(store.get('a.example.com')), { code: 'ETIMEDOUT', message: /300 ms/ })
    // A lock() still waiting for the container to be created ends with its signal.
    const patient = new AzureBlobStore({ accountName: azurite.accountName, accountKey: azurite.accountKey, endpoint, timeout: 5000 })
    const controller = new AbortController()
    setTimeout(() => controller.abort(new Error('gave up')), 100)
    t.match(await rejection(patient.lock('a.example.com', controller.signal)), { message: 'gave up' })
  })

  t.test('close() releases held locks, ends waits and leaves no timer', async (t) => {
    const timers = storeTimers(t)
    const options = { connectionString: azurite.connectionString, container: freshContainer() }
    const store = new AzureBlobStore(options)
    const other = new AzureBlobStore(options)
    t.teardown(() => other.close())
    const lock = await store.lock('a.example.com')
    const held = await other.lock('b.example.com')
    const waiting = rejection(store.lock('b.example.com', new AbortController().signal))
    await sleep(100)
    t.ok(timers.size > 0, 'a held lock has a renewal timer')
    await store.close()
    t.ok(lock.signal.aborted, 'a held lock is aborted')
    t.match(await waiting, { message: /closed/ }, 'a waiting lock() rejects')
    await held.release()
    t.match(await rejection(store.lock('c.example.com')), { message: /closed/ }, 'lock() after close rejects')
    const started = Date.now()
    const taken = await other.lock('a.example.com')
    t.ok(Date.now() - started < 1000, 'the lease was released, not left to lapse')
    await taken.release()
    await sleep(50)
    t.same([...timers.values()], [], 'no timer of the store is left')
  })

  t.test('a SAS container URL works, and no error carries the SAS', async (t) => {
    const credential = new StorageSharedKeyCredential(azurite.accountName, azurite.accountKey)
    const sasUrl = (container: string): string => `${azurite.blobEndpoint}/${container}?${generateBlobSASQueryParameters({
      containerName: container,
      permissions: ContainerSASPermissions.parse('racwdl'),
      expiresOn: new Date(Date.now() + 3600_000)
    }, credential).toString()}`

    const container = freshContainer()
    await service().getContainerClient(container).create()
    const store = new AzureBlobStore({ containerUrl: sasUrl(container), prefix: 'certs/' })
    t.teardown(() => store.close())
    await store.put('a.example.com', 'over SAS')
    t.equal((await store.get('a.example.com'))?.toString(), 'over SAS', 'the 403 on creating the container is tolerated')
    t.same(await store.list(), ['a.example.com'])
    const lock = await store.lock('a.example.com')
    await lock.release()

    const missing = sasUrl(freshContainer())
    const sig = new URL(missing).searchParams.get('sig')!
    const secrets = [sig, encodeURIComponent(sig)]
    // Why the store rebuilds errors: the SDK's own keeps the signed URL.
    const raw = await rejection(new ContainerClient(missing).getBlobClient('a.example.com').download()) as RestError
    t.ok(raw.request?.url.includes(encodeURIComponent(sig)), 'the SDK error holds the SAS in error.request.url')

    const sasStore = new AzureBlobStore({ containerUrl: missing })
    t.teardown(() => sasStore.close())
    for (const [what, call] of [
      ['get', () => sasStore.get('a.example.com')],
      ['put', () => sasStore.put('a.example.com', 'x')],
      ['lock', () => sasStore.lock('a.example.com')]
    ] as const) {
      const err = await rejection(call())
      t.type(err, RestError, `${what}: still a RestError`)
      t.match(err, { statusCode: 404, code: 'ContainerNotFound' }, `${what}: a missing container is an error, not a miss`)
      t.equal((err as RestError).request, undefined, `${what}: no request`)
      t.equal((err as RestError).response, undefined, `${what}: no response`)
      const text = [inspect(err, { depth: Infinity, showHidden: true }), JSON.stringify(err), String((err as Error).stack)].join('\n')
      t.notOk(secrets.some((s) => text.includes(s)), `${what}: the SAS signature appears nowhere`)
    }
  })

  t.test('a SAS without the permission is FST_AUTOCERT_STORE_AUTH with the service\'s reason', async (t) => {
    // The nearest Azurite comes to a missing role: a credential it accepts that may not write.
    const container = freshContainer()
    await service().getContainerClient(container).create()
    const sas = generateBlobSASQueryParameters({
      containerName: container,
      permissions: ContainerSASPermissions.parse('rl'),
      expiresOn: new Date(Date.now() + 3600_000)
    }, new StorageSharedKeyCredential(azurite.accountName, azurite.accountKey)).toString()
    const store = new AzureBlobStore({ containerUrl: `${azurite.blobEndpoint}/${container}?${sas}` })
    t.teardown(() => store.close())
    t.equal(await store.get('a.example.com'), undefined, 'reading is allowed')
    const err = await rejection(store.put('a.example.com', 'x'))
    t.match(err, {
      code: 'FST_AUTOCERT_STORE_AUTH',
      message: 'AzureBlobStore: store authentication failed: check the credential or its role assignment (403 AuthorizationPermissionMismatch: This request is not authorized to perform this operation using this permission.)',
      cause: { statusCode: 403, code: 'AuthorizationPermissionMismatch' }
    })
    t.type((err as Error).cause, RestError, 'the cause is the sanitized RestError')
    t.equal(((err as Error).cause as RestError).request, undefined, 'without the request')
    const sig = new URLSearchParams(sas).get('sig')!
    const text = [inspect(err, { depth: Infinity, showHidden: true }), String((err as Error).stack)].join('\n')
    t.notOk(text.includes(sig) || text.includes(encodeURIComponent(sig)), 'the SAS signature appears nowhere')
  })

  t.test('options are validated, and no message holds a secret', async (t) => {
    const { connectionString, accountName, accountKey, blobEndpoint } = azurite
    const credential = new StorageSharedKeyCredential(accountName, accountKey)
    const sas = generateBlobSASQueryParameters({ containerName: 'abc', permissions: ContainerSASPermissions.parse('r'), expiresOn: new Date(Date.now() + 3600_000) }, credential).toString()
    const containerUrl = `${blobEndpoint}/abc?${sas}`
    const sig = new URL(containerUrl).searchParams.get('sig')!
    const token = { getToken: async () => ({ token: 'bearer-secret', expiresOnTimestamp: Date.now() + 3600_000 }) }
    const secrets = [accountKey, connectionString, sig, encodeURIComponent(sig), 'SECRET-in-a-broken-string']
    const cases: Array<[unknown, RegExp]> = [
      [undefined, /connectionString/],
      [null, /connectionString/],
      [{}, /connectionString.*accountName.*containerUrl.*accountUrl/],
      [{ container: 'abc' }, /connectionString/],
      [{ connectionString, accountName, accountKey }, /options\.connectionString, options\.accountName.*exactly one/],
      [{ containerUrl, accountUrl: 'https://a.blob.core.windows.net', credential: token }, /exactly one/],
      [{ connectionString: 'AccountKey=SECRET-in-a-broken-string' }, /options\.connectionString is not/],
      [{ connectionString: '' }, /options\.connectionString must be/],
      [{ accountName }, /options\.accountKey is required/],
      [{ accountKey }, /options\.accountName must be/],
      [{ accountName, accountKey, endpoint: 'not a url' }, /options\.endpoint/],
      [{ connectionString, endpoint: blobEndpoint }, /options\.endpoint only goes with/],
      [{ containerUrl, container: 'abc' }, /remove options\.container/],
      [{ containerUrl: `${blobEndpoint}/abc` }, /options\.containerUrl carries no SAS/],
      [{ containerUrl: `ftp://x/abc?${sas}` }, /options\.containerUrl must be/],
      [{ containerUrl: `https://acct.blob.core.windows.net/?${sas}` }, /options\.containerUrl names no container/],
      [{ accountUrl: 'http://a.blob.core.windows.net', credential: token }, /options\.accountUrl must use https/],
      [{ accountUrl: 'https://a.blob.core.windows.net', credential: {} }, /options\.credential must be a TokenCredential/],
      [{ connectionString, container: 'Not_Valid' }, /options\.container must be/],
      [{ connectionString, container: 'ab' }, /options\.container must be/],
      [{ accountName, accountKey, prefix: 5 }, /options\.prefix/],
      [{ connectionString, leaseDuration: 5 }, /options\.leaseDuration.*15 to 60/],
      [{ connectionString, leaseDuration: 61 }, /options\.leaseDuration/],
      [{ connectionString, leaseDuration: 20.5 }, /options\.leaseDuration/],
      [{ connectionString, timeout: 0 }, /options\.timeout/],
      [{ connectionString, retryOptions: 3 }, /options\.retryOptions/]
    ]
    for (const [options, message] of cases) {
      const label = inspect(options, { breakLength: Infinity }).replaceAll(accountKey, '<key>').slice(0, 80)
      let err: unknown
      try {
        // eslint-disable-next-line no-new
        new AzureBlobStore(options as AzureBlobStoreOptions)
      } catch (e) {
        err = e
      }
      t.type(err, TypeError, label)
      t.match(err, { code: 'FST_AUTOCERT_INVALID_STORE_OPTIONS', message }, label)
      const text = `${(err as Error | undefined)?.message}\n${(err as Error | undefined)?.stack}`
      t.notOk(secrets.some((s) => text.includes(s)), `${label}: no secret in the message`)
    }
    // @ts-expect-error: two ways to authenticate do not type-check either
    const ambiguous: AzureBlobStoreOptions = { connectionString, accountName, accountKey }
    // @ts-expect-error: the container URL already names the container
    const twoContainers: AzureBlobStoreOptions = { containerUrl, container: 'abc' }
    t.ok(ambiguous !== undefined && twoContainers !== undefined)
    // The four ways to authenticate construct without a request.
    for (const options of [
      { connectionString },
      { accountName, accountKey },
      { accountName, accountKey, endpoint: blobEndpoint, container: 'abc', prefix: 'certs/', leaseDuration: 60 },
      { containerUrl },
      { accountUrl: 'https://a.blob.core.windows.net', credential: token, container: 'abc' }
    ] satisfies AzureBlobStoreOptions[]) {
      t.doesNotThrow(() => new AzureBlobStore(options))
    }
  })
})

t.test('FileStore specifics', async (t) => {
  const tmp = async (t: tap.Test): Promise<string> => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'autocert-store-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    return dir
  }

  t.test('creates its directory 0700 on first use, files 0600, no temporary file left', async (t) => {
    const dir = path.join(await tmp(t), 'nested', 'certs')
    const store = new FileStore(dir)
    t.teardown(() => store.close())
    t.equal(await store.get('a.example.com'), undefined)
    t.equal((await stat(dir)).mode & 0o777, 0o700)
    await store.put('a.example.com', 'x')
    await store.put('a.example.com', 'y')
    t.equal((await stat(path.join(dir, 'a.example.com'))).mode & 0o777, 0o600)
    t.same(await readdir(dir), ['a.example.com'])
    const lock = await store.lock('a.example.com')
    t.same((await readdir(dir)).sort(), ['.a.example.com.lock', 'a.example.com'])
    await lock.release()
    t.same(await readdir(dir), ['a.example.com'], 'release removes the lock file')
  })

  t.test('rejects a bad directory', async (t) => {
    t.throws(() => new FileStore(''), { name: 'TypeError', code: 'FST_AUTOCERT_INVALID_STORE_OPTIONS' })
  })

  t.test('file system errors are errors, never a miss', async (t) => {
    const dir = path.join(await tmp(t), 'certs')
    const store = new FileStore(dir)
    t.teardown(() => store.close())
    await store.put('a.example.com', 'x')
    await mkdir(path.join(dir, 'b.example.com'))
    t.match(await rejection(store.get('b.example.com')), { code: 'EISDIR' }, 'get')
    t.match(await rejection(store.get('b.example.com', { maxBytes: 10 })), { code: 'EISDIR' }, 'get with a limit')
    t.match(await rejection(store.put('b.example.com', 'x')), { code: 'EISDIR' }, 'put')
    t.same((await readdir(dir)).sort(), ['a.example.com', 'b.example.com'], 'the failed put removed its temporary file')
    await rm(dir, { recursive: true })
    await writeFile(dir, 'a file where the directory was')
    for (const [what, call] of [
      ['get', () => store.get('a.example.com')],
      ['put', () => store.put('a.example.com', 'x')],
      ['list', () => store.list()],
      ['lock', () => store.lock('a.example.com')]
    ] as const) {
      t.match(await rejection(call()), { code: 'ENOTDIR' }, what)
    }
  })

  t.test('a failed directory creation is retried', async (t) => {
    const blocker = path.join(await tmp(t), 'blocker')
    await writeFile(blocker, '')
    const store = new FileStore(path.join(blocker, 'certs'))
    t.teardown(() => store.close())
    t.match(await rejection(store.get('a.example.com')), { code: 'ENOTDIR' })
    await rm(blocker)
    t.equal(await store.get('a.example.com'), undefined)
    t.ok((await stat(path.join(blocker, 'certs'))).isDirectory())
  })

  t.test('lock files', { jobs: 4 }, async (t) => {
    t.test('a fresh lock file of another process holds, a stale one is taken over', async (t) => {
      const dir = await tmp(t)
      const store = new FileStore(dir)
      t.teardown(() => store.close())
      await store.list()
      const file = path.join(dir, '.a.example.com.lock')
      await writeFile(file, 'some crashed process')
      const controller = new AbortController()
      setTimeout(() => controller.abort(new Error('gave up')), 1500)
      t.match(await rejection(store.lock('a.example.com', controller.signal)), { message: 'gave up' }, 'a fresh lock file holds')
      const past = new Date(Date.now() - 11_000)
      await utimes(file, past, past)
      const lock = await store.lock('a.example.com')
      t.not(await readFile(file, 'utf8'), 'some crashed process', 'the lock file is ours now')
      await lock.release()
    })

    t.test('a held lock file is refreshed', async (t) => {
      const dir = await tmp(t)
      const store = new FileStore(dir)
      t.teardown(() => store.close())
      const lock = await store.lock('a.example.com')
      const file = path.join(dir, '.a.example.com.lock')
      const past = new Date(Date.now() - 8000)
      await utimes(file, past, past)
      await sleep(3300)
      t.ok(Date.now() - (await stat(file)).mtimeMs < 3000, 'touched by its holder')
      t.notOk(lock.signal.aborted)
      await lock.release()
    })

    t.test('a lock whose file was removed or taken over aborts its signal', async (t) => {
      const dir = await tmp(t)
      const store = new FileStore(dir)
      t.teardown(() => store.close())
      const removed = await store.lock('a.example.com')
      const stolen = await store.lock('b.example.com')
      await rm(path.join(dir, '.a.example.com.lock'))
      await writeFile(path.join(dir, '.b.example.com.lock'), 'another process')
      t.match(await aborted(removed.signal, 5000), { message: /removed or taken over/ })
      t.match(await aborted(stolen.signal, 5000), { message: /removed or taken over/ })
      await Promise.all([removed.release(), stolen.release()])
      t.equal(await readFile(path.join(dir, '.b.example.com.lock'), 'utf8'), 'another process', 'release leaves a lock file that is not ours')
    })

    // Races between two processes cannot be put on cue with the real file system:
    // these wrap node:fs/promises to make the other process act at the worst moment.
    const withFs = (t: tap.Test, fs: Partial<typeof fsp>): typeof FileStore =>
      t.mockRequire<typeof import('../lib/store/file')>('../lib/store/file', { 'node:fs/promises': { ...fsp, ...fs } }).FileStore

    t.test('a lock file refreshed by its holder during a takeover is put back', async (t) => {
      const dir = await tmp(t)
      const file = path.join(dir, '.a.example.com.lock')
      const Store = withFs(t, {
        rename: async (from, to) => {
          // The holder was only slow: it touches its lock file just before we move it aside.
          if (from === file) await utimes(file, new Date(), new Date())
          return fsp.rename(from, to)
        }
      })
      const store = new Store(dir)
      t.teardown(() => store.close())
      await store.list()
      await writeFile(file, 'slow holder')
      const past = new Date(Date.now() - 11_000)
      await utimes(file, past, past)
      const controller = new AbortController()
      setTimeout(() => controller.abort(new Error('gave up')), 1500)
      t.match(await rejection(store.lock('a.example.com', controller.signal)), { message: 'gave up' }, 'not taken over')
      t.equal(await readFile(file, 'utf8'), 'slow holder', 'the lock file is back in place')
      t.same((await readdir(dir)).sort(), ['.a.example.com.lock'], 'nothing else left behind')
    })

    t.test('a lock file that vanishes during the staleness check is created again', async (t) => {
      const dir = await tmp(t)
      const file = path.join(dir, '.a.example.com.lock')
      let vanish = true
      const Store = withFs(t, {
        stat: (async (p: string) => {
          if (p === file && vanish) {
            vanish = false
            await rm(file)
          }
          return fsp.stat(p)
        }) as typeof fsp.stat
      })
      const store = new Store(dir)
      t.teardown(() => store.close())
      await store.list()
      await writeFile(file, 'holder releasing now')
      const lock = await store.lock('a.example.com')
      t.not(await readFile(file, 'utf8'), 'holder releasing now')
      await lock.release()
    })

    t.test('a lock file taken just as the store closes is given back', async (t) => {
      const dir = await tmp(t)
      const file = path.join(dir, '.a.example.com.lock')
      let store: FileStore | undefined
      const Store = withFs(t, {
        open: (async (p: string, ...rest: unknown[]) => {
          const handle = await (fsp.open as (...args: unknown[]) => Promise<fsp.FileHandle>)(p, ...rest)
          if (p === file) void store?.close()
          return handle
        }) as typeof fsp.open
      })
      store = new Store(dir)
      t.match(await rejection(store.lock('a.example.com')), { message: /closed/ })
      t.same(await readdir(dir), [], 'no lock file left')
    })

    t.test('an unexpected error during the staleness check rejects lock()', async (t) => {
      const dir = await tmp(t)
      const file = path.join(dir, '.a.example.com.lock')
      const Store = withFs(t, {
        stat: (async (p: string) => {
          if (p === file) throw Object.assign(new Error('EIO: i/o error'), { code: 'EIO' })
          return fsp.stat(p)
        }) as typeof fsp.stat
      })
      const store = new Store(dir)
      t.teardown(() => store.close())
      await store.list()
      await writeFile(file, 'holder')
      t.match(await rejection(store.lock('a.example.com')), { code: 'EIO' })
    })
  })

  t.test('close() releases held locks, ends waits and leaves no timer', async (t) => {
    const timers = storeTimers(t)
    const dir = await tmp(t)
    const store = new FileStore(dir)
    const lock = await store.lock('a.example.com')
    const waiting = rejection(store.lock('a.example.com', new AbortController().signal))
    await sleep(100)
    t.ok(timers.size > 0)
    await store.close()
    t.ok(lock.signal.aborted, 'a held lock is aborted')
    t.match(await waiting, { message: /closed/ }, 'a waiting lock() rejects')
    t.same(await readdir(dir), [], 'the lock file is gone')
    await sleep(50)
    t.same([...timers.values()], [], 'no timer of the store is left')
  })
})

t.test('metadata through the coded and sealed wrappers, on Azurite: signed by the encryption key, dropped when altered or signed by another', async (t) => {
  const container = freshContainer()
  const inner = new AzureBlobStore({ connectionString: azurite.connectionString, container })
  t.teardown(() => inner.close())
  const key = randomBytes(32)
  const store = new EncryptedStore(new CodedStore(inner), { key })
  const listed = async (s: CertStore): Promise<Record<string, Record<string, string> | undefined>> => {
    const found: Record<string, Record<string, string> | undefined> = {}
    for await (const { key, metadata } of (s.entries as NonNullable<CertStore['entries']>)()) found[key] = metadata
    return found
  }
  const fields = { autocert_serial: '0A1B', autocert_notafter: '2027-03-03T05:40:00.000Z' }
  await store.put('a.example.com', 'x', { metadata: fields })
  await store.put('b.example.com', 'y', { metadata: fields })
  await store.put('c.example.com', 'z')
  t.same(await listed(store), { 'a.example.com': fields, 'b.example.com': fields, 'c.example.com': undefined }, 'read back as written, the signature taken off')
  const raw = (await listed(inner))['a.example.com'] ?? {}
  t.match(raw.autocert_mac, /^[0-9a-f]{8}\.[A-Za-z0-9_-]{43}$/, 'stored with its signature: key id and HMAC')
  t.equal(raw.autocert_serial, '0A1B', 'the fields themselves in the clear (a serial and a date are public)')

  const blobs = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(container)
  await blobs.getBlobClient('a.example.com').setMetadata({ ...raw, autocert_notafter: '2099-01-01T00:00:00.000Z' })
  const bRaw = (await listed(inner))['b.example.com'] ?? {}
  await blobs.getBlobClient('c.example.com').setMetadata({ ...fields, autocert_mac: bRaw.autocert_mac as string })
  const read = await listed(store)
  t.equal(read['a.example.com'], undefined, 'an altered field: the metadata is dropped')
  t.equal(read['c.example.com'], undefined, 'another key\'s signature: dropped')
  t.same(read['b.example.com'], fields, 'the untouched one still reads')
  t.same(await listed(new EncryptedStore(inner, { key: randomBytes(32), previousKeys: [key] })), { 'a.example.com': undefined, 'b.example.com': fields, 'c.example.com': undefined }, 'signed by a previous key: still read')
  t.same(await listed(new EncryptedStore(inner, { key: randomBytes(32) })), { 'a.example.com': undefined, 'b.example.com': undefined, 'c.example.com': undefined }, 'by a key not configured: dropped')
  t.equal(new CodedStore(new FileStore(os.tmpdir())).entries, undefined, 'a store without entries() has none through the wrappers')
  t.equal(new EncryptedStore(new FileStore(os.tmpdir()), { key }).entries, undefined)

  const failing = new CodedStore({ ...inner, get: inner.get.bind(inner), put: inner.put.bind(inner), delete: inner.delete.bind(inner), list: inner.list.bind(inner), lock: inner.lock.bind(inner), entries: async function * () { throw new Error('the listing broke') } })
  await t.rejects(listed(failing), { code: 'FST_AUTOCERT_STORE_FAILED', message: /list all keys with metadata: the listing broke/ }, 'a listing that fails is a coded store error')
})

t.test('what the plugin reads with: EncryptedStore limits, readBounded, readRecord', async (t) => {
  // What a sealed value adds: MAGIC, key id, IV and GCM tag.
  const OVERHEAD = 36
  const logger = (): Logger & { lines: Array<{ obj: object, msg: string }> } => {
    const lines: Array<{ obj: object, msg: string }> = []
    const keep = (obj: object, msg: string): void => { lines.push({ obj, msg }) }
    return { lines, debug: keep, info: keep, warn: keep, error: keep }
  }

  t.test('EncryptedStore passes the limit on, enlarged by its sealing overhead', async (t) => {
    const inner = new MemoryStore()
    const asked: Array<number | undefined> = []
    // Records the limit the inner store is asked for; every call reaches the real MemoryStore.
    const spy: CertStore = {
      get: (key, options) => { asked.push(options?.maxBytes); return inner.get(key, options) },
      put: (key, value) => inner.put(key, value),
      delete: (key) => inner.delete(key),
      list: (prefix) => inner.list(prefix),
      lock: (key, signal, options) => inner.lock(key, signal, options)
    }
    const store = new EncryptedStore(spy, { key: randomBytes(32) })
    const value = Buffer.alloc(1000, 'E')
    await store.put('a.example.com', value)
    t.equal((await inner.get('a.example.com'))?.length, 1000 + OVERHEAD, 'sealed, 36 bytes longer')
    t.same(await store.get('a.example.com', { maxBytes: 1000 }), value, 'a value of exactly the limit opens')
    t.same(asked, [1000 + OVERHEAD], 'the inner store was allowed the overhead on top')
    t.match(await rejection(store.get('a.example.com', { maxBytes: 999 })), {
      code: 'FST_AUTOCERT_CORRUPT', message: /1036 bytes, over the limit of 1035 bytes/
    }, 'one byte more is refused by the inner store, before it is read')
    t.same(await store.get('a.example.com'), value, 'no limit: no limit passed on')
    t.equal(asked.at(-1), undefined)

    // Written before encryption was on: plain text, which has no overhead.
    await inner.put('plain.example.com', Buffer.alloc(1001, 'P'))
    t.match(await rejection(store.get('plain.example.com', { maxBytes: 1000 })), {
      code: 'FST_AUTOCERT_CORRUPT', message: /1001 bytes, over the limit of 1000 bytes/
    }, 'a plain value within the inner limit but over the caller\'s is refused')
    t.equal((await store.get('plain.example.com', { maxBytes: 1001 }))?.length, 1001)

    t.match(await rejection(store.reseal('plain.example.com', { maxBytes: 1000 })), { code: 'FST_AUTOCERT_CORRUPT' }, 'reseal() reads within the limit too')
    t.ok((await inner.get('plain.example.com'))?.equals(Buffer.alloc(1001, 'P')), 'and writes nothing then')
    t.equal(await store.reseal('plain.example.com', { maxBytes: 1001 }), true, 'within it, it reseals')
    t.equal(asked.at(-1), 1001 + OVERHEAD, 'the inner store read with the overhead on top of the caller\'s limit')
  })

  t.test('readBounded checks what a store of the user\'s own returns, when it ignores the limit', async (t) => {
    const inner = new MemoryStore()
    // The contract as it was: get(key) only. A real implementation of it, not a fake: such stores exist.
    const older: CertStore = {
      get: (key) => inner.get(key),
      put: (key, value) => inner.put(key, value),
      delete: (key) => inner.delete(key),
      list: (prefix) => inner.list(prefix),
      lock: (key, signal, options) => inner.lock(key, signal, options)
    }
    await older.put('a.example.com', Buffer.alloc(2000, 'U'))
    t.equal((await older.get('a.example.com', { maxBytes: 10 }))?.length, 2000, 'the store itself returns it all')
    t.match(await rejection(readBounded(older, 'a.example.com', 1999)), {
      code: 'FST_AUTOCERT_CORRUPT', message: /2000 bytes, over the limit of 1999 bytes/
    }, 'readBounded refuses it')
    t.equal((await readBounded(older, 'a.example.com', 2000))?.length, 2000)
    t.equal(await readBounded(older, 'missing.example.com', 10), undefined)
  })

  t.test('readRecord: unusable records count as none and are logged once, until found usable again', async (t) => {
    const store = new MemoryStore()
    const log = logger()
    const corrupt = new CorruptLog(log, 'ignoring unusable test record')
    const parse = (data: Buffer): { n: number } | undefined => {
      const n = Number(data.toString())
      return Number.isInteger(n) ? { n } : undefined
    }
    const read = (): Promise<{ n: number } | undefined> => readRecord(store, 'r+failure', 8, parse, corrupt)
    t.equal(await read(), undefined, 'missing: none')
    await store.put('r+failure', '123456789')
    t.equal(await read(), undefined, 'over the limit: none')
    t.equal(await read(), undefined)
    t.equal(log.lines.length, 1, 'logged once')
    t.match(log.lines[0], { msg: 'ignoring unusable test record', obj: { blob: 'r+failure', error: { code: 'FST_AUTOCERT_CORRUPT', message: /9 bytes, over the limit of 8/ } } })
    await store.put('r+failure', 'x')
    t.equal(await read(), undefined, 'refused by parse: none')
    t.equal(log.lines.length, 1, 'still the same unusable key: not logged again')
    await store.put('r+failure', '7')
    t.same(await read(), { n: 7 }, 'usable')
    await store.put('r+failure', 'y')
    t.equal(await read(), undefined)
    t.equal(log.lines.length, 2, 'unusable again after a usable read: logged again')
    t.match(log.lines[1].obj, { error: { message: /is not a record the plugin writes/ } })
  })

  t.test('CorruptLog remembers 1,000 keys: the oldest is forgotten first', async (t) => {
    const log = logger()
    const corrupt = new CorruptLog(log, 'unusable')
    for (let i = 0; i <= 1000; i++) corrupt.report(`k${i}`, new Error('x'))
    corrupt.report('k1000', new Error('x'))
    t.equal(log.lines.length, 1001, 'each key once')
    corrupt.report('k0', new Error('x'))
    t.equal(log.lines.length, 1002, 'the first, forgotten, is logged again')
    corrupt.report('k2', new Error('x'))
    t.equal(log.lines.length, 1002, 'a remembered one is not')
  })
})
