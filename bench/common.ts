/*
 * What every figure shares: the run's settings, the services (started once,
 * lazily, stopped at the end), child processes, and result rows.
 */
import path from 'node:path'
import { startAzurite, type Azurite } from '../test/support/azurite'
import { startPebble, trustPebble, type Pebble } from '../test/support/pebble'
import { freePort } from '../test/support/ports'
import { spawnTracked } from '../test/support/proc'

export interface Settings {
  /** BENCH_QUICK=1: a smoke run, every figure with small numbers. */
  quick: boolean
  /** BENCH_FIGURES=1,3: which figures to run (default all). */
  figures: Set<number>
  /** BENCH_DOMAINS=1000,10000: domain counts of figure 2; figure 4 uses the largest. */
  domains: number[]
  /** BENCH_FLOOD_NAMES=100000: how many distinct names figure 8's flood sends. */
  floodNames: number
  /** BENCH_SPREAD_NAMES=100000: how many names figure 9's server lists. */
  spreadNames: number
  /** BENCH_CPU_PROF=dir: run the measured processes with --cpu-prof into dir. */
  cpuProfDir?: string
}

export function readSettings (env = process.env): Settings {
  const quick = env.BENCH_QUICK === '1'
  const list = (value: string | undefined): number[] | undefined => {
    if (value === undefined || value.trim() === '') return undefined
    const numbers = value.split(',').map((v) => Number(v.trim()))
    if (!numbers.every((n) => Number.isInteger(n) && n > 0)) throw new TypeError(`expected a list of positive integers like 1000,10000; got ${JSON.stringify(value)}`)
    return numbers
  }
  return {
    quick,
    figures: new Set(list(env.BENCH_FIGURES) ?? [1, 2, 3, 4, 5, 6, 7, 8, 9]),
    domains: list(env.BENCH_DOMAINS) ?? (quick ? [200, 1000] : [1000, 10000]),
    floodNames: list(env.BENCH_FLOOD_NAMES)?.[0] ?? (quick ? 2000 : 100_000),
    spreadNames: list(env.BENCH_SPREAD_NAMES)?.[0] ?? (quick ? 2000 : 100_000),
    cpuProfDir: env.BENCH_CPU_PROF === undefined || env.BENCH_CPU_PROF === '' ? undefined : path.resolve(env.BENCH_CPU_PROF)
  }
}

/** One line of the table. */
export interface Row {
  figure: string
  ours: string
  baseline: string
  /** ours / baseline, when the figure is a ratio. */
  ratio?: number
  target: string
  met?: boolean
}

/** Details printed under the table (raw rounds, counts, what was measured). */
export type Notes = string[]

export type Figure = (services: Services, settings: Settings, notes: Notes) => Promise<Row[]>

/** Pebble and Azurite, started on first use on free 127.0.0.1 ports, stopped by stop(). */
export class Services {
  #azurite: Promise<Azurite> | undefined
  #pebble: Promise<{ pebble: Pebble, httpPort: number }> | undefined
  readonly #cleanups: Array<() => Promise<void>> = []

  azurite (): Promise<Azurite> {
    this.#azurite ??= startAzurite().then((a) => {
      this.#cleanups.push(() => a.stop())
      return a
    })
    return this.#azurite
  }

  /**
   * An Azurite of the caller's own, stopped by stop(). Azurite keeps every blob
   * in one in-memory database and each call grows slower with what it holds
   * (figure 2 leaves 11,000 blobs): a figure that times single store calls
   * starts from an empty one.
   */
  async freshAzurite (): Promise<Azurite> {
    const azurite = await startAzurite()
    this.#cleanups.push(() => azurite.stop())
    return azurite
  }

  /** Pebble, and the port its VA sends HTTP-01 validations to (whoever answers must listen there). */
  pebble (): Promise<{ pebble: Pebble, httpPort: number }> {
    this.#pebble ??= (async () => {
      const httpPort = await freePort()
      const pebble = await startPebble({ httpPort })
      this.#cleanups.push(() => pebble.stop())
      trustPebble(pebble)
      return { pebble, httpPort }
    })()
    return this.#pebble
  }

  /** Runs `fn` at stop(), the last registered first: the services are an Owner for test/helpers. */
  teardown (fn: () => unknown): void {
    this.#cleanups.push(async () => { await fn() })
  }

  async stop (): Promise<void> {
    // Started services are stopped even when a start is still failing.
    await Promise.allSettled([this.#azurite, this.#pebble])
    for (const fn of this.#cleanups.splice(0).reverse()) await fn().catch((err: unknown) => { log(`cleanup failed: ${String(err)}`) })
  }
}

/**
 * Runs `file` (a bench/ TypeScript entry) in its own Node process with the same
 * TypeScript loader as this one, hands it `input` as JSON and resolves with the
 * JSON it prints on its last stdout line. Tracked: killed if this process dies.
 */
export async function runChild<T> (file: string, input: unknown, nodeArgs: string[] = []): Promise<T> {
  const child = spawnTracked(process.execPath, [...nodeArgs, ...process.execArgv, path.join(__dirname, file)], {
    env: { ...process.env, BENCH_INPUT: JSON.stringify(input) }
  })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (c) => resolve(c))
  })
  if (code !== 0) throw new Error(`${file} exited with ${String(code)}:\n${stderr}`)
  const last = stdout.trim().split('\n').pop() ?? ''
  return JSON.parse(last) as T
}

