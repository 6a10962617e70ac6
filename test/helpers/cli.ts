import path from 'node:path'
import type { ChildProcess } from 'node:child_process'
import { spawnTracked } from '../support/proc'

const MAIN = path.join(__dirname, '../../lib/cli/main.ts')

export interface CliResult {
  /** The exit code (or the signal's name, had it been killed). */
  code: number | string
  stdout: string
  stderr: string
}

/**
 * Runs `fastify-autocert ...args` as a user would, in a child process of its
 * own, and resolves once it exits. The environment is exactly `env` plus PATH
 * (none of this process's AZURE_* or ACME_* variables leak in). The test's own
 * execArgv holds its TypeScript loader (and, under tap, the coverage hooks): the
 * child runs lib/cli/main.ts the same way, so its coverage merges.
 * `timeout` (ms, default 120 s): the child is killed after it, and the result says so.
 */
export async function runCli (args: readonly string[], env: NodeJS.ProcessEnv = {}, timeout = 120_000): Promise<CliResult> {
  const child = spawnCli(args, env)
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), timeout)
  const code = await new Promise<number | string>((resolve) => child.on('close', (c, signal) => resolve(c ?? String(signal))))
  clearTimeout(timer)
  return { code, stdout, stderr }
}

/** `fastify-autocert ...args` started as runCli starts it, for a test that handles the child's streams itself. */
export function spawnCli (args: readonly string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  return spawnTracked(process.execPath, [...process.execArgv, MAIN, ...args], { env: { PATH: process.env.PATH, ...env } })
}
