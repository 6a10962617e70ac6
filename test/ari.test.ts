// Renewal windows (ARI) for a fleet of three processes, on real Pebble 2.10 and Azurite.
import t from 'tap'
import { BlobServiceClient } from '@azure/storage-blob'
import { startAriFleet, storedLeaf } from './helpers/ari'
import { callInstance, type Instance } from './helpers/instance'
import { handshake } from './support/tls'

const DOMAIN = 'window.example.test'
const CONTAINER = 'ari'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('a fleet of three: one look at ARI per interval for all, and a window in the future honoured', async (t) => {
  const { pebble, root, azurite, httpPort, ca, start: startOne } = await startAriFleet(t, CONTAINER, [DOMAIN])
  const instances: Instance[] = [await startOne('a', { httpPort })]
  await instances[0].waitForLog((l) => l.msg === 'certificate obtained')
  const obtained = Date.now()
  for (const name of ['b', 'c']) instances.push(await startOne(name))
  const first = (await handshake(instances[0].port, DOMAIN, root)).serial
  t.equal(ca.checks(), 1, 'the new certificate\'s window: asked for once, by the instance that ordered it')

  // A window 75 to 85 s from now: the fleet sees it at its next look (a minute after the first), and waits for it.
  const start = obtained + 75_000
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  await pebble.setRenewalInfo(await storedLeaf(container, DOMAIN), { start: new Date(start), end: new Date(start + 10_000) })
  await sleep(start - Date.now() - 2000)
  t.equal(pebble.orderCount(), 1, 'no order before the window')
  const window = (await callInstance(instances[1], DOMAIN, root, 'GET', '/_instance/status') as Array<{ renewalWindow?: { start: string } }>)[0].renewalWindow
  t.equal(window?.start, new Date(start).toISOString(), 'status() shows the window the CA gave, on an instance that did not ask the CA')
  t.equal(ca.checks(), 2, 'in the minute and a quarter since, one more request for the fleet of three (Retry-After: a minute)')
  await sleep(start + 10_000 - Date.now() + 3000)
  t.equal(pebble.orderCount(), 2, 'one order inside the window')
  t.equal(pebble.replacementCount(), 1, 'naming the certificate it replaces')
  const second = (await handshake(instances[0].port, DOMAIN, root)).serial
  t.not(second, first)

  // Checks, counted fleet-wide, over one more minute: one, not one per instance.
  const counted = ca.checks()
  await sleep(65_000)
  const more = ca.checks() - counted
  t.ok(more >= 1 && more <= 2, `${more} ARI requests in a minute for the fleet of three`)
  const serials = await Promise.all(instances.map(async (i) => (await handshake(i.port, DOMAIN, root)).serial))
  t.same(serials, [second, second, second], 'every instance has adopted the renewal by its next look')
})
