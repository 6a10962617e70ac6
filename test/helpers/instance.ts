import https from 'node:https'
import path from 'node:path'
import type { InstanceConfig } from '../fixtures/instance'
import type { Pebble } from '../support/pebble'
import { spawnTracked, stopChild } from '../support/proc'

const FIXTURE = path.join(__dirname, '../fixtures/instance.ts')

export interface Instance {
  name: string
  /** HTTPS port on 127.0.0.1. */
  port: number
  /** Every JSON log line so far. */
  logs: Array<Record<string, unknown>>
  /** Resolves with the first log line (past or future) that matches. */
  waitForLog (match: (line: Record<string, unknown>) => boolean, ms?: number): Promise<Record<string, unknown>>
  /** SIGKILL: a crash, no clean-up. */
  kill (): Promise<void>
  /** SIGTERM: app.close(), then exit. */
  stop (): Promise<void>
}

export type InstanceOptions = Omit<InstanceConfig, 'directoryUrl'>

/**
 * Starts one app process (test/fixtures/instance.ts) and waits until it
 * listens. `ca`: the CA it orders from when not `pebble` itself (a proxy in
 * front of it), with a file of the certificates its listener needs trusted.
 */
export async function startInstance (pebble: Pebble, options: InstanceOptions, ca: { directoryUrl: string, caFile: string } = pebble): Promise<Instance> {
  const config: InstanceConfig = { directoryUrl: ca.directoryUrl, ...options }
  // The test's own execArgv holds its TypeScript loader (and, under tap, the
  // coverage hooks): the child runs the same way, so its coverage merges too.
  const child = spawnTracked(process.execPath, [...process.execArgv, FIXTURE], {
    env: { ...process.env, AUTOCERT_INSTANCE: JSON.stringify(config), NODE_EXTRA_CA_CERTS: ca.caFile }
  })
  const logs: Array<Record<string, unknown>> = []
  const waiters = new Set<() => void>()
  let rest = ''
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  child.stdout?.on('data', (d: Buffer) => {
    const lines = (rest + d.toString()).split('\n')
    rest = lines.pop() ?? ''
    for (const line of lines) if (line.startsWith('{')) logs.push(JSON.parse(line))
    for (const wake of waiters) wake()
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))

  const waitForLog = (match: (line: Record<string, unknown>) => boolean, ms = 60_000): Promise<Record<string, unknown>> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        const line = logs.find(match)
        if (line === undefined) return
        done()
        resolve(line)
      }
      const timer = setTimeout(() => { done(); reject(new Error(`${options.name}: no such log line within ${ms} ms\n${stderr}`)) }, ms)
      const done = (): void => { clearTimeout(timer); waiters.delete(check) }
      waiters.add(check)
      void exited.then(() => { if (waiters.has(check)) { done(); reject(new Error(`${options.name} exited\n${stderr}`)) } })
      check()
    })

  const listening = await waitForLog((l) => l.msg === 'instance listening')
  return {
    name: options.name,
    port: listening.port as number,
    logs,
    waitForLog,
    kill: async () => { child.kill('SIGKILL'); await exited },
    stop: () => stopChild(child)
  }
}

/**
 * A request to the instance's own routes (test/fixtures/instance.ts: status()
 * and revoke()) over its HTTPS port, with SNI `servername`, verified against `root`.
 */
export function callInstance (instance: Instance, servername: string, root: string, method: 'GET' | 'POST', path: string, body?: object): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port: instance.port, servername, ca: root, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      let text = ''
      res.on('data', (d: Buffer) => { text += d.toString() })
      res.on('end', () => res.statusCode === 200 ? resolve(JSON.parse(text)) : reject(new Error(`${method} ${path}: ${res.statusCode ?? 0} ${text}`)))
    })
    req.on('error', reject)
    req.end(body === undefined ? undefined : JSON.stringify(body))
  })
}
