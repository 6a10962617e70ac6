/*
 * Figure 2: cold start with many domains already in Azurite. Time from
 * register until every domain is loaded (servable) against a loop that only
 * downloads the same blobs at the same concurrency, each in a fresh process;
 * the plugin's default concurrency (8) and 32. Memory, at the largest count: what
 * stays after a full GC, and the peak RSS growth during the start, per domain;
 * then once more with contextCacheSize a tenth of the count, so that most
 * domains keep only what their renewal needs, as past 10,000 domains by default.
 */
import { benchDomain, fmt, log, median, profileArgs, runChild, type Figure, type Row } from './common'
import type { ColdStartInput, ColdStartOutput } from './cold-start-child'
import { seedDomains } from './seed'

const CONCURRENCY = [8, 32]
// Never contacted: every certificate is live, and ready() does not order.
const UNUSED_DIRECTORY = 'https://127.0.0.1:9/directory'
const RSS_TARGET = 8 * 1024
// Per idle domain with most of them cooled (contextCacheSize a tenth of the domains).
const COOLED_TARGET = 1024
// The state of every domain, from the listing, against downloading every blob.
const KNOWN_TARGET = 0.2
// Fastify's default pluginTimeout (ms), which also bounds onReady hooks: ready() must come sooner.
const FASTIFY_PLUGIN_TIMEOUT = 10_000

