/*
 * Figure 4: Blob Storage operations spent on renewal for a big idle fleet.
 * An HTTPS app lists every seeded domain (certificates valid for 90 days,
 * nothing due); its AzureBlobStore talks to Azurite through a counting HTTP
 * relay (blob-counter.ts). After start-up, two windows are counted: one idle, one during which
 * clients make full handshakes for many different names (each builds that
 * name's SecureContext). Counts are extrapolated to an hour.
 */
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import autocert, { AzureBlobStore, SNICallback } from '../lib'
import { handshake } from '../test/support/tls'
import { describeCount as describe, startBlobCounter, type BlobCount } from './blob-counter'
import { benchDomain, fmt, log, pool, type Figure, type Row } from './common'
import { seedDomains } from './seed'

const UNUSED_DIRECTORY = 'https://127.0.0.1:9/directory'

export const scanCost: Figure = async (services, settings, notes) => {
  const count = Math.max(...settings.domains)
  const seeded = await seedDomains(services, count)
  const azurite = await services.azurite()
  const windowMs = settings.quick ? 2000 : 5000
  const handshakes = Math.min(count, settings.quick ? 200 : 1000)

  const blobs = await startBlobCounter(azurite, seeded.container)
  // pluginTimeout bounds onReady hooks, and loading 10,000 domains takes longer than its default 10 s.
  const app = Fastify({ https: { SNICallback }, pluginTimeout: 0 })
  try {
    return await measure()
  } finally {
    await app.close()
    await blobs.close()
  }

  async function measure (): Promise<Row[]> {
    const store = new AzureBlobStore({
      accountName: azurite.accountName,
      accountKey: azurite.accountKey,
      endpoint: blobs.endpoint,
      container: seeded.container
    })
    const domains = Array.from({ length: count }, (_, i) => benchDomain(i))
    await app.register(autocert, { domains, store, termsOfServiceAgreed: true, directoryUrl: UNUSED_DIRECTORY, concurrency: 32 })
    app.get('/', async () => 'hello')
    await app.listen({ port: 0, host: '127.0.0.1' })
    const port = (app.server.address() as AddressInfo).port
    const startup = blobs.take()
    if (app.autocert.status().some((s) => s.serial === undefined)) throw new Error('figure 4: some domains were not loaded')
    log(`figure 4: ${fmt.int(count)} domains loaded with ${fmt.int(startup.total)} blob operations`)

    await sleep(windowMs)
    const idle = blobs.take()

    const t0 = performance.now()
    await pool(domains.slice(0, handshakes), 16, async (name) => {
      const served = await handshake(port, name, seeded.ca.cert)
      if (!served.authorized) throw new Error(`figure 4: ${name} not verified`)
    })
    const handshakeMs = performance.now() - t0
    await sleep(windowMs - handshakeMs)
    const busyMs = Math.max(windowMs, handshakeMs)
    const busy = blobs.take()

    const perHour = (c: BlobCount, ms: number): number => c.total * 3_600_000 / ms
    notes.push(`figure 4: start-up of ${fmt.int(count)} domains: ${describe(startup)}; idle ${windowMs} ms: ${describe(idle)}; ` +
      `${fmt.int(handshakes)} handshakes over ${fmt.int(handshakes)} names in ${fmt.ms(handshakeMs)}: ${describe(busy)}`)
    return [{
      figure: `4 blob ops/hour, ${fmt.int(count)} idle domains, nothing due`,
      ours: `${fmt.int(perHour(idle, windowMs))}/h (${idle.certificateReads} cert reads)`,
      baseline: '-',
      target: '0 per-domain reads',
      met: idle.certificateReads === 0
    }, {
      figure: `4 blob ops/hour, same, ${fmt.int(handshakes)} handshakes`,
      ours: `${fmt.int(perHour(busy, busyMs))}/h (${busy.certificateReads} cert reads)`,
      baseline: `${fmt.int(perHour(idle, windowMs))}/h idle`,
      target: 'independent of handshakes',
      met: busy.certificateReads === 0 && perHour(busy, busyMs) <= perHour(idle, windowMs)
    }]
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))
