// A flood of allowed on-demand names against real Pebble and real Azurite: what it costs, and what it leaves behind.
import { BlobServiceClient } from '@azure/storage-blob'
import t from 'tap'
import { AzureBlobStore, type AutocertEvents } from '../lib'
import { BUDGET_RETRY_SPREAD } from '../lib/on-demand'
import { sendClientHello } from './helpers/client-hello'
import { startServices } from './helpers/services'
import { eventually, startApp } from './support/app'
import { handshake } from './support/tls'

// Once the budget is known spent, each name costs two store reads (its certificate, its failure record): 2,000 names take about 20 s here.
t.setTimeout(300_000)

const FLOOD = 2000
const BUDGET = 10

t.test('a flood of allowed names: the budget\'s orders only, retries spread out, and no lock blob left in the container', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const container = 'on-demand-flood'
  const app = await startApp(pebble, httpPort, new AzureBlobStore({ connectionString: azurite.connectionString, container }), {
    domains: [], onDemand: { allow: () => true }, maxOrdersPerHour: BUDGET
  })
  t.teardown(() => app.app.close())
  const backoff: Array<AutocertEvents['backoff'][0]> = []
  app.app.autocert.on('backoff', (e) => backoff.push(e))
  const names = Array.from({ length: FLOOD }, (_, i) => `flood-${i}.example.test`)
  const outcomes = new Map<string, string>()
  const started = performance.now()
  // 32 clients at a time, each sending one ClientHello for a name of its own.
  const queue = [...names]
  await Promise.all(Array.from({ length: 32 }, async () => {
    for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
      outcomes.set(name, (await sendClientHello(app.port, { serverName: name, version: '1.3' }, 60_000)).outcome)
    }
  }))
  const served = names.filter((n) => outcomes.get(n) === 'served')
  t.comment(`${FLOOD} names in ${((performance.now() - started) / 1000).toFixed(1)} s: ${served.length} served, ${pebble.orderCount()} orders`)
  t.equal(pebble.orderCount(), BUDGET, 'exactly the budget\'s orders at Pebble')
  t.equal(served.length, BUDGET, 'and as many names served')
  for (const name of served) t.ok((await handshake(app.port, name, root)).authorized, `${name}: its certificate verifies`)

  // A served name's order writes its certificate after serving it, then releases its lock: wait for that.
  await eventually(() => app.app.autocert.status().every((s) => s.lockHolder === undefined), 60_000)
  const listBlobs = async (): Promise<string[]> => {
    const names: string[] = []
    for await (const blob of BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(container).listBlobsFlat()) names.push(blob.name)
    return names
  }
  const locked = async (): Promise<string[]> => (await listBlobs()).filter((b) => b.startsWith('locks/'))
  // The last releases may still be on their way to the store.
  await eventually(async () => (await locked()).length === 0, 10_000).catch(() => {})
  const blobs = await listBlobs()
  const locks = blobs.filter((b) => b.startsWith('locks/'))
  t.comment(`${blobs.length} blobs in the container, ${locks.length} under locks/`)
  t.same(locks, [], 'no lock blob is left: not of the refused names, nor of the served ones, the order budget or the account')
  t.same(blobs.filter((b) => served.includes(b)).sort(), [...served].sort(), 'the served names\' certificates are stored')

  // The refused names all wait for the same next free slot, and each retries at its own time after it.
  const refused = backoff.filter((e) => e.reason === 'budget')
  t.equal(refused.length, FLOOD - BUDGET, 'every other name was refused for the budget')
  const slot = app.app.autocert.status().find((s) => s.domain === refused[0].domain)?.retryAfter?.getTime() as number
  const err = await app.app.autocert.certificate(refused[0].domain).catch((e: unknown) => e)
  t.match(err, { code: 'FST_AUTOCERT_RATE_LIMITED', message: new RegExp(`next slot at ${new Date(slot).toISOString()}`) }, 'a refusal names the next free slot')
  const times = refused.map((e) => e.retryAt.getTime())
  const distinct = new Set(times).size
  const [first, last] = [Math.min(...times), Math.max(...times)]
  t.comment(`retry times: ${distinct} distinct (to the ms) of ${times.length}, from slot + ${first - slot} ms to slot + ${last - slot} ms (bound ${BUDGET_RETRY_SPREAD} ms)`)
  t.ok(first >= slot && last <= slot + BUDGET_RETRY_SPREAD, 'all between the slot and the slot plus BUDGET_RETRY_SPREAD')
  t.ok(distinct > times.length * 0.9, 'nearly all distinct to the millisecond (a few may share one by chance)')
  t.equal(pebble.orderCount(), BUDGET, 'still the budget\'s orders')
})
