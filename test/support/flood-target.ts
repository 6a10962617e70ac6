/*
 * The server a flood is aimed at, as its own process (started by flood.ts): an
 * HTTPS Fastify app with the plugin, its `http01` listener on Pebble's
 * validation port, an AzureBlobStore whose reads are counted; with `onDemand`,
 * every name is allowed. Reads its config from FLOOD_TARGET; logs JSON lines on
 * stdout; answers each stdin line (`stats`, `reset-peak`) with one
 * `{ "stats": ... }` line.
 */
import { readFileSync, writeFileSync } from 'node:fs'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { createInterface } from 'node:readline'
import Fastify, { LogController } from 'fastify'
import autocert, { AzureBlobStore, SNICallback, type CertStore } from '../../lib'

export interface FloodTargetConfig {
  directoryUrl: string
  connectionString: string
  container: string
  domains: string[]
  /** Where it answers HTTP-01 (Pebble's validation port). */
  httpPort: number
  /** Certificates on demand for any name (allow() says yes to all), this many names kept in memory. */
  onDemand?: { cacheSize: number }
  /** The plugin's maxOrdersPerHour (its default when unset). */
  maxOrdersPerHour?: number
}

/** Event-loop delay since the last `reset-peak`, in ms, as monitorEventLoopDelay records it (an idle loop reads its 10 ms resolution). */
export interface LoopDelay {
  p50: number
  p99: number
  max: number
  /** Samples recorded. */
  count: number
}

export interface FloodTargetStats {
  /** store.get calls so far. */
  reads: number
  /** Those of HTTP-01 answers (`<token>+http-01`). */
  challengeReads: number
  /** Current and peak resident set size (VmRSS, VmHWM), in bytes. */
  rss: number
  peakRss: number
  /** V8 heap in use, external memory included, after a full collection (the process runs with --expose-gc), in bytes. */
  retained: number
  /** Domains with a certificate being served. */
  served: number
  /** Read before the collection that `retained` makes, so that its pause is not in it. */
  loopDelay: LoopDelay
  /** CPU time of this process so far (user + system, all threads), in ms. */
  cpuMs: number
}

/** What the heap holds once garbage is collected. */
function retained (): number {
  const gc = (globalThis as { gc?: () => void }).gc
  if (gc === undefined) throw new Error('run with --expose-gc')
  gc()
  gc()
  const m = process.memoryUsage()
  return m.heapUsed + m.external
}

/** VmRSS and VmHWM of this process, in bytes. */
function memory (): { rss: number, peakRss: number } {
  const status = readFileSync('/proc/self/status', 'utf8')
  const kib = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1]) * 1024
  return { rss: kib('VmRSS'), peakRss: kib('VmHWM') }
}

async function main (): Promise<void> {
  const config = JSON.parse(process.env.FLOOD_TARGET ?? '') as FloodTargetConfig
  const inner = new AzureBlobStore({ connectionString: config.connectionString, container: config.container })
  const counts = { reads: 0, challengeReads: 0 }
  // A spy, not a fake: every call reaches Azurite.
  const store: CertStore = {
    get: async (key) => {
      counts.reads++
      if (key.endsWith('+http-01')) counts.challengeReads++
      return await inner.get(key)
    },
    put: (key, value) => inner.put(key, value),
    delete: (key) => inner.delete(key),
    list: (prefix) => inner.list(prefix),
    lock: (key, signal, options) => inner.lock(key, signal, options),
    close: () => inner.close()
  }
  // Request lines are left out: a flood would be mostly log.
  const app = Fastify({ https: { SNICallback }, logger: { level: 'info' }, logController: new LogController({ disableRequestLogging: true }) })
  await app.register(autocert, {
    domains: config.domains,
    directoryUrl: config.directoryUrl,
    termsOfServiceAgreed: true,
    store,
    http01: { port: config.httpPort, host: '127.0.0.1' },
    ...(config.onDemand === undefined ? {} : { onDemand: { allow: () => true, cacheSize: config.onDemand.cacheSize } }),
    ...(config.maxOrdersPerHour === undefined ? {} : { maxOrdersPerHour: config.maxOrdersPerHour })
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const loop = monitorEventLoopDelay({ resolution: 10 })
  loop.enable()
  const stats = (): FloodTargetStats => {
    const ms = (ns: number): number => ns / 1e6
    const loopDelay = { p50: ms(loop.percentile(50)), p99: ms(loop.percentile(99)), max: ms(loop.max), count: loop.count }
    const cpu = process.cpuUsage()
    return { ...counts, ...memory(), retained: retained(), served: app.autocert.status().filter((s) => s.serial !== undefined).length, loopDelay, cpuMs: (cpu.user + cpu.system) / 1000 }
  }
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => { void app.close().then(() => process.exit(0)) })
  }
  createInterface({ input: process.stdin }).on('line', (line) => {
    // Linux: writing 5 to clear_refs sets VmHWM to the current RSS.
    if (line === 'reset-peak') writeFileSync('/proc/self/clear_refs', '5')
    const now = stats()
    // After stats()'s collection, whose pause is not the flood's.
    if (line === 'reset-peak') loop.reset()
    process.stdout.write(`${JSON.stringify({ stats: now })}\n`)
  })
  app.log.info({ port: (app.server.address() as { port: number }).port }, 'flood target listening')
}

void main()