export const coldStart: Figure = async (services, settings, notes) => {
  const counts = [...settings.domains].sort((a, b) => a - b)
  const rows: Row[] = []
  for (const count of counts) {
    const seeded = await seedDomains(services, count)
    // The download-only time at each concurrency, for the rows that compare with it.
    const downloads = new Map<number, number>()
    const run = (mode: ColdStartInput['mode'], concurrency: number, round: number | string, contextCacheSize?: number): Promise<ColdStartOutput> =>
      runChild<ColdStartOutput>('cold-start-child.ts', {
        mode, count, concurrency, connectionString: seeded.connectionString, container: seeded.container, directoryUrl: UNUSED_DIRECTORY, contextCacheSize
      } satisfies ColdStartInput, ['--expose-gc', ...profileArgs(settings, `fig2-${mode}-${count}-c${concurrency}-${round}`)])

    // A 10,000-domain start takes 20-40 s here (Azurite spends 1.5-2 ms of CPU per read): one round each.
    const rounds = settings.quick || count >= 5000 ? 1 : 2
    for (const concurrency of CONCURRENCY) {
      const plugin: ColdStartOutput[] = []
      const baseline: ColdStartOutput[] = []
      for (let round = 0; round < rounds; round++) {
        for (const mode of round % 2 === 0 ? (['plugin', 'baseline'] as const) : (['baseline', 'plugin'] as const)) {
          const out = await run(mode, concurrency, round)
          if (out.servable !== count) throw new Error(`figure 2 (${mode}, ${count}): ${out.servable} of ${count} domains servable (missing e.g. ${benchDomain(out.servable)})`)
          ;(mode === 'plugin' ? plugin : baseline).push(out)
          log(`figure 2 ${fmt.int(count)} domains, concurrency ${concurrency}, ${mode}: ${fmt.ms(out.elapsedMs)}`)
        }
      }
      const ours = median(plugin.map((o) => o.elapsedMs))
      const base = median(baseline.map((o) => o.elapsedMs))
      downloads.set(concurrency, base)
      rows.push({
        figure: `2 cold start ${fmt.int(count)} domains, concurrency ${concurrency}`,
        ours: fmt.ms(ours),
        baseline: fmt.ms(base),
        ratio: ours / base,
        target: '<= 1.3',
        met: ours / base <= 1.3
      })
      const perDomain = (runs: ColdStartOutput[], pick: (o: ColdStartOutput) => number): string => `${(median(runs.map(pick)) / count).toFixed(3)} ms`
      notes.push(`figure 2: ${fmt.int(count)} domains, concurrency ${concurrency}: plugin [${plugin.map((o) => fmt.ms(o.elapsedMs)).join(', ')}], ` +
        `download only [${baseline.map((o) => fmt.ms(o.elapsedMs)).join(', ')}]; per domain: plugin ${perDomain(plugin, (o) => o.elapsedMs)}, ` +
        `download only ${perDomain(baseline, (o) => o.elapsedMs)}; CPU of the process per domain: plugin ${perDomain(plugin, (o) => o.cpuMs)}, ` +
        `download only ${perDomain(baseline, (o) => o.cpuMs)}`)
      const ready = median(plugin.map((o) => o.readyMs as number))
      rows.push({
        // With Fastify's defaults: onReady waits at most prewarmTimeout (5 s), the rest loads after ready().
        // The baseline: the same start's time until every domain was loaded.
        figure: `2 ready() with ${fmt.int(count)} domains, concurrency ${concurrency}, against all loaded`,
        ours: fmt.ms(ready),
        baseline: fmt.ms(ours),
        ratio: ready / ours,
        target: `ready() < ${FASTIFY_PLUGIN_TIMEOUT / 1000} s`,
        met: ready < FASTIFY_PLUGIN_TIMEOUT
      })
      if (concurrency === CONCURRENCY[0] && count === counts[counts.length - 1]) {
        const kept = median(plugin.map((o) => (o.retainedAfter - o.retainedBefore) / count))
        const peak = median(plugin.map((o) => (o.peakRss - o.rssBefore) / count))
        const basePeak = median(baseline.map((o) => (o.peakRss - o.rssBefore) / count))
        const cpu = median(plugin.map((o) => o.cpuMs)) / count
        const baseCpu = median(baseline.map((o) => o.cpuMs)) / count
        rows.push({
          // Wall time follows whichever of this process and Azurite is short of CPU; this does not.
          figure: `2 CPU of the starting process per domain (${fmt.int(count)})`,
          ours: `${cpu.toFixed(2)} ms`,
          baseline: `${baseCpu.toFixed(2)} ms`,
          ratio: cpu / baseCpu,
          target: 'info'
        }, {
          figure: `2 memory kept per idle domain (${fmt.int(count)}, after GC)`,
          ours: fmt.kib(kept),
          baseline: '-',
          target: '<= 8 KiB',
          met: kept <= RSS_TARGET
        }, {
          figure: `2 peak RSS growth per domain (${fmt.int(count)})`,
          ours: fmt.kib(peak),
          baseline: fmt.kib(basePeak),
          target: '<= baseline + 8 KiB',
          met: peak - basePeak <= RSS_TARGET
        })
        notes.push(`figure 2: memory per domain at ${fmt.int(count)}: V8 heap + external kept after a full GC ${fmt.kib(kept)}; ` +
          `peak RSS growth during the start ${fmt.kib(peak)} (download-only loop: ${fmt.kib(basePeak)}, mostly garbage the SDK's ` +
          `responses leave before V8 collects it); RSS after GC ${fmt.kib(median(plugin.map((o) => (o.rssAfter - o.rssBefore) / count)))}`)
      }
    }
    if (count === counts[counts.length - 1]) {
      const cache = Math.max(1, Math.floor(count / 10))
      const out = await run('plugin', CONCURRENCY[0], 'cooled', cache)
      if (out.servable !== count) throw new Error(`figure 2 (contextCacheSize ${cache}, ${count}): ${out.servable} of ${count} domains known`)
      const kept = (out.retainedAfter - out.retainedBefore) / count
      log(`figure 2 ${fmt.int(count)} domains, contextCacheSize ${fmt.int(cache)}: ${fmt.ms(out.elapsedMs)}, ${fmt.kib(kept)} kept per domain`)
      rows.push({
        // The state from one listing of the blobs' metadata, only the cache's share read whole: against downloading every blob.
        figure: `2 state of every domain known (${fmt.int(count)}, contextCacheSize ${fmt.int(cache)}), against the download at concurrency ${CONCURRENCY[0]}`,
        ours: fmt.ms(out.elapsedMs),
        baseline: fmt.ms(downloads.get(CONCURRENCY[0]) as number),
        ratio: out.elapsedMs / (downloads.get(CONCURRENCY[0]) as number),
        target: `<= ${KNOWN_TARGET}`,
        met: out.elapsedMs / (downloads.get(CONCURRENCY[0]) as number) <= KNOWN_TARGET
      }, {
        figure: `2 memory kept per idle domain (${fmt.int(count)}, contextCacheSize ${fmt.int(cache)}, after GC)`,
        ours: fmt.kib(kept),
        baseline: '-',
        target: `<= ${fmt.kib(COOLED_TARGET)}`,
        met: kept <= COOLED_TARGET
      })
      notes.push(`figure 2: with contextCacheSize ${fmt.int(cache)} (${fmt.int(count - cache)} of ${fmt.int(count)} domains cooled to their serial and validity): ` +
        `${fmt.kib(kept)} kept per domain after a full GC; peak RSS growth ${fmt.kib((out.peakRss - out.rssBefore) / count)} per domain; the start took ${fmt.ms(out.elapsedMs)}`)
    }
  }
  return rows
}
