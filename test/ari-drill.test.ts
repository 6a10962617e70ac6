// The mass-revocation drill on real Pebble 2.10 (ARI) and Azurite: a fleet of three processes renews every certificate once, in its window.
import t from 'tap'
import { BlobServiceClient } from '@azure/storage-blob'
import { startAriFleet, storedLeaf } from './helpers/ari'
import type { Instance } from './helpers/instance'
import { handshake } from './support/tls'

const DOMAINS = Array.from({ length: 20 }, (_, i) => `drill${i}.example.test`)
const CONTAINER = 'drill'

/** The served serial of every domain on every instance. */
async function served (instances: Instance[], root: string): Promise<Map<string, string[]>> {
  const serials = new Map<string, string[]>()
  for (const domain of DOMAINS) {
    serials.set(domain, await Promise.all(instances.map(async (i) => (await handshake(i.port, domain, root)).serial)))
  }
  return serials
}

t.test('the drill: every window moved to the past; three instances, maxOrdersPerHour 5, renew each of 20 certificates exactly once', async (t) => {
  // 90-day certificates: Pebble's own window for them is two months away, so only the drill moves it.
  const { pebble, root, azurite, httpPort, ca, start } = await startAriFleet(t, CONTAINER, DOMAINS)

  // The certificates come from one instance with room in its budget: its 20 orders then fill the fleet's hour.
  const seed = await start('seed', { httpPort, maxOrdersPerHour: 100 })
  for (const domain of DOMAINS) await seed.waitForLog((l) => l.msg === 'certificate obtained' && l.domain === domain, 60_000)
  await seed.stop()
  t.equal(pebble.orderCount(), 20, 'one order per domain to start with')

  const instances: Instance[] = []
  for (const name of ['a', 'b', 'c']) {
    // Only `a` answers HTTP-01 on Pebble's validation port; the others find its answers in the store.
    instances.push(await start(name, { maxOrdersPerHour: 5, ...(name === 'a' ? { httpPort } : {}) }))
  }
  const before = await served(instances, root)
  for (const [domain, serials] of before) t.equal(new Set(serials).size, 1, `${domain}: one certificate for the fleet`)

  // Pebble is told: renew every certificate now.
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  const WITHOUT_REPLACES = [
    'the CA refused the order\'s replaces: ordering without it',
    'the CA says the certificate was replaced already, and the store has no replacement: ordering without replaces'
  ]
  const past = { start: new Date(Date.now() - 3_600_000), end: new Date(Date.now() - 3_599_000) }
  const leaves = new Map<string, string>()
  for (const domain of DOMAINS) {
    const leaf = await storedLeaf(container, domain)
    leaves.set(domain, leaf)
    await pebble.setRenewalInfo(leaf, past, 'https://ca.example.test/incident')
  }
  const told = Date.now()

  let after = before
  for (;;) {
    after = await served(instances, root)
    if ([...after].every(([domain, serials]) => serials.every((s) => s !== before.get(domain)?.[0]))) break
    if (Date.now() - told > 180_000) break
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
  const seconds = (Date.now() - told) / 1000
  t.ok([...after].every(([domain, serials]) => serials.every((s) => s !== before.get(domain)?.[0])), `every instance serves a new certificate for every domain, ${seconds.toFixed(1)} s after Pebble was told`)
  for (const [domain, serials] of after) t.equal(new Set(serials).size, 1, `${domain}: the same new certificate on all three`)
  t.equal(pebble.orderCount(), 40, 'exactly 20 renewal orders, though the budget of 5 an hour was spent')
  // Pebble 2.10 answers a `replaces` with serverInternal for about one certificate in 200 (lib/acme/issuer.ts): the
  // plugin then orders once without it, and says so. Such an order is still one of the 20, and still exempt.
  const orderedWithout = instances.flatMap((i) => i.logs).filter((l) => WITHOUT_REPLACES.includes(String(l.msg)))
  t.ok(orderedWithout.length <= 2, `at most a rare order without replaces (${orderedWithout.length})`)
  t.equal(pebble.replacementCount() + orderedWithout.length, 20, 'each one naming the certificate it replaces (replaces), or saying why it could not')
  const exempt = instances.flatMap((i) => i.logs).filter((l) => l.msg === 'ordering certificate' && l.exempt === true)
  t.equal(exempt.length, 20, 'each exempt from the budget')
  t.ok(instances.flatMap((i) => i.logs).some((l) => l.msg === 'the CA moved the renewal window' && l.explanationURL === 'https://ca.example.test/incident'), 'the moved window is logged, with its explanation')
  t.comment(`drill: 20 certificates renewed and served by 3 instances in ${seconds.toFixed(1)} s (the fleet looks at ARI at most a minute apart)`)

  // The CA keeps giving the old answer, now about the new certificates too: no order.
  const { checks } = ca
  for (const [domain, serials] of after) {
    const leaf = await storedLeaf(container, domain)
    t.not(leaf, leaves.get(domain), `${domain}: the stored certificate is the new one (${serials[0]})`)
    await pebble.setRenewalInfo(leaf, past, 'https://ca.example.test/incident')
  }
  const seen = checks()
  await new Promise((resolve) => setTimeout(resolve, 75_000))
  t.ok(checks() >= seen + 20, `the fleet asked about the new certificates again (${checks() - seen} requests)`)
  t.equal(pebble.orderCount(), 40, 'and the same answer again caused no order')
})
