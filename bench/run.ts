/*
 * `npm run bench`: every figure of issue 5, the challenge flood (6), the ARI drill (7), the on-demand flood (8) and
 * handshakes spread over many names (9), each against a
 * baseline measured in the same run, on real Pebble and Azurite started here on free 127.0.0.1 ports.
 * Prints one table on stdout (progress and notes go to stderr).
 *
 *   BENCH_QUICK=1            smoke run, small numbers (about a minute)
 *   BENCH_FIGURES=1,3        only these figures
 *   BENCH_DOMAINS=1000,10000 domain counts of figure 2 (figure 4 uses the largest)
 *   BENCH_FLOOD_NAMES=100000 distinct names of figure 8's flood
 *   BENCH_SPREAD_NAMES=100000 listed names of figure 9
 *   BENCH_CPU_PROF=dir       --cpu-prof for the measured child processes
 *                            (run `node --cpu-prof ... bench/run.ts` for this one)
 */
import { execFileSync } from 'node:child_process'
import os from 'node:os'
import { ariDrill } from './ari-drill'
import { coldStart } from './cold-start'
import { challengeFlood } from './challenge-flood'
import { Services, log, readSettings, type Figure, type Notes, type Row } from './common'
import { concurrency } from './concurrency'
import { firstCertificate } from './first-certificate'
import { handshakes } from './handshake'
import { handshakeSpread } from './handshake-spread'
import { onDemandFlood } from './on-demand-flood'
import { scanCost } from './scan-cost'

const FIGURES: Record<number, Figure> = {
  1: handshakes,
  2: coldStart,
  3: firstCertificate,
  4: scanCost,
  5: concurrency,
  6: challengeFlood,
  7: ariDrill,
  8: onDemandFlood,
  9: handshakeSpread
}

async function main (): Promise<number> {
  const settings = readSettings()
  const services = new Services()
  const rows: Row[] = []
  const notes: Notes = []
  const started = performance.now()
  const loadBefore = os.loadavg()
  let failed = false
  try {
    for (const n of [...settings.figures].sort()) {
      const figure = FIGURES[n]
      if (figure === undefined) throw new TypeError(`BENCH_FIGURES: there is no figure ${n} (${Object.keys(FIGURES).join(', ')})`)
      log(`figure ${n}...`)
      const t0 = performance.now()
      try {
        rows.push(...await figure(services, settings, notes))
      } catch (err) {
        // One broken figure must not hide the others: it becomes a row that says so.
        failed = true
        log(`figure ${n} failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`)
        rows.push({ figure: `${n} FAILED`, ours: '-', baseline: '-', target: (err as Error).message?.split('\n')[0].slice(0, 60) ?? '', met: false })
      }
      log(`figure ${n} took ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    }
  } finally {
    await services.stop()
  }
  process.stderr.write(`\n${notes.map((n) => `  ${n}`).join('\n')}\n\n`)
  process.stdout.write(table(rows, (performance.now() - started) / 1000, settings.quick, loadBefore))
  return failed ? 1 : 0
}

function table (rows: Row[], seconds: number, quick: boolean, loadBefore: number[]): string {
  const header = ['figure', 'ours', 'baseline', 'ratio', 'target', 'met']
  const cells = rows.map((r) => [
    r.figure, r.ours, r.baseline, r.ratio === undefined ? '-' : r.ratio.toFixed(3), r.target,
    r.met === undefined ? '-' : r.met ? 'yes' : 'NO'
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i].length)))
  const line = (c: string[]): string => `| ${c.map((v, i) => v.padEnd(widths[i])).join(' | ')} |`
  const cpus = os.cpus()
  return [
    `fastify-autocert benchmarks${quick ? ' (BENCH_QUICK: smoke run, not the figures)' : ''}`,
    `machine: ${cpus[0]?.model ?? 'unknown cpu'}, ${cpus.length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB, ` +
      `Node ${process.version}, ${os.type()} ${os.release()}; run took ${seconds.toFixed(0)} s`,
    `code: ${revision()}`,
    // Other work on the machine shows in every figure: the load average says how much there was.
    `load average (1 min) at start ${loadBefore[0].toFixed(2)}, at end ${os.loadavg()[0].toFixed(2)}`,
    '',
    line(header),
    `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`,
    ...cells.map(line),
    ''
  ].join('\n')
}

/** The commit measured, and whether lib/ had uncommitted changes. */
function revision (): string {
  try {
    const git = (...args: string[]): string => execFileSync('git', args, { cwd: __dirname, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()
    return `${git('rev-parse', '--short', 'HEAD')}${git('status', '--porcelain', '--', '../lib') === '' ? '' : ' with uncommitted changes in lib/'}`
  } catch {
    return 'unknown (not a git checkout)'
  }
}

main().then((code) => { process.exitCode = code }, (err: unknown) => {
  log(err instanceof Error ? (err.stack ?? err.message) : String(err))
  process.exitCode = 1
})