export interface Worker<I, O> {
  /** Sends one JSON line and resolves with the next JSON line the worker prints. */
  ask (input: I): Promise<O>
  /** Ends its stdin and waits for it to exit. */
  close (): Promise<void>
}

/** Like runChild, for a child that answers one JSON line per JSON line it reads, until stdin ends. */
export function startWorker<I, O> (file: string, setup: unknown, nodeArgs: string[] = []): Worker<I, O> {
  const child = spawnTracked(process.execPath, [...nodeArgs, ...process.execArgv, path.join(__dirname, file)], {
    env: { ...process.env, BENCH_INPUT: JSON.stringify(setup) },
    stdio: ['pipe', 'pipe', 'pipe']
  })
  let stderr = ''
  let buffered = ''
  const waiting: Array<{ resolve: (o: O) => void, reject: (e: Error) => void }> = []
  const exited = new Promise<void>((resolve) => child.once('exit', (code) => {
    for (const w of waiting.splice(0)) w.reject(new Error(`${file} exited with ${String(code)}:\n${stderr}`))
    resolve()
  }))
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  child.stdout?.on('data', (d: Buffer) => {
    const lines = (buffered + d.toString()).split('\n')
    buffered = lines.pop() ?? ''
    for (const line of lines) if (line.trim() !== '') waiting.shift()?.resolve(JSON.parse(line) as O)
  })
  return {
    ask: (input) => new Promise<O>((resolve, reject) => {
      if (child.exitCode !== null || child.signalCode !== null) {
        reject(new Error(`${file} exited:\n${stderr}`))
        return
      }
      waiting.push({ resolve, reject })
      child.stdin?.write(`${JSON.stringify(input)}\n`)
    }),
    close: async () => {
      child.stdin?.end()
      await exited
    }
  }
}

/** In a child started by runChild: its input, then print the result and exit. */
export function childMain<I, O> (fn: (input: I) => Promise<O>): void {
  fn(JSON.parse(process.env.BENCH_INPUT ?? 'null') as I).then((out) => {
    process.stdout.write(`\n${JSON.stringify(out)}\n`, () => process.exit(0))
  }, (err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`, () => process.exit(1))
  })
}

/**
 * --cpu-prof arguments for a child (or none): its profiles go to `<dir>/<name>/`,
 * one file per thread (tsx's loader runs in a worker; the main thread's is the big one).
 */
export function profileArgs (settings: Settings, name: string): string[] {
  if (settings.cpuProfDir === undefined) return []
  return ['--cpu-prof', '--cpu-prof-dir', path.join(settings.cpuProfDir, name)]
}

export function median (values: number[]): number {
  return quantile(values, 0.5)
}

/** The q-quantile, interpolating between the two nearest values. */
export function quantile (values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b)
  const at = (sorted.length - 1) * q
  const low = Math.floor(at)
  return low + 1 < sorted.length ? sorted[low] + (sorted[low + 1] - sorted[low]) * (at - low) : sorted[low]
}

/** Runs `fn` on every item, at most `concurrency` at a time. */
export async function pool<T> (items: readonly T[], concurrency: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) await fn(items[i], i)
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker))
}

/** Progress goes to stderr; the table alone goes to stdout. */
export function log (message: string): void {
  process.stderr.write(`[bench] ${message}\n`)
}

export const fmt = {
  int: (n: number): string => Math.round(n).toLocaleString('en-US'),
  ms: (n: number): string => `${n < 100 ? n.toFixed(1) : Math.round(n).toLocaleString('en-US')} ms`,
  kib: (bytes: number): string => `${(bytes / 1024).toFixed(2)} KiB`
}

/** Bench domain names: valid, listed, and sorted like the store lists them. */
export function benchDomain (i: number): string {
  return `d${String(i).padStart(6, '0')}.bench.test`
}
