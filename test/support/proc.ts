import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import net from 'node:net'

// Children still alive in this process. A crashed or timed-out test must not
// leave Pebble/Azurite running on the machine, so we kill what is left, by pid.
// 'exit' does not fire when a signal kills us, and tap's timeout is SIGALRM then
// SIGKILL 0.5 s later: catch the catchable signals, kill the children, then
// re-raise so the default (or tap's signal-exit) handling still happens.
const live = new Set<ChildProcess>()
const cleanups = new Set<() => void>()
let hooked = false
const SIGNALS = ['SIGALRM', 'SIGTERM', 'SIGINT', 'SIGHUP'] as const

function killAll (): void {
  for (const c of live) {
    try { c.kill('SIGKILL') } catch {}
  }
  for (const fn of cleanups) {
    try { fn() } catch {}
  }
}

// Synchronous last-resort cleanup (e.g. rmSync of a temp dir) run with killAll.
// Returns the function that unregisters it, for the normal stop() path.
export function onCrash (fn: () => void): () => void {
  hook()
  cleanups.add(fn)
  return () => { cleanups.delete(fn) }
}

function onSignal (sig: NodeJS.Signals): void {
  killAll()
  for (const s of SIGNALS) process.removeListener(s, onSignal)
  process.kill(process.pid, sig)
}

function hook (): void {
  if (hooked) return
  hooked = true
  process.on('exit', killAll)
  for (const s of SIGNALS) process.on(s, onSignal)
}

export function spawnTracked (cmd: string, args: string[], opts: SpawnOptions): ChildProcess {
  hook()
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts })
  live.add(child)
  child.once('exit', () => live.delete(child))
  return child
}

// SIGTERM the child and wait for it to be gone (SIGKILL after a grace period).
export async function stopChild (child: ChildProcess, graceMs = 5000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise<void>(resolve => child.once('exit', () => resolve()))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

export const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

// Poll `probe` until it resolves true; fail with the child's output if the child
// dies first or time runs out, so a broken start explains itself.
export async function waitUntil (
  what: string, probe: () => Promise<boolean>, child: ChildProcess, output: () => string, timeoutMs = 15000
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}) before it was ready:\n${output()}`)
    }
    if (await probe().catch(() => false)) return
    await sleep(50)
  }
  throw new Error(`${what} not ready after ${timeoutMs} ms:\n${output()}`)
}

// True once something accepts TCP connections on 127.0.0.1:port.
export function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
    s.on('error', () => resolve(false))
  })
}
