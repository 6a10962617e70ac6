/*
 * Figure 4: Blob Storage operations spent on renewal for a big idle fleet.
 * An HTTPS app lists every seeded domain (certificates valid for 90 days,
 * nothing due); its AzureBlobStore talks to Azurite through a counting HTTP
 * proxy. After start-up, two windows are counted: one idle, one during which
 * clients make full handshakes for many different names (each builds that
 * name's SecureContext). Counts are extrapolated to an hour.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify from 'fastify'
import autocert, { AzureBlobStore, SNICallback } from '../lib'
import { handshake } from '../test/support/tls'
import { benchDomain, fmt, log, pool, type Figure, type Row } from './common'
import { seedDomains } from './seed'

const UNUSED_DIRECTORY = 'https://127.0.0.1:9/directory'

interface Counter {
  total: number
  /** Reads of a certificate blob (GET of `<container>/<domain>`). */
  domainReads: number
  byKind: Map<string, number>
}

export const scanCost: Figure = async (services, settings, notes) => {
  const count = Math.max(...settings.domains)
  const seeded = await seedDomains(services, count)
  const azurite = await services.azurite()
  const windowMs = settings.quick ? 2000 : 5000
  const handshakes = Math.min(count, settings.quick ? 200 : 1000)

  const proxy = await countingProxy(azurite.port, seeded.container)
  // pluginTimeout bounds onReady hooks, and loading 10,000 domains takes longer than its default 10 s.
  const app = Fastify({ https: { SNICallback }, pluginTimeout: 0 })
  try {
    return await measure()
  } finally {
    await app.close()
    await proxy.close()
  }

  async function measure (): Promise<Row[]> {
    const store = new AzureBlobStore({
      accountName: azurite.accountName,
      accountKey: azurite.accountKey,
      endpoint: `http://127.0.0.1:${proxy.port}/${azurite.accountName}`,
      container: seeded.container
    })
    const domains = Array.from({ length: count }, (_, i) => benchDomain(i))
    await app.register(autocert, { domains, store, termsOfServiceAgreed: true, directoryUrl: UNUSED_DIRECTORY, concurrency: 32 })
    app.get('/', async () => 'hello')
    await app.listen({ port: 0, host: '127.0.0.1' })
    const port = (app.server.address() as AddressInfo).port
    const startup = proxy.take()
    if (app.autocert.status().some((s) => s.serial === undefined)) throw new Error('figure 4: some domains were not loaded')
    log(`figure 4: ${fmt.int(count)} domains loaded with ${fmt.int(startup.total)} blob operations`)

    await sleep(windowMs)
    const idle = proxy.take()

    const t0 = performance.now()
    await pool(domains.slice(0, handshakes), 16, async (name) => {
      const served = await handshake(port, name, seeded.ca.cert)
      if (!served.authorized) throw new Error(`figure 4: ${name} not verified`)
    })
    const handshakeMs = performance.now() - t0
    await sleep(windowMs - handshakeMs)
    const busyMs = Math.max(windowMs, handshakeMs)
    const busy = proxy.take()

    const perHour = (c: Counter, ms: number): number => c.total * 3_600_000 / ms
    notes.push(`figure 4: start-up of ${fmt.int(count)} domains: ${describe(startup)}; idle ${windowMs} ms: ${describe(idle)}; ` +
      `${fmt.int(handshakes)} handshakes over ${fmt.int(handshakes)} names in ${fmt.ms(handshakeMs)}: ${describe(busy)}`)
    return [{
      figure: `4 blob ops/hour, ${fmt.int(count)} idle domains, nothing due`,
      ours: `${fmt.int(perHour(idle, windowMs))}/h (${idle.domainReads} cert reads)`,
      baseline: '-',
      target: '0 per-domain reads',
      met: idle.domainReads === 0
    }, {
      figure: `4 blob ops/hour, same, ${fmt.int(handshakes)} handshakes`,
      ours: `${fmt.int(perHour(busy, busyMs))}/h (${busy.domainReads} cert reads)`,
      baseline: `${fmt.int(perHour(idle, windowMs))}/h idle`,
      target: 'independent of handshakes',
      met: busy.domainReads === 0 && perHour(busy, busyMs) <= perHour(idle, windowMs)
    }]
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)))

function describe (c: Counter): string {
  if (c.total === 0) return '0 operations'
  return `${fmt.int(c.total)} operations (${[...c.byKind].map(([k, n]) => `${k} ${fmt.int(n)}`).join(', ')})`
}

/** Forwards everything to Azurite and counts the requests by kind. */
async function countingProxy (azuritePort: number, container: string): Promise<{ port: number, take: () => Counter, close: () => Promise<void> }> {
  const fresh = (): Counter => ({ total: 0, domainReads: 0, byKind: new Map() })
  let counter = fresh()
  const agent = new http.Agent({ keepAlive: true })
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://proxy')
    const [, , blobContainer, ...blob] = url.pathname.split('/')
    const comp = url.searchParams.get('comp') ?? url.searchParams.get('restype') ?? ''
    const kind = `${req.method ?? '?'}${comp === '' ? '' : ` ${comp}`}`
    counter.total++
    counter.byKind.set(kind, (counter.byKind.get(kind) ?? 0) + 1)
    if (req.method === 'GET' && comp === '' && blobContainer === container && blob.length === 1) counter.domainReads++
    const upstream = http.request({ host: '127.0.0.1', port: azuritePort, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    upstream.once('error', (err) => res.destroy(err))
    req.pipe(upstream)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: (server.address() as AddressInfo).port,
    take: () => {
      const c = counter
      counter = fresh()
      return c
    },
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
      agent.destroy()
    }
  }
}
