import { randomBytes } from 'node:crypto'
import http from 'node:http'
import net, { type AddressInfo } from 'node:net'
import { Readable } from 'node:stream'
import { BlobServiceClient, type ContainerClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { AzureBlobStore, CHALLENGE_PATH, MemoryStore } from '../lib'
import { decodeBundle } from '../lib/certificate'
import { startApp, eventually, type TestApp } from './support/app'
import type { Azurite } from './support/azurite'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

/*
 * Reads bounded by what a value can be, against real Azurite and Pebble: a
 * 200 MB blob under a key the plugin reads costs a small read, not 200 MB of
 * transfer and memory, at start-up and at every challenge request.
 *
 * What is measured is machine-independent: the bytes Azurite sends the app,
 * counted by a TCP relay in front of Azurite that the app's store talks to.
 * Without the limits every such read moves the whole 200 MB through it.
 */

const MiB = 1024 * 1024
const HUGE = 200 * MiB
// Far under the 200 MB a whole read moves, far over the few small reads of a bounded one.
const FEW_MB = 8 * MiB

/** A TCP relay to Azurite that counts the bytes Azurite sends through it. */
async function byteCounter (t: Test, azurite: Azurite): Promise<{ connectionString: string, received: () => number }> {
  let received = 0
  const sockets = new Set<net.Socket>()
  const server = net.createServer((client) => {
    const upstream = net.connect(azurite.port, '127.0.0.1')
    for (const s of [client, upstream]) {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => { client.destroy(); upstream.destroy() })
    }
    upstream.on('data', (chunk: Buffer) => { received += chunk.length })
    client.pipe(upstream)
    upstream.pipe(client)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => {
    for (const s of sockets) s.destroy()
    server.close(() => resolve())
  }))
  const port = (server.address() as AddressInfo).port
  return {
    connectionString: azurite.connectionString.replace(`127.0.0.1:${azurite.port}`, `127.0.0.1:${port}`),
    received: () => received
  }
}

/** Uploads `size` bytes of filler to `name` from a generator, 4 MiB at a time: the test never holds the whole blob. */
async function uploadHuge (container: ContainerClient, name: string, size: number): Promise<void> {
  const chunk = Buffer.alloc(4 * MiB, 'x')
  function * filler (): Generator<Buffer> {
    for (let left = size; left > 0; left -= chunk.length) yield left >= chunk.length ? chunk : chunk.subarray(0, left)
  }
  await container.getBlockBlobClient(name).uploadStream(Readable.from(filler()), 4 * MiB, 2)
  const { contentLength } = await container.getBlobClient(name).getProperties()
  if (contentLength !== size) throw new Error(`uploaded ${String(contentLength)} bytes, not ${size}`)
}

/** One GET on a real socket, with its status and how long it took. */
function get (port: number, path: string, host: string): Promise<{ status: number, body: string, ms: number }> {
  const started = performance.now()
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, headers: { host }, agent: false }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body, ms: performance.now() - started }))
    }).on('error', reject)
  })
}

const mb = (bytes: number): string => `${(bytes / MiB).toFixed(2)} MiB`

