/*
 * Figure 6's attacker, in its own process so that building and reading its
 * floods does not slow the bench process, which times the legitimate
 * handshakes. For each JSON line `{ connections, requests, durationMs }` on
 * stdin it floods the port of its setup for `durationMs` (connections the
 * server cuts off are opened again) and answers one JSON line: the FloodResult.
 */
import { createInterface } from 'node:readline'
import { challengeFlood } from '../test/support/flood'

export interface FloodClientSetup {
  port: number
  host: string
}

export interface FloodRequest {
  connections: number
  requests: number
  durationMs: number
  /** The path before each token (FloodOptions.prefix): the challenge path by default. */
  prefix?: string
}

async function main (): Promise<void> {
  const setup = JSON.parse(process.env.BENCH_INPUT ?? '') as FloodClientSetup
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue
    const { durationMs, ...flood } = JSON.parse(line) as FloodRequest
    const result = await challengeFlood(setup.port, { ...flood, host: setup.host, signal: AbortSignal.timeout(durationMs) })
    process.stdout.write(`${JSON.stringify(result)}\n`)
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
