/*
 * One cold start of figure 2, in a fresh process (run with --expose-gc) so
 * that its time and memory belong to it alone.
 *   plugin:   Fastify app with Fastify's defaults, register(autocert, { domains }) then
 *             ready(): prewarm loads every domain from the store, ready() waiting for it
 *             at most prewarmTimeout. Done when every domain is loaded (its
 *             'certificate loaded' log line), whether before or after ready().
 *   baseline: the same AzureBlobStore.get of the same blobs, `concurrency` at a
 *             time, bytes thrown away.
 */
import Fastify from 'fastify'
import autocert, { AzureBlobStore, SNICallback } from '../lib'
import { benchDomain, childMain, pool } from './common'

export interface ColdStartInput {
  mode: 'plugin' | 'baseline'
  connectionString: string
  container: string
  count: number
  concurrency: number
  directoryUrl: string
  /** The plugin's contextCacheSize (its default when omitted). */
  contextCacheSize?: number
}

export interface ColdStartOutput {
  elapsedMs: number
  /** The plugin: when ready() resolved (Fastify's default pluginTimeout bounds it). */
  readyMs?: number
  /** CPU time of this process (all threads) during the start. */
  cpuMs: number
  servable: number
  rssBefore: number
  peakRss: number
  rssAfter: number
  /** V8 heap used + external memory, after a full GC, before and after. */
  retainedBefore: number
  retainedAfter: number
}

const gc = (): void => {
  const collect = (globalThis as { gc?: () => void }).gc
  if (collect === undefined) throw new Error('run with --expose-gc')
  collect()
  collect()
}
const retained = (): number => {
  const m = process.memoryUsage()
  return m.heapUsed + m.external
}

async function run (input: ColdStartInput): Promise<ColdStartOutput> {
  const domains = Array.from({ length: input.count }, (_, i) => benchDomain(i))
  const store = new AzureBlobStore({ connectionString: input.connectionString, container: input.container })
  // Fastify's defaults: its pluginTimeout (10 s) bounds onReady, and prewarmTimeout keeps within it.
  const app = input.mode === 'plugin' ? Fastify({ https: { SNICallback } }) : undefined
  let loaded = 0
  let allLoaded!: () => void
  const done = new Promise<void>((resolve) => { allLoaded = resolve })
  const quiet = (): void => {}
  const logger = {
    debug: quiet,
    warn: quiet,
    error: quiet,
    info: (_obj: object, msg: string) => { if (msg === 'certificate loaded' && ++loaded === input.count) allLoaded() }
  }
  gc()
  const rssBefore = process.memoryUsage().rss
  const retainedBefore = retained()
  let servable = 0
  let readyMs: number | undefined
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  if (app !== undefined) {
    await app.register(autocert, {
      domains,
      store,
      termsOfServiceAgreed: true,
      directoryUrl: input.directoryUrl,
      concurrency: input.concurrency,
      logger,
      ...(input.contextCacheSize === undefined ? {} : { contextCacheSize: input.contextCacheSize })
    })
    await app.ready()
    readyMs = performance.now() - t0
    await done
    servable = app.autocert.status().filter((s) => s.serial !== undefined).length
  } else {
    await pool(domains, input.concurrency, async (name) => {
      if ((await store.get(name)) !== undefined) servable++
    })
  }
  const elapsedMs = performance.now() - t0
  const cpu = process.cpuUsage(cpu0)
  const peakRss = process.resourceUsage().maxRSS * 1024
  gc()
  const out = { elapsedMs, ...(readyMs === undefined ? {} : { readyMs }), cpuMs: (cpu.user + cpu.system) / 1000, servable, rssBefore, peakRss, rssAfter: process.memoryUsage().rss, retainedBefore, retainedAfter: retained() }
  await app?.close()
  return out
}

childMain(run)
