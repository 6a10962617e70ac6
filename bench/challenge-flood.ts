/*
 * Figure 6: a challenge flood. The server (test/support/flood-target.ts, its
 * own process) is the plugin on an HTTPS port with its certificate from Pebble
 * and its `http01` listener, on an AzureBlobStore whose reads it counts. The
 * attacker (flood-client.ts, its own process) opens connections that each
 * pipeline thousands of GET /.well-known/acme-challenge/<random token>, and
 * opens them again when the server cuts them off, for the whole window:
 * 2 connections x 10,000 requests, then 20 x 500. Meanwhile this process makes
 * legitimate full TLS handshakes with the server, one after another, each
 * verified against Pebble's root. The baseline is the same window on the same
 * server with no flood. Measured per window: the p99 handshake time, the
 * server's peak RSS (VmHWM, reset at the start of the window) and its store
 * reads of challenge answers. Every flood also runs once on another path of
 * the same listener (its redirect to https, no lookup): what the same requests
 * cost the server when they never reach the plugin, the floor a challenge
 * flood is held to.
 */
import { CHALLENGE_LOOKUP_LIMITS } from '../lib/acme/challenge-lookups'
import { startFloodTarget, type FloodResult, type FloodTarget } from '../test/support/flood'
import type { FloodTargetStats } from '../test/support/flood-target'
import { handshake } from '../test/support/tls'
import { fmt, log, profileArgs, quantile, startWorker, type Figure, type Row } from './common'
import type { FloodClientSetup, FloodRequest } from './flood-client'

const NAME = 'flood.bench.test'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const mb = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(0)} MiB`

interface Window {
  /** Handshake times (ms) of the window, and how many failed. */
  times: number[]
  failed: number
  before: FloodTargetStats
  after: FloodTargetStats
  flood?: FloodResult
}

export const challengeFlood: Figure = async (services, settings, notes) => {
  const { pebble, httpPort } = await services.pebble()
  // Its own Azurite: a read's time is part of what a lookup holds, and figure 2 leaves 11,000 blobs in the shared one.
  const azurite = await services.freshAzurite()
  const root = await pebble.root()
  const windowMs = settings.quick ? 2000 : 10_000
  const target = await startFloodTarget(pebble, { connectionString: azurite.connectionString, container: 'bench-flood', domains: [NAME], httpPort })
  const attacker = startWorker<FloodRequest, FloodResult>('flood-client.ts', { port: httpPort, host: NAME } satisfies FloodClientSetup, profileArgs(settings, 'fig6-attacker'))
  try {
    for (let i = 0; (await target.stats()).served === 0; i++) {
      if (i > 600) throw new Error('figure 6: the server got no certificate within 60 s')
      await sleep(100)
    }
    // Warm-up (JIT, the certificate's SecureContext), not counted.
    for (let i = 0; i < 20; i++) await handshake(target.port, NAME, root)

    const measure = async (flood?: Omit<FloodRequest, 'durationMs'>): Promise<Window> => {
      log(`figure 6: ${flood === undefined ? 'no flood' : `${flood.prefix === undefined ? 'challenge' : 'redirect'} flood ${flood.connections} x ${flood.requests}`} for ${windowMs / 1000} s`)
      await quiet(target)
      const before = await target.stats({ resetPeak: true })
      const over = flood === undefined ? sleep(windowMs).then(() => undefined) : attacker.ask({ ...flood, durationMs: windowMs })
      const state = { over: false }
      const end = (): void => { state.over = true }
      over.then(end, end)
      const times: number[] = []
      let failed = 0
      while (!state.over) {
        const t0 = performance.now()
        const served = await handshake(target.port, NAME, root).catch(() => undefined)
        if (served?.authorized === true && served.subject === NAME) times.push(performance.now() - t0)
        else failed++
      }
      const result = await over
      return { times, failed, before, after: await target.stats(), ...(result === undefined ? {} : { flood: result }) }
    }

    const baseline = await measure()
    const rows: Row[] = []
    for (const flood of [{ connections: 2, requests: 10_000 }, { connections: 20, requests: 500 }]) {
      const shape = `${flood.connections} x ${flood.requests.toLocaleString('en-US')}`
      const during = await measure(flood)
      const redirects = await measure({ ...flood, prefix: '/flood/' })
      rows.push(...figureRows(shape, during, baseline, redirects))
      for (const [what, w] of [['challenge', during], ['redirect', redirects]] as const) {
        const f = w.flood as FloodResult
        notes.push(`figure 6 (${what} flood ${shape}): ${fmt.int(f.opened)} connections, ${fmt.int(f.sent)} requests written, answers ${JSON.stringify(f.answers)}, ` +
          `${f.cut} connections cut off by the server, ${f.stopped} open at the end; ${describe(w)}`)
      }
    }
    notes.push(`figure 6 (no flood): ${describe(baseline)}`)
    notes.push(`figure 6: limits ${JSON.stringify(CHALLENGE_LOOKUP_LIMITS)}; windows of ${windowMs / 1000} s; handshakes one after another, each verified against Pebble's root`)
    return rows
  } finally {
    await attacker.close()
    await target.stop()
  }
}

