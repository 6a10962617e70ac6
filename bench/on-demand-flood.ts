/*
 * Figure 8: a flood of allowed on-demand names. The server
 * (test/support/flood-target.ts, its own process) is the plugin with
 * `domains: []`, `onDemand: { allow: () => true, cacheSize }` and an order
 * budget of BUDGET an hour, on an Azurite of this figure's own whose requests
 * pass a counting relay (blob-counter.ts). The client (on-demand-client.ts,
 * its own process) sends one ClientHello per distinct name, CONCURRENCY in
 * flight: the first tenth of the names, then the rest. Reported from inside
 * the server: its event-loop delay (monitorEventLoopDelay) during each part,
 * its memory kept after a full GC once each part is over and its peak RSS
 * during each; from Pebble, the orders placed. The baseline is the same server
 * with ClientHellos for the one name it serves from memory, at the flood's
 * rate (its event-loop delay) and as fast as it answers (its rate).
 */
import type { FloodTargetStats } from '../test/support/flood-target'
import { startFloodTarget } from '../test/support/flood'
import { handshake } from '../test/support/tls'
import { describeCount, startBlobCounter, type BlobCount, type BlobCounter } from './blob-counter'
import { fmt, log, profileArgs, startWorker, type Figure, type Row } from './common'
import type { HelloClientSetup, HelloRequest, HelloResult } from './on-demand-client'

const CONTAINER = 'bench-on-demand'
/** maxOrdersPerHour: the orders the whole flood may cost. */
const BUDGET = 10
const CONCURRENCY = 64
/** Event-loop delay p99 the flood may cause, at most (ms). */
const LOOP_TARGET = 50
/** Memory after all the names against after the first tenth, at most: what is kept is bounded by cacheSize, not by the names seen. */
const GROWTH_TARGET = 1.1
/** The name the baseline's ClientHellos ask for, ordered before the flood (one of the budget's orders). */
const SERVED = 'served.on-demand.bench.test'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const mb = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`
const loopText = (s: FloodTargetStats): string => `p99 ${fmt.ms(s.loopDelay.p99)}, max ${fmt.ms(s.loopDelay.max)}`

/** One part of the flood (or of the baseline): the client's answers, the server's stats at its end and once quiet, its store operations. */
interface Part {
  hello: HelloResult
  /** At the end: event-loop delay and peak RSS of the part (read before the stats' own GC). */
  end: FloodTargetStats
  /** Once the store calls it left behind are over: memory kept after a full GC. The next part starts here. */
  after: FloodTargetStats
  blob: BlobCount
}

export const onDemandFlood: Figure = async (services, settings, notes) => {
  const { pebble, httpPort } = await services.pebble()
  // Its own Azurite: each refused name costs store calls, and Azurite slows down with what it holds.
  const azurite = await services.freshAzurite()
  const relay = await startBlobCounter(azurite, CONTAINER)
  services.teardown(() => relay.close())
  const counted = new Counted(relay)
  const root = await pebble.root()
  const names = settings.floodNames
  // Small runs get a small cache, so that the first tenth of the names already fills it.
  const cacheSize = settings.quick ? 100 : 1000
  const first = Math.max(1, Math.round(names / 10))
  const ordersBefore = pebble.orderCount()
  const target = await startFloodTarget(pebble, {
    connectionString: relay.connectionString(azurite.connectionString), container: CONTAINER, domains: [], httpPort, onDemand: { cacheSize }, maxOrdersPerHour: BUDGET
  }, { nodeArgs: profileArgs(settings, 'fig8-server'), keepLogs: false })
  const client = startWorker<HelloRequest, HelloResult>('on-demand-client.ts', { port: target.port } satisfies HelloClientSetup, profileArgs(settings, 'fig8-client'))
  try {
    for (let i = 0; !(await handshake(target.port, SERVED, root).then((s) => s.authorized, () => false)); i++) {
      if (i > 60) throw new Error(`figure 8: the server got no certificate for ${SERVED} within a minute`)
      await sleep(1000)
    }
    // Warm-up (JIT, the served name's SecureContext), not counted.
    for (let i = 0; i < 20; i++) await handshake(target.port, SERVED, root)
    await counted.quiet()
    counted.take()
    const idle = await target.stats({ resetPeak: true })

    const part = async (what: string, request: HelloRequest): Promise<Part> => {
      log(`figure 8: ${what}`)
      const hello = await client.ask(request)
      const end = await target.stats()
      await counted.quiet()
      const blob = counted.take()
      const after = await target.stats({ resetPeak: true })
      log(`figure 8: ${what}: ${(hello.elapsedMs / 1000).toFixed(1)} s, ${JSON.stringify(hello.outcomes)}, event loop ${loopText(end)}, kept ${mb(after.retained)}`)
      return { hello, end, after, blob }
    }
    const early = await part(`names 1 to ${fmt.int(first)}`, { from: 0, count: first, concurrency: CONCURRENCY })
    const rest = names > first ? await part(`names ${fmt.int(first + 1)} to ${fmt.int(names)}`, { from: first, count: names - first, concurrency: CONCURRENCY }) : early
    const floodMs = early.hello.elapsedMs + (rest === early ? 0 : rest.hello.elapsedMs)
    const rate = names / (floodMs / 1000)
    // As long a window as the flood's first tenth, between 3 and 20 s.
    const baseCount = Math.round(rate * Math.min(20, Math.max(3, early.hello.elapsedMs / 1000)))
    const paced = await part(`baseline: ${fmt.int(baseCount)} ClientHellos for ${SERVED} at the flood's ${rate.toFixed(0)}/s`, { name: SERVED, count: baseCount, concurrency: CONCURRENCY, perSecond: rate })
    const fast = await part(`baseline: ${fmt.int(first)} ClientHellos for ${SERVED} as fast as answered`, { name: SERVED, count: first, concurrency: CONCURRENCY })
    const orders = pebble.orderCount() - ordersBefore
    return figureRows({ names, first, cacheSize, orders, floodMs, idle, early, rest, paced, fast }, notes)
  } finally {
    await client.close()
    await target.stop()
  }
}

