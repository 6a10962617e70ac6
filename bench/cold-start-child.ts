/*
 * One cold start of figure 2, in a fresh process (run with --expose-gc) so
 * that its time and memory belong to it alone.
 *   plugin:   Fastify app, register(autocert, { domains }) then ready(): prewarm
 *             loads every domain from the store. Done when status() has a serial for all.
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
}

export interface ColdStartOutput {
  elapsedMs: number
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
  // Fastify bounds onReady hooks (prewarm) by pluginTimeout, 10 s by default: lifted
  // here so that a slow start is measured rather than aborted (the figure flags it).
  const app = input.mode === 'plugin' ? Fastify({ https: { SNICallback }, pluginTimeout: 0 }) : undefined
  gc()
  const rssBefore = process.memoryUsage().rss
  const retainedBefore = retained()
  let servable = 0
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  if (app !== undefined) {
    await app.register(autocert, {
      domains, store, termsOfServiceAgreed: true, directoryUrl: input.directoryUrl, concurrency: input.concurrency
    })
    await app.ready()
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
  const out = { elapsedMs, cpuMs: (cpu.user + cpu.system) / 1000, servable, rssBefore, peakRss, rssAfter: process.memoryUsage().rss, retainedBefore, retainedAfter: retained() }
  await app?.close()
  return out
}

childMain(run)