/** p99 of the handshakes, peak RSS and store reads of one flood, against the window with none (and the same flood of redirects). */
function figureRows (shape: string, during: Window, baseline: Window, redirects: Window): Row[] {
  const p99 = quantile(during.times, 0.99)
  const baseP99 = quantile(baseline.times, 0.99)
  const floorP99 = quantile(redirects.times, 0.99)
  const reads = during.after.challengeReads - during.before.challengeReads
  const flood = during.flood as FloodResult
  const perConnection = reads / Math.max(1, flood.opened)
  return [{
    figure: `6 handshake p99 during a challenge flood (${shape})`,
    ours: `${fmt.ms(p99)}${during.failed > 0 ? `, ${during.failed} failed` : ''}`,
    baseline: `${fmt.ms(baseP99)} (no flood)`,
    ratio: p99 / baseP99,
    target: `<= 1.25 x redirect flood's (${fmt.ms(floorP99)}), none failed`,
    met: p99 <= 1.25 * floorP99 && during.failed === 0
  }, {
    figure: `6 server peak RSS during the flood (${shape})`,
    ours: `${mb(during.after.peakRss)} (+${mb(during.after.peakRss - during.before.rss)})`,
    baseline: `${mb(baseline.after.peakRss)} (+${mb(baseline.after.peakRss - baseline.before.rss)})`,
    ratio: during.after.peakRss / baseline.after.peakRss,
    target: '<= 1.5',
    met: during.after.peakRss / baseline.after.peakRss <= 1.5
  }, {
    figure: `6 store reads during the flood (${shape})`,
    ours: `${fmt.int(reads)} for ${fmt.int(flood.sent)} requests, ${perConnection.toFixed(1)} per connection`,
    baseline: `${fmt.int(baseline.after.challengeReads - baseline.before.challengeReads)} (no flood)`,
    target: `<= ${CHALLENGE_LOOKUP_LIMITS.perConnection * 2} per connection`,
    met: perConnection <= CHALLENGE_LOOKUP_LIMITS.perConnection * 2
  }]
}

function describe (w: Window): string {
  const t = w.times
  return `${t.length} handshakes (${w.failed} failed), median ${fmt.ms(quantile(t, 0.5))}, p99 ${fmt.ms(quantile(t, 0.99))}, max ${fmt.ms(Math.max(...t))}; ` +
    `server RSS ${mb(w.before.rss)} at the start, peak ${mb(w.after.peakRss)}, heap kept after GC ${mb(w.before.retained)} -> ${mb(w.after.retained)}; ` +
    `${fmt.int(w.after.challengeReads - w.before.challengeReads)} challenge reads`
}

/** Waits until the server makes no more store reads (what a flood left behind has ended), two minutes at most. */
async function quiet (target: FloodTarget): Promise<void> {
  let last = (await target.stats()).reads
  for (let i = 0; i < 240; i++) {
    await sleep(500)
    const now = (await target.stats()).reads
    if (now === last) return
    last = now
  }
}
