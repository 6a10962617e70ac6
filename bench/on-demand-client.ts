/*
 * Figure 8's client, in its own process so that building ClientHellos and
 * reading the answers takes no CPU from the bench process or the server. For
 * each JSON line (a HelloRequest) on stdin it sends one ClientHello per name on
 * a connection of its own (test/helpers/client-hello.ts), `concurrency` in
 * flight, and answers one JSON line: the HelloResult.
 */
import { createInterface } from 'node:readline'
import { sendClientHello, x25519Share, type HelloAnswer } from '../test/helpers/client-hello'
import { benchDomain, pool, quantile } from './common'

export interface HelloClientSetup {
  port: number
}

export interface HelloRequest {
  /** Distinct names benchDomain(from) ... benchDomain(from + count - 1); or, with `name`, `count` hellos for that one name. */
  from?: number
  count: number
  name?: string
  concurrency: number
  /** At most this many hellos started per second (paced); as fast as they are answered when unset. */
  perSecond?: number
}

export interface HelloResult {
  outcomes: Partial<Record<HelloAnswer['outcome'], number>>
  elapsedMs: number
  /** From connect to the server's answer (ServerHello, alert or close), in ms. */
  p50Ms: number
  p99Ms: number
  maxMs: number
}

// A refused name waits for the store and the order budget: far longer than a handshake, never this long.
const TIMEOUT = 60_000

// One key share for every hello: the server's work is the same, the client's far less (see x25519Share).
const KEY_SHARE = x25519Share()

async function hellos (port: number, request: HelloRequest): Promise<HelloResult> {
  const { from = 0, count, name, concurrency, perSecond } = request
  const outcomes: HelloResult['outcomes'] = {}
  const times: number[] = []
  const started = performance.now()
  await pool(Array.from({ length: count }, (_, i) => i), concurrency, async (i) => {
    if (perSecond !== undefined) {
      const wait = started + (i * 1000) / perSecond - performance.now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
    }
    const answer = await sendClientHello(port, { serverName: name ?? benchDomain(from + i), version: '1.3', keyShare: KEY_SHARE }, TIMEOUT)
    outcomes[answer.outcome] = (outcomes[answer.outcome] ?? 0) + 1
    times.push(answer.ms)
  })
  return { outcomes, elapsedMs: performance.now() - started, p50Ms: quantile(times, 0.5), p99Ms: quantile(times, 0.99), maxMs: Math.max(...times) }
}

async function main (): Promise<void> {
  const setup = JSON.parse(process.env.BENCH_INPUT ?? '') as HelloClientSetup
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue
    process.stdout.write(`${JSON.stringify(await hellos(setup.port, JSON.parse(line) as HelloRequest))}\n`)
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