t.test('a 200 MB blob under a listed name, an HTTP-01 token, the order log and a failure record: none is read whole', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const container = 'limits'
  const blobs = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(container)
  await blobs.createIfNotExists()
  const big = 'big.example.test'
  const records = 'records.example.test'
  const token = randomBytes(32).toString('base64url')
  await uploadHuge(blobs, big, HUGE)
  await uploadHuge(blobs, `${token}+http-01`, HUGE)
  // Records the plugin rewrites: a megabyte each, far over their kinds' limits.
  await uploadHuge(blobs, 'acme_orders+log', MiB)
  await uploadHuge(blobs, `${records}+failure`, MiB)

  const relay = await byteCounter(t, azurite)
  const store = new AzureBlobStore({ connectionString: relay.connectionString, container })
  t.teardown(() => store.close())
  const rssBefore = process.memoryUsage().rss
  const app: TestApp = await startApp(pebble, httpPort, store, { domains: [big, records] })
  t.teardown(() => app.app.close())
  await eventually(() => app.app.autocert.status().every((s) => s.serial !== undefined), 60_000)
  const startup = relay.received()
  const rssGrowth = process.memoryUsage().rss - rssBefore

  await t.test('start-up: the certificate blob is not downloaded, is reported once, and a new certificate replaces it', async (t) => {
    t.ok(startup < FEW_MB, `Azurite sent the app ${mb(startup)} during start-up and both orders (a whole read of the blob is 200 MiB)`)
    t.comment(`RSS grew ${mb(rssGrowth)} during start-up (informational: machine-dependent)`)
    const unusable = app.logs.filter((l) => l.msg === 'ignoring unusable stored certificate' && l.blob === big)
    t.equal(unusable.length, 1, 'reported once')
    t.match(unusable[0]?.error, { code: 'FST_AUTOCERT_CORRUPT', message: /209715200 bytes, over the limit of 65536 bytes/ }, 'the report gives the size and the limit')
    t.equal(pebble.orderCount(), 2, 'one order for each name')
    const served = await handshake(app.port, big, root)
    t.ok(served.authorized, 'a real handshake gets a certificate that verifies against Pebble\'s root')
    t.equal(served.serial, app.app.autocert.status().find((s) => s.domain === big)?.serial, 'the new one')
    await eventually(async () => (await blobs.getBlobClient(big).getProperties()).contentLength !== HUGE)
    const stored = await blobs.getBlockBlobClient(big).downloadToBuffer()
    t.ok(stored.length < 64 * 1024, `the blob was overwritten (${stored.length} bytes)`)
    t.equal(decodeBundle(big, big, stored).serial, served.serial, 'with the served certificate')
  })

  await t.test('the order log and the failure record: reported once each, rewritten at their next write', async (t) => {
    for (const [msg, blob] of [['ignoring unusable order log', 'acme_orders+log'], ['ignoring unusable failure record', `${records}+failure`]]) {
      const lines = app.logs.filter((l) => l.msg === msg && l.blob === blob)
      t.equal(lines.length, 1, `${blob}: "${msg}" once`)
      t.match(lines[0]?.error, { message: /1048576 bytes, over the limit of/ }, `${blob}: with its size`)
    }
    await eventually(async () => (await blobs.getBlobClient('acme_orders+log').getProperties()).contentLength !== MiB)
    const log = JSON.parse((await blobs.getBlockBlobClient('acme_orders+log').downloadToBuffer()).toString()) as number[]
    t.equal(log.length, 2, 'the order log now holds the two orders')
    await eventually(async () => !(await blobs.getBlobClient(`${records}+failure`).exists()))
    t.pass('the failure record is gone: its name has a certificate now')
  })

  await t.test('10 concurrent GETs of a token whose answer is 200 MB: 404 at once, nothing near 200 MB read, one warning', async (t) => {
    const before = relay.received()
    const lines = app.logs.length
    const rss = process.memoryUsage().rss
    let peak = rss
    const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss) }, 10)
    const started = performance.now()
    const answers = await Promise.all(Array.from({ length: 10 }, () => get(httpPort, `${CHALLENGE_PATH}${token}`, big)))
    const ms = performance.now() - started
    clearInterval(sampler)
    const read = relay.received() - before
    t.comment(`RSS peaked ${mb(peak - rss)} above its level before the GETs (informational: machine-dependent)`)
    t.same(answers.map((a) => a.status), Array(10).fill(404), 'all 404')
    t.ok(answers.every((a) => a.body === 'Not Found'), 'nothing of the blob served')
    t.comment(`all answered in ${ms.toFixed(0)} ms (slowest ${Math.max(...answers.map((a) => a.ms)).toFixed(0)} ms)`)
    t.ok(read < FEW_MB, `Azurite sent ${mb(read)} for the 10 lookups (a whole read is 200 MiB each)`)
    const warned = (): Array<Record<string, unknown>> => app.logs.slice(lines).filter((l) => l.msg === 'ignoring unusable stored HTTP-01 answer')
    t.equal(warned().length, 1, 'one warning for the 10 requests')
    t.equal(warned()[0]?.blob, `${token}+http-01`, 'naming the blob')
    t.notOk(JSON.stringify(app.logs.slice(lines)).includes('xxxx'), 'no data of the blob in the log')
    const again = await get(httpPort, `${CHALLENGE_PATH}${token}`, big)
    t.equal(again.status, 404, 'a later request: 404 too')
    t.equal(warned().length, 1, 'and no second warning')
  })

  t.equal(pebble.orderCount(), 2, 'no other order')
})

t.test('an account key over its limit fails the order, as a key that does not open does, and is left for the operator', async (t) => {
  const { pebble, httpPort } = await startServices(t)
  const store = new MemoryStore()
  const junk = Buffer.alloc(17 * 1024, 'k')
  await store.put('acme_account+key', junk)
  const app = await startApp(pebble, httpPort, store, { domains: ['account.example.test'], retryDelays: [60_000] })
  t.teardown(() => app.app.close())
  await eventually(() => app.logs.some((l) => l.msg === 'certificate order failed'))
  const failed = app.logs.find((l) => l.msg === 'certificate order failed')
  t.match(failed?.error, { code: 'FST_AUTOCERT_CORRUPT', message: /acme_account\+key is unusable: 17408 bytes, over the limit of 16384 bytes/ })
  t.equal(pebble.orderCount(), 0, 'no order reached the CA')
  t.ok((await store.get('acme_account+key'))?.equals(junk), 'the stored key is not replaced: an account is the operator\'s to change')
})
