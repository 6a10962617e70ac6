/*
 * Figure 7: a mass revocation drill, and what renewal windows (ARI) cost the
 * store. Pebble 2.10 behind the ARI proxy of the tests (test/helpers/ari.ts: its
 * Retry-After shortened, so the fleet looks at each window every minute, the
 * plugin's shortest interval), its own Azurite, and a fleet of three instance
 * processes (test/fixtures/instance.ts) whose Blob Storage requests go through
 * a counting relay.
 *
 * 1. One instance orders a certificate for each domain, then stops.
 * 2. Baseline: the same number of orders placed back to back with acme-client
 *    alone, on the same CA, through the same proxy.
 * 3. The drill: three instances list the domains; Pebble is told that every
 *    certificate must be renewed now. Timed from the fleet's first order (it
 *    comes at the fleet's next look at the windows: within the minute here)
 *    until every instance serves a new certificate for every domain.
 * 4. Store cost of an idle fleet with ARI: the Blob Storage operations per
 *    renewal-window check (the CA's count of checks over the same minutes),
 *    and per domain per day at Let's Encrypt's 6-hour interval.
 * 5. The same fleet, restarted against a directory without `renewalInfo` (a
 *    CA without ARI): its idle operations per domain per day.
 */
import * as acme from 'acme-client'
import { BlobServiceClient } from '@azure/storage-blob'
import { RENEWAL_INFO_INTERVALS } from '../lib/acme/ari'
import { startAriFleet, storedLeaf } from '../test/helpers/ari'
import type { Instance } from '../test/helpers/instance'
import { handshake } from '../test/support/tls'
import { describeCount, startBlobCounter } from './blob-counter'
import { fmt, log, pool, type Figure } from './common'
import { answerHttp01, issue, POLLING } from './first-certificate'

const CONTAINER = 'bench-drill'
const INSTANCES = ['a', 'b', 'c']
/** Let's Encrypt's Retry-After for renewal information, as of 2026. */
const LETS_ENCRYPT_INTERVAL_S = 6 * 3600
const DAY_S = 86_400

