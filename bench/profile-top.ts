/*
 * Top self-time functions of V8 .cpuprofile files (from --cpu-prof or
 * BENCH_CPU_PROF=dir npm run bench):
 *
 *   npx tsx bench/profile-top.ts dir-or-file... [--top 25]
 */
import { readFileSync, readdirSync, statSync } from 'node:fs'
import path from 'node:path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
  children?: number[]
}

interface Profile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples?: number[]
  timeDeltas?: number[]
}

export function topSelf (profile: Profile, top = 25): { totalMs: number, rows: Array<{ ms: number, share: number, where: string }> } {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]))
  const selfUs = new Map<number, number>()
  const samples = profile.samples ?? []
  const deltas = profile.timeDeltas ?? []
  // Each sample's time is the delta to the next one.
  for (let i = 0; i < samples.length; i++) {
    const dt = deltas[i + 1] ?? 0
    selfUs.set(samples[i], (selfUs.get(samples[i]) ?? 0) + dt)
  }
  const byFunction = new Map<string, number>()
  let total = 0
  for (const [id, us] of selfUs) {
    const node = byId.get(id)
    if (node === undefined) continue
    const { functionName, url, lineNumber } = node.callFrame
    const file = url === '' ? '' : ` ${shorten(url)}:${lineNumber + 1}`
    const where = `${functionName === '' ? '(anonymous)' : functionName}${file}`
    byFunction.set(where, (byFunction.get(where) ?? 0) + us)
    total += us
  }
  const rows = [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)
    .map(([where, us]) => ({ ms: us / 1000, share: total === 0 ? 0 : us / total, where }))
  return { totalMs: total / 1000, rows }
}

function shorten (url: string): string {
  const file = url.replace(/^file:\/\//, '')
  const nm = file.lastIndexOf('node_modules/')
  if (nm >= 0) return file.slice(nm + 'node_modules/'.length)
  return path.relative(process.cwd(), file)
}

// A directory: every .cpuprofile under it (BENCH_CPU_PROF writes one folder per process).
function files (target: string): string[] {
  if (!statSync(target).isDirectory()) return [target]
  return readdirSync(target, { recursive: true, encoding: 'utf8' }).filter((f) => f.endsWith('.cpuprofile')).sort().map((f) => path.join(target, f))
}

function main (): void {
  const args = process.argv.slice(2)
  const at = args.indexOf('--top')
  const top = at >= 0 ? Number(args.splice(at, 2)[1]) : 25
  if (args.length === 0) {
    process.stderr.write('usage: npx tsx bench/profile-top.ts <file.cpuprofile | dir>... [--top N]\n')
    process.exitCode = 2
    return
  }
  for (const file of args.flatMap(files)) {
    const { totalMs, rows } = topSelf(JSON.parse(readFileSync(file, 'utf8')) as Profile, top)
    process.stdout.write(`\n${file}: ${totalMs.toFixed(0)} ms sampled\n`)
    for (const r of rows) process.stdout.write(`  ${r.ms.toFixed(1).padStart(9)} ms ${(r.share * 100).toFixed(1).padStart(5)}%  ${r.where}\n`)
  }
}

if (require.main === module) main()
