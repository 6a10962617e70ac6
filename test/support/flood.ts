/*
 * A challenge flood and the server it is aimed at, for the tests and the bench.
 * challengeFlood() is the attack: connections that each pipeline thousands of
 * GET /.well-known/acme-challenge/<token> requests in one write, reading what
 * comes back. startFloodTarget() runs the plugin in a process of its own
 * (flood-target.ts), so that its memory and its store reads are its alone.
 */
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import path from 'node:path'
import type { FloodTargetConfig, FloodTargetStats } from './flood-target'
import type { Pebble } from './pebble'
import { spawnTracked, stopChild } from './proc'

const CHALLENGE_PATH = '/.well-known/acme-challenge/'
const TARGET = path.join(__dirname, 'flood-target.ts')

export interface FloodOptions {
  /** Connections opened at once. */
  connections: number
  /** Requests each connection pipelines, written in one go. */
  requests: number
  /** The Host header (a well-formed name: others never reach a lookup). */
  host: string
  /** The token of each request; by default a fresh random one (22+ base64url characters, as the CA's). */
  token?: () => string
  /** What comes before the token (default CHALLENGE_PATH): another path floods a server without reaching the challenge route. */
  prefix?: string
  /** While it has not aborted, a connection that ends is opened again: a sustained flood. Without it, one round. Its abort ends the connections open. */
  signal?: AbortSignal
}

export interface FloodResult {
  /** Connections opened, reopened ones included. */
  opened: number
  /** Requests written. */
  sent: number
  /** Answers received, by status. */
  answers: Record<number, number>
  /** Connections the server closed before answering all they sent. */
  cut: number
  /** Connections ended by the signal's abort. */
  stopped: number
}

/** One connection: writes `requests` pipelined requests, resolves when the server closed it or answered them all. */
function round (port: number, options: FloodOptions, out: FloodResult, live: Set<() => void>): Promise<void> {
  const token = options.token ?? (() => randomBytes(32).toString('base64url'))
  const head = `Host: ${options.host}\r\nUser-Agent: flood\r\n\r\n`
  let requests = ''
  for (let i = 0; i < options.requests; i++) requests += `GET ${options.prefix ?? CHALLENGE_PATH}${token()} HTTP/1.1\r\n${head}`
  return new Promise((resolve) => {
    out.opened++
    out.sent += options.requests
    let answered = 0
    let stopped = false
    // A status line may be split between two reads: keep the end of the previous one.
    let tail = ''
    const socket = net.connect(port, '127.0.0.1', () => socket.write(requests))
    const stop = (): void => { stopped = true; socket.destroy() }
    live.add(stop)
    socket.setEncoding('latin1')
    socket.on('data', (chunk: string) => {
      const text = tail + chunk
      for (const m of text.matchAll(/HTTP\/1\.1 (\d{3}) /g)) {
        out.answers[Number(m[1])] = (out.answers[Number(m[1])] ?? 0) + 1
        answered++
      }
      tail = text.slice(-16)
      if (tail.includes('HTTP/1.1 ')) tail = tail.slice(tail.lastIndexOf('HTTP/1.1 ') + 9)
      if (answered === options.requests) socket.destroy()
    })
    // The server may close while the requests are still being written.
    socket.on('error', () => {})
    socket.on('close', () => {
      live.delete(stop)
      if (stopped) out.stopped++
      else if (answered < options.requests) out.cut++
      resolve()
    })
  })
}

/** Runs the flood against 127.0.0.1:`port` and counts what came back. */
export async function challengeFlood (port: number, options: FloodOptions): Promise<FloodResult> {
  const out: FloodResult = { opened: 0, sent: 0, answers: {}, cut: 0, stopped: 0 }
  // The connections open, each by the function that ends it.
  const live = new Set<() => void>()
  const stopAll = (): void => { for (const stop of live) stop() }
  options.signal?.addEventListener('abort', stopAll, { once: true })
  await Promise.all(Array.from({ length: options.connections }, async () => {
    do await round(port, options, out, live)
    while (options.signal !== undefined && !options.signal.aborted)
  }))
  options.signal?.removeEventListener('abort', stopAll)
  return out
}

export interface FloodTarget {
  /** Its HTTPS port on 127.0.0.1. */
  port: number
  /** Its JSON log lines so far. */
  logs: Array<Record<string, unknown>>
  /** Its store reads and memory; `resetPeak` first sets its peak RSS (VmHWM) to its current RSS. */
  stats (options?: { resetPeak?: boolean }): Promise<FloodTargetStats>
  /** SIGTERM: app.close(), then exit. */
  stop (): Promise<void>
}

export interface FloodTargetOptions {
  /** More Node arguments (such as --cpu-prof). */
  nodeArgs?: string[]
  /** Whether to keep its log lines in `logs` (default true): a flood of names logs a line for each. */
  keepLogs?: boolean
}

/**
 * Starts flood-target.ts in its own process, with the same loader (and, under
 * tap, coverage) as this one, and waits until it listens. It trusts Pebble's
 * API through NODE_EXTRA_CA_CERTS.
 */
export async function startFloodTarget (pebble: Pebble, config: Omit<FloodTargetConfig, 'directoryUrl'>, { nodeArgs = [], keepLogs = true }: FloodTargetOptions = {}): Promise<FloodTarget> {
  const child = spawnTracked(process.execPath, ['--expose-gc', ...nodeArgs, ...process.execArgv, TARGET], {
    env: { ...process.env, FLOOD_TARGET: JSON.stringify({ directoryUrl: pebble.directoryUrl, ...config }), NODE_EXTRA_CA_CERTS: pebble.caFile },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  const logs: Array<Record<string, unknown>> = []
  const replies: Array<(stats: FloodTargetStats) => void> = []
  let stderr = ''
  let rest = ''
  let listening: ((port: number) => void) | undefined
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  child.stdout?.on('data', (d: Buffer) => {
    const lines = (rest + d.toString()).split('\n')
    rest = lines.pop() ?? ''
    for (const line of lines) {
      if (!line.startsWith('{')) continue
      const parsed = JSON.parse(line) as Record<string, unknown>
      if (parsed.stats !== undefined) replies.shift()?.(parsed.stats as FloodTargetStats)
      else if (keepLogs) logs.push(parsed)
      if (parsed.msg === 'flood target listening') listening?.(parsed.port as number)
    }
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  const port = await new Promise<number>((resolve, reject) => {
    listening = resolve
    void exited.then(() => reject(new Error(`flood target exited before it listened:\n${stderr}`)))
  })
  return {
    port,
    logs,
    stats: (options = {}) => new Promise((resolve, reject) => {
      if (child.exitCode !== null || child.signalCode !== null) return reject(new Error(`flood target exited:\n${stderr}`))
      replies.push(resolve)
      child.stdin?.write(`${options.resetPeak === true ? 'reset-peak' : 'stats'}\n`)
    }),
    stop: () => stopChild(child)
  }
}