export const ariDrill: Figure = async (services, settings, notes) => {
  const count = settings.quick ? 20 : 200
  const idleMs = settings.quick ? 70_000 : 180_000
  const withoutAriMs = settings.quick ? 20_000 : 60_000
  const domains = Array.from({ length: count }, (_, i) => `drill${String(i).padStart(4, '0')}.bench.test`)
  const { pebble, root, httpPort, azurite, ca, start } = await startAriFleet(services, CONTAINER, domains)
  const blobs = await startBlobCounter(azurite, CONTAINER)
  services.teardown(() => blobs.close())
  const viaRelay = blobs.connectionString(azurite.connectionString)
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)

  // 1. The certificates to replace, from an instance with room in its budget.
  const t0 = performance.now()
  const seed = await start('seed', { httpPort, maxOrdersPerHour: 10 * count })
  await Promise.all(domains.map((domain) => seed.waitForLog((l) => l.msg === 'certificate obtained' && l.domain === domain, 600_000)))
  await seed.stop()
  log(`figure 7: ${count} certificates ordered by one instance in ${fmt.ms(performance.now() - t0)}`)

  // 2. The baseline: the same number of orders, one after another, with acme-client alone.
  const baselineMs = await backToBack(ca.directoryUrl, httpPort, domains)
  log(`figure 7: ${count} acme-client orders back to back in ${fmt.ms(baselineMs)}`)

  // 3. The drill.
  const fleet: Instance[] = []
  for (const name of INSTANCES) {
    // Only `a` answers HTTP-01 on Pebble's validation port; the others find its answers in the store.
    fleet.push(await start(name, { connectionString: viaRelay, ...(name === 'a' ? { httpPort } : {}) }))
  }
  const before = new Map<string, string>()
  await pool(domains, 16, async (domain) => { before.set(domain, (await handshake(fleet[0].port, domain, root)).serial) })
  const orders = pebble.orderCount()
  const replacements = pebble.replacementCount()
  const past = { start: new Date(Date.now() - 3_600_000), end: new Date(Date.now() - 3_599_000) }
  await pool(domains, 8, async (domain) => { await pebble.setRenewalInfo(await storedLeaf(container, domain), past, 'https://ca.example.test/drill') })
  blobs.take()
  const told = Date.now()
  const drillMs = await allReplaced(fleet, domains, before, root, performance.now())
  const drillStore = blobs.take()
  const ordered = pebble.orderCount() - orders
  const replacing = pebble.replacementCount() - replacements
  const renewals = fleet.flatMap((i) => i.logs).filter((l) => l.msg === 'ordering certificate')
  const exempt = renewals.filter((l) => l.exempt === true).length
  // Until the first order the fleet only waits for its next look at the windows (a minute
  // here, Let's Encrypt's 6 hours in production): the work is from there to the last replacement served.
  const firstOrderMs = Math.min(...renewals.map((l) => Number(l.time))) - told
  const workMs = drillMs - firstOrderMs
  notes.push(`figure 7: drill of ${count} domains on ${fleet.length} instances: ${ordered} orders (${replacing} with replaces, ${exempt} exempt from the budget, ` +
    `${INSTANCES.map((name, i) => `${name} ${fleet[i].logs.filter((l) => l.msg === 'ordering certificate').length}`).join(', ')}); ` +
    `first order ${fmt.ms(firstOrderMs)} after Pebble was told, every instance serving every replacement ${fmt.ms(drillMs)} after; ` +
    `store meanwhile: ${describeCount(drillStore)}; baseline: ${count} acme-client orders back to back in ${fmt.ms(baselineMs)}`)

  for (const line of fleet.flatMap((i) => i.logs).filter((l) => Number(l.level) >= 50)) {
    notes.push(`figure 7: drill error on ${String(line.instance)}: ${String(line.msg)} ${String(line.domain)}: ${JSON.stringify(line.error)}`)
  }

  // 4. Idle, with ARI: every window checked once a minute for the fleet.
  await sleep(10_000)
  blobs.take()
  let checks = ca.checks()
  await sleep(idleMs)
  const idle = blobs.take()
  checks = ca.checks() - checks
  const perCheck = idle.total / checks
  const perDomainDay = perCheck * DAY_S / LETS_ENCRYPT_INTERVAL_S
  const formula = (7 + (fleet.length - 1)) * DAY_S / LETS_ENCRYPT_INTERVAL_S
  notes.push(`figure 7: idle fleet with ARI, ${fmt.int(idleMs / 1000)} s: ${checks} renewal-window checks at the CA ` +
    `(${(checks / count / (idleMs / RENEWAL_INFO_INTERVALS.min)).toFixed(2)} per domain and minute-long interval), ${describeCount(idle)}; ` +
    `${perCheck.toFixed(2)} operations per check, so ${perDomainDay.toFixed(1)} per domain per day at a 6-hour interval (README: ${formula})`)
  for (const instance of fleet.splice(0)) await instance.stop()

  // 5. The same fleet on a CA without ARI: the directory loses `renewalInfo`.
  const dirPath = new URL(ca.directoryUrl).pathname
  const withAri = ca.proxy.rewrite
  ca.proxy.rewrite = (req, answer) => {
    if (req.path !== dirPath) return withAri(req, answer)
    const { renewalInfo: _, ...directory } = JSON.parse(answer.body.toString('utf8')) as Record<string, unknown>
    return { body: JSON.stringify(directory) }
  }
  for (const name of INSTANCES) fleet.push(await start(`${name}-without-ari`, { connectionString: viaRelay }))
  await sleep(5_000)
  blobs.take()
  checks = ca.checks()
  await sleep(withoutAriMs)
  const plain = blobs.take()
  if (ca.checks() !== checks) throw new Error('figure 7: a fleet without renewalInfo in the directory asked for renewal windows')
  const plainPerDomainDay = plain.total / count * DAY_S / (withoutAriMs / 1000)
  notes.push(`figure 7: the same fleet on a directory without renewalInfo, ${fmt.int(withoutAriMs / 1000)} s idle: ${describeCount(plain)}`)
  for (const instance of fleet.splice(0)) await instance.stop()

  return [{
    figure: `7 ARI drill, ${count} domains, ${INSTANCES.length} instances: first order to all served`,
    ours: `${fmt.ms(workMs)} (${ordered} orders, ${replacing} replaces)`,
    baseline: `${fmt.ms(baselineMs)} (acme-client, back to back)`,
    ratio: workMs / baselineMs,
    target: `${count} orders, all replaces, served by all`,
    met: ordered === count && replacing === count && drillMs !== Infinity
  }, {
    figure: '7 store ops per idle domain per day, ARI every 6 h',
    ours: `${perDomainDay.toFixed(1)} (${perCheck.toFixed(2)} per check)`,
    baseline: `${plainPerDomainDay.toFixed(1)} without ARI`,
    target: `README's ${formula} for 3 instances`,
    met: perDomainDay <= formula * 1.05
  }]
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** `domains.length` orders placed one after another by one acme-client account, answering HTTP-01 itself. */
async function backToBack (directoryUrl: string, httpPort: number, domains: string[]): Promise<number> {
  const answers = new Map<string, string>()
  const server = await answerHttp01(httpPort, answers)
  try {
    const client = new acme.Client({ directoryUrl, accountKey: await acme.crypto.createPrivateEcdsaKey('P-256'), ...POLLING })
    const t0 = performance.now()
    await client.createAccount({ termsOfServiceAgreed: true, contact: ['mailto:ops@example.test'] })
    for (const domain of domains) await issue(client, `baseline-${domain}`, answers)
    return performance.now() - t0
  } finally {
    await new Promise((resolve) => server.close(resolve))
  }
}

/**
 * Milliseconds from `since` until every instance serves, for every domain, a
 * serial other than `before`'s (a pair that has switched is not asked again);
 * Infinity after 10 minutes.
 */
async function allReplaced (fleet: Instance[], domains: string[], before: Map<string, string>, root: string, since: number): Promise<number> {
  let pending = fleet.flatMap((instance) => domains.map((domain) => ({ instance, domain })))
  while (pending.length > 0) {
    if (performance.now() - since > 600_000) {
      log(`figure 7: ${pending.length} (instance, domain) pairs still served the old certificate after 10 minutes: ${pending.slice(0, 5).map((p) => `${p.instance.name} ${p.domain}`).join(', ')}`)
      return Infinity
    }
    const still: typeof pending = []
    await pool(pending, 16, async (pair) => {
      const served = await handshake(pair.instance.port, pair.domain, root)
      if (!served.authorized || served.serial === before.get(pair.domain)) still.push(pair)
    })
    pending = still
    if (pending.length > 0) await sleep(250)
  }
  return performance.now() - since
}
