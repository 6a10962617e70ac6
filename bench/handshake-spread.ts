/*
 * Figure 9: full TLS handshakes with the names spread over a big fleet, as a
 * population of clients would. One plugin server lists `count` names (100,000;
 * BENCH_SPREAD_NAMES chooses) whose certificates are in a counting MemoryStore,
 * with contextCacheSize 10,000 (the default); the baseline is figure 1's: the
 * same app with one certificate passed statically, whatever the name. The
 * client (figure 1's, its own process) picks each connection's name at random.
 * Two spreads: over the names the cache holds (after a warm-up that visits each
 * once), and over all of them. The hit rate is the share of handshakes served
 * without a store read: a certificate read during a slice is a miss (a name
 * whose certificate was cooled, read whole again). The server's background work
 * reads some too (each certificate's first renewal-window check, which needs
 * its chain to ask the CA, here unreachable): its reads during the static
 * server's slices, as long and interleaved, are taken off. Every handshake a
 * slice starts counts, those it lets finish after its end included.
 */
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import autocert, { MemoryStore, SNICallback } from '../lib'
import { certificateMetadata, decodeBundle, encodeBundle } from '../lib/certificate'
import { createCa } from '../test/support/ca'
import { benchDomain, fmt, log, median, profileArgs, startWorker, type Figure, type Row } from './common'
import type { ClientSetup, SliceRequest, SliceResult } from './handshake-client'

const UNUSED_DIRECTORY = 'https://127.0.0.1:9/directory'
const HTTPS = { sessionTimeout: 300 }
const CONCURRENCY = 32
const SLICE_MS = 500
const TARGET = 0.97

export const handshakeSpread: Figure = async (_services, settings, notes) => {
  const count = settings.spreadNames
  if (count < 10) throw new TypeError(`BENCH_SPREAD_NAMES: at least 10 names (the cache holds a tenth), got ${count}`)
  const cache = Math.min(10_000, Math.floor(count / 10))
  const slices = settings.quick ? 2 : 12

  const ca = createCa()
  const reads = { count: 0 }
  const store = new MemoryStore()
  const get = store.get.bind(store)
  store.get = async (key, options) => { if (key.endsWith('.bench.test')) reads.count++; return await get(key, options) }
  const t0 = performance.now()
  let first: { key: string, chain: string } | undefined
  for (let i = 0; i < count; i++) {
    const name = benchDomain(i)
    const issued = ca.issue(name)
    first ??= issued
    const bundle = encodeBundle(issued)
    await store.put(name, bundle, { metadata: certificateMetadata(decodeBundle(name, name, bundle)) })
  }
  log(`figure 9: ${fmt.int(count)} certificates made in ${fmt.ms(performance.now() - t0)}`)

  const opened: FastifyInstance[] = []
  const client = startWorker<SliceRequest, SliceResult>('handshake-client.ts',
    { servername: benchDomain(0), concurrency: CONCURRENCY } satisfies ClientSetup, profileArgs(settings, 'fig9-client'))
  try {
    const build = async (https: object, domains: string[]): Promise<{ app: FastifyInstance, port: number }> => {
      const app = Fastify({ https: { ...HTTPS, ...https } })
      opened.push(app)
      await app.register(autocert, { domains, store, termsOfServiceAgreed: true, directoryUrl: UNUSED_DIRECTORY, contextCacheSize: cache, logger: quiet })
      app.get('/', async () => 'hello')
      await app.listen({ port: 0, host: '127.0.0.1' })
      return { app, port: (app.server.address() as AddressInfo).port }
    }
    const t1 = performance.now()
    const plugin = await build({ SNICallback }, Array.from({ length: count }, (_, i) => benchDomain(i)))
    const startReads = reads.count
    log(`figure 9: the plugin's server listens after ${fmt.ms(performance.now() - t1)}, ${fmt.int(startReads)} certificates read whole`)
    const stat = await build({ key: first?.key, cert: first?.chain }, [benchDomain(0)])

    const run = async (port: number, names: number, durationMs: number, order?: SliceRequest['order'], from?: number): Promise<SliceResult & { misses: number }> => {
      const before = reads.count
      const out = await client.ask({ port, durationMs, names, order, from })
      if (out.errors > 0) throw new Error(`figure 9: ${out.errors} failed requests, first: ${String(out.firstError)}`)
      return { ...out, misses: reads.count - before }
    }
    const measure = async (names: number): Promise<{ ours: number, base: number, ratio: number, hit: number, rates: number[] }> => {
      const ours: number[] = []
      const base: number[] = []
      let handshakes = 0
      let misses = 0
      let background = 0
      for (let i = 0; i < slices * 2; i++) {
        const isPlugin = [0, 3].includes(i % 4)
        const out = await run(isPlugin ? plugin.port : stat.port, names, SLICE_MS)
        ;(isPlugin ? ours : base).push(out.count * 1000 / SLICE_MS)
        if (isPlugin) {
          handshakes += out.started
          misses += out.misses
        } else {
          background += out.misses
        }
      }
      const pairs = ours.map((r, i) => r / base[i])
      return { ours: median(ours), base: median(base), ratio: median(pairs), hit: 1 - Math.max(0, misses - background) / Math.max(1, handshakes), rates: pairs }
    }

    // Warm-up: every name the cache holds visited once (its TLS context built), in turn, and the static server's JIT.
    for (let visited = 0; visited < cache;) visited += (await run(plugin.port, cache, 2000, 'sequential', visited)).started
    await run(stat.port, cache, 500)
    const inCache = await measure(cache)
    log(`figure 9: over the ${fmt.int(cache)} names in the cache: ratio ${inCache.ratio.toFixed(3)}, hit rate ${inCache.hit.toFixed(3)}`)
    const all = await measure(count)
    log(`figure 9: over all ${fmt.int(count)} names: ratio ${all.ratio.toFixed(3)}, hit rate ${all.hit.toFixed(3)}`)
    notes.push(`figure 9: ${fmt.int(count)} listed names, contextCacheSize ${fmt.int(cache)}; start-up read ${fmt.int(startReads)} certificates whole; ` +
      `${slices} slices of ${SLICE_MS} ms per server and spread (A B B A ...), ${CONCURRENCY} connections in flight; ` +
      `ratios of adjacent slices, in the cache [${inCache.rates.map((r) => r.toFixed(2)).join(', ')}], over all [${all.rates.map((r) => r.toFixed(2)).join(', ')}]`)
    const rows: Row[] = [{
      figure: `9 handshakes/s, names at random over the ${fmt.int(cache)} in the cache (of ${fmt.int(count)})`,
      ours: `${fmt.int(inCache.ours)}/s, hit rate ${inCache.hit.toFixed(3)}`,
      baseline: `${fmt.int(inCache.base)}/s (static certificate)`,
      ratio: inCache.ratio,
      target: `>= ${TARGET}`,
      met: inCache.ratio >= TARGET
    }, {
      figure: `9 handshakes/s, names at random over all ${fmt.int(count)}`,
      ours: `${fmt.int(all.ours)}/s, hit rate ${all.hit.toFixed(3)}`,
      baseline: `${fmt.int(all.base)}/s (static certificate)`,
      ratio: all.ratio,
      target: 'info'
    }]
    return rows
  } finally {
    await client.close()
    await Promise.all(opened.map((app) => app.close()))
  }
}

const silent = (): void => {}
const quiet = { debug: silent, info: silent, warn: silent, error: silent }
