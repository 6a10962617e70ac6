/*
 * Figure 1's load generator, in its own process so the servers under test get
 * a core of their own. It runs slices on request: for each JSON line
 * `{ port, durationMs }` on stdin it runs `concurrency` loops against that port
 * for `durationMs`, lets the connections in flight finish (they are not
 * counted), and answers one JSON line with the count.
 *
 * Each request is a new TLS connection: a full handshake (no session is
 * offered), one `GET /` with `Connection: close`, read to the end. With `names`,
 * each connection asks for one of benchDomain(0 .. names - 1) instead of
 * `servername`: at random, as a population of clients would, or in turn (a
 * warm-up that visits each once). The chain is
 * not verified here: Node's check (getPeerCertificate(true), then the name)
 * costs the client about a millisecond per connection, which would make the
 * client, not the server under test, the bottleneck on 2 cores. The figure
 * verifies what each server serves with a separate probe before measuring.
 */
import { createInterface } from 'node:readline'
import tls from 'node:tls'
import { benchDomain } from './common'

export interface ClientSetup {
  servername: string
  concurrency: number
}

export interface SliceRequest {
  port: number
  durationMs: number
  /** Spread the connections over benchDomain(0 .. names - 1) (default: setup.servername only). */
  names?: number
  /** How they are picked: at random (default), or in turn, from benchDomain(from) on. */
  order?: 'random' | 'sequential'
  from?: number
}

export interface SliceResult {
  /** Requests that completed inside the slice. */
  count: number
  /** Requests started inside the slice, those still in flight at its end included. */
  started: number
  errors: number
  /** Connections that resumed a session: must stay 0. */
  resumed: number
  /** CPU time of this client process during the slice (microseconds). */
  cpuUs: number
  firstError?: string
}

function request (servername: string, secureContext: tls.SecureContext, port: number): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, secureContext, rejectUnauthorized: false }, () => {
      socket.write(`GET / HTTP/1.1\r\nHost: ${servername}\r\nConnection: close\r\n\r\n`)
    })
    let head = ''
    socket.setEncoding('latin1')
    socket.on('data', (chunk: string) => { if (head.length < 16) head += chunk })
    socket.once('end', () => {
      const resumed = socket.isSessionReused()
      socket.destroy()
      if (!head.startsWith('HTTP/1.1 200')) reject(new Error(`unexpected answer: ${JSON.stringify(head.slice(0, 16))}`))
      else resolve(resumed)
    })
    socket.once('error', reject)
    socket.setTimeout(10_000, () => socket.destroy(new Error('timed out')))
  })
}

async function slice (setup: ClientSetup, secureContext: tls.SecureContext, { port, durationMs, names, order = 'random', from = 0 }: SliceRequest): Promise<SliceResult> {
  const out: SliceResult = { count: 0, started: 0, errors: 0, resumed: 0, cpuUs: 0 }
  let turn = from
  const pick = (): string => names === undefined
    ? setup.servername
    : benchDomain(order === 'sequential' ? turn++ % names : Math.floor(Math.random() * names))
  const cpu0 = process.cpuUsage()
  const until = performance.now() + durationMs
  const loop = async (): Promise<void> => {
    while (performance.now() < until) {
      try {
        out.started++
        const resumed = await request(pick(), secureContext, port)
        if (performance.now() < until) {
          out.count++
          if (resumed) out.resumed++
        }
      } catch (err) {
        out.errors++
        out.firstError ??= (err as Error).message
      }
    }
  }
  await Promise.all(Array.from({ length: setup.concurrency }, loop))
  const cpu = process.cpuUsage(cpu0)
  out.cpuUs = cpu.user + cpu.system
  return out
}

async function main (): Promise<void> {
  const setup = JSON.parse(process.env.BENCH_INPUT ?? '') as ClientSetup
  const secureContext = tls.createSecureContext()
  for await (const line of createInterface({ input: process.stdin })) {
    if (line.trim() === '') continue
    const result = await slice(setup, secureContext, JSON.parse(line) as SliceRequest)
    process.stdout.write(`${JSON.stringify(result)}\n`)
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`)
  process.exitCode = 1
})