interface Measured {
  names: number
  first: number
  cacheSize: number
  orders: number
  floodMs: number
  /** Before the flood, the served name's certificate in memory. */
  idle: FloodTargetStats
  early: Part
  rest: Part
  paced: Part
  fast: Part
}

function figureRows (m: Measured, notes: string[]): Row[] {
  const { names, first, early, rest, paced, fast } = m
  const shape = `${fmt.int(names)} names, ${CONCURRENCY} in flight`
  const p99 = Math.max(early.end.loopDelay.p99, rest.end.loopDelay.p99)
  const max = Math.max(early.end.loopDelay.max, rest.end.loopDelay.max)
  const rate = names / (m.floodMs / 1000)
  const fastRate = first / (fast.hello.elapsedMs / 1000)
  const served = (early.hello.outcomes.served ?? 0) + (rest === early ? 0 : rest.hello.outcomes.served ?? 0)
  const unanswered = (early.hello.outcomes.timeout ?? 0) + (rest === early ? 0 : rest.hello.outcomes.timeout ?? 0)
  const ops = early.blob.total + (rest === early ? 0 : rest.blob.total)
  const pacedHellos = Object.values(paced.hello.outcomes).reduce((a, b) => a + b, 0)
  const growth = rest.after.retained / early.after.retained
  const peakGrowth = rest.end.peakRss / early.end.peakRss
  // The rest only: the first tenth also pays for the budget's orders.
  const restCpu = rest === early ? early.end.cpuMs - m.idle.cpuMs : rest.end.cpuMs - early.after.cpuMs
  notes.push(`figure 8 (${shape}, cacheSize ${m.cacheSize}, maxOrdersPerHour ${BUDGET}): ${(m.floodMs / 1000).toFixed(1)} s, ${rate.toFixed(1)} names/s; ` +
    `answers: first ${fmt.int(first)} ${JSON.stringify(early.hello.outcomes)}${rest === early ? '' : `, the rest ${JSON.stringify(rest.hello.outcomes)}`}; ` +
    `time to the answer p50 ${fmt.ms(rest.hello.p50Ms)}, p99 ${fmt.ms(rest.hello.p99Ms)}, max ${fmt.ms(rest.hello.maxMs)}; ` +
    `server CPU ${(restCpu / (rest === early ? names : names - first)).toFixed(2)} ms per name${rest === early ? '' : ' after the first tenth'}`)
  notes.push(`figure 8 event loop (monitorEventLoopDelay, resolution 10 ms; samples): first tenth p50 ${fmt.ms(early.end.loopDelay.p50)}, ${loopText(early.end)} (${fmt.int(early.end.loopDelay.count)}); ` +
    `the rest p50 ${fmt.ms(rest.end.loopDelay.p50)}, ${loopText(rest.end)} (${fmt.int(rest.end.loopDelay.count)}); ` +
    `served name at the flood's rate p50 ${fmt.ms(paced.end.loopDelay.p50)}, ${loopText(paced.end)}; as fast as answered (${fastRate.toFixed(0)}/s) ${loopText(fast.end)}`)
  notes.push(`figure 8 memory kept after GC (heap + external): before the flood ${mb(m.idle.retained)}, after ${fmt.int(first)} names ${mb(early.after.retained)}, after ${fmt.int(names)} ${mb(rest.after.retained)}; ` +
    `peak RSS ${mb(m.idle.rss)} at the start, ${mb(early.end.peakRss)} during the first tenth, ${mb(rest.end.peakRss)} during the rest`)
  notes.push(`figure 8 store: first tenth ${describeCount(early.blob)}; the rest ${rest === early ? '-' : describeCount(rest.blob)}; served name at the flood's rate ${describeCount(paced.blob)}`)
  return [{
    figure: `8 event-loop delay p99 during an on-demand flood (${shape})`,
    ours: `${fmt.ms(p99)} (max ${fmt.ms(max)})`,
    baseline: `${fmt.ms(paced.end.loopDelay.p99)} (a served name at ${rate.toFixed(0)}/s)`,
    ratio: p99 / paced.end.loopDelay.p99,
    target: `p99 <= ${LOOP_TARGET} ms`,
    met: p99 <= LOOP_TARGET
  }, {
    figure: `8 orders placed during the flood (${fmt.int(names)} names)`,
    ours: `${m.orders} at Pebble, ${served} names served${unanswered > 0 ? `, ${unanswered} unanswered in 60 s` : ''}`,
    baseline: `maxOrdersPerHour ${BUDGET} (the served name's order included)`,
    target: `<= ${BUDGET}`,
    met: m.orders <= BUDGET && unanswered === 0
  }, {
    figure: `8 server memory kept after GC, after ${fmt.int(names)} names against after ${fmt.int(first)}`,
    ours: `${mb(rest.after.retained)}`,
    baseline: `${mb(early.after.retained)} (${mb(m.idle.retained)} before the flood)`,
    ratio: growth,
    target: `<= ${GROWTH_TARGET} (cacheSize ${fmt.int(m.cacheSize)})`,
    met: growth <= GROWTH_TARGET
  }, {
    figure: `8 server peak RSS, names ${fmt.int(first + 1)}-${fmt.int(names)} against 1-${fmt.int(first)}`,
    ours: mb(rest.end.peakRss),
    baseline: `${mb(early.end.peakRss)} (${mb(m.idle.rss)} before the flood)`,
    ratio: peakGrowth,
    target: `<= ${GROWTH_TARGET}`,
    met: peakGrowth <= GROWTH_TARGET
  }, {
    figure: `8 flood duration (${shape})`,
    ours: `${(m.floodMs / 1000).toFixed(1)} s, ${rate.toFixed(1)} names/s`,
    baseline: `${(names / fastRate).toFixed(1)} s at ${fastRate.toFixed(0)}/s (a served name)`,
    ratio: (m.floodMs / 1000) / (names / fastRate),
    target: 'info'
  }, {
    figure: '8 store operations per name during the flood',
    ours: `${(ops / names).toFixed(1)} (${fmt.int(ops)})`,
    baseline: `${(paced.blob.total / pacedHellos).toFixed(1)} per ClientHello for a served name`,
    target: 'info'
  }]
}

/** The relay's counts, added up between take()s, so that waiting for quiet loses none. */
class Counted {
  readonly #relay: BlobCounter
  #sum: BlobCount = { total: 0, certificateReads: 0, byKind: new Map() }

  constructor (relay: BlobCounter) {
    this.#relay = relay
  }

  #drain (): number {
    const c = this.#relay.take()
    this.#sum.total += c.total
    this.#sum.certificateReads += c.certificateReads
    for (const [kind, n] of c.byKind) this.#sum.byKind.set(kind, (this.#sum.byKind.get(kind) ?? 0) + n)
    return c.total
  }

  take (): BlobCount {
    this.#drain()
    const sum = this.#sum
    this.#sum = { total: 0, certificateReads: 0, byKind: new Map() }
    return sum
  }

  /** Waits until half a second passes with no store request (what a part left behind is over), two minutes at most. */
  async quiet (): Promise<void> {
    this.#drain()
    for (let i = 0; i < 240; i++) {
      await sleep(500)
      if (this.#drain() === 0) return
    }
  }
}
