#!/usr/bin/env node
// `fastify-autocert <command>`: the operator's command line for the fleet's store (the package's bin).
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { COMMANDS } from './commands'
import { CliError, COMMON_FLAGS, EXIT, Output, describeError, openStore, requireExisting, scrub, secretsOf, storeSettings, type Command, type Io, type OpenedStore } from './context'

function usage (): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length))
  return [
    'Usage: fastify-autocert <command> [options]',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'fastify-autocert <command> --help: its options. Every listing takes --json.',
    'Exit codes: 0 done; 1 done, and something needs attention; 2 the command could not run.'
  ].join('\n')
}

function commandHelp (command: Command): string {
  return `Usage: fastify-autocert ${command.usage}\n\n${command.summary}\n\n${command.help}`.trimEnd()
}

function version (): string {
  return (JSON.parse(readFileSync(path.join(__dirname, '../../package.json'), 'utf8')) as { version: string }).version
}

/**
 * Runs `fastify-autocert` with `argv` (the arguments after the program's name)
 * and resolves with its exit code. Every failure is one line on stderr and
 * code 2, never a stack trace, and nothing secret is ever printed.
 */
export async function main (argv: readonly string[], io: Io = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined) {
    io.stderr.write(`${usage()}\n`)
    return EXIT.error
  }
  if (name === 'help' || name === '--help' || name === '-h') {
    const topic = rest[0] === undefined ? undefined : COMMANDS.find((c) => c.name === rest[0])
    if (rest[0] !== undefined && topic === undefined) {
      io.stderr.write(`fastify-autocert help: unknown command ${JSON.stringify(scrub(rest[0]))}; one of ${COMMANDS.map((c) => c.name).join(', ')}\n`)
      return EXIT.error
    }
    io.stdout.write(`${topic === undefined ? usage() : commandHelp(topic)}\n`)
    return EXIT.ok
  }
  if (name === '--version' || name === '-v') {
    io.stdout.write(`${version()}\n`)
    return EXIT.ok
  }
  const command = COMMANDS.find((c) => c.name === name)
  if (command === undefined) {
    io.stderr.write(`fastify-autocert: unknown command ${JSON.stringify(scrub(name))}; one of ${COMMANDS.map((c) => c.name).join(', ')} (fastify-autocert --help)\n`)
    return EXIT.error
  }
  let opened: OpenedStore | undefined
  let secrets: string[] = []
  let out: Output | undefined
  // The library's waits (retries, polls, lock renewals) never hold a process open: a server's listener
  // does. A command has no listener, so it holds the process itself until it is done.
  const running = setInterval(() => {}, 2 ** 31 - 1)
  try {
    let parsed
    try {
      parsed = parseArgs({ args: [...rest], options: { ...COMMON_FLAGS, ...command.options }, allowPositionals: true, strict: true })
    } catch (err) {
      throw new CliError(`${(err as Error).message.split('\n')[0]} (fastify-autocert ${command.name} --help)`)
    }
    const { values, positionals } = parsed
    if (values.help === true) {
      io.stdout.write(`${commandHelp(command)}\n`)
      return EXIT.ok
    }
    if (positionals.length < command.positionals.min || positionals.length > command.positionals.max) {
      throw new CliError(`usage: fastify-autocert ${command.usage}`)
    }
    out = new Output(io, values.json === true)
    const output = out
    const store = (): OpenedStore => {
      if (opened !== undefined) return opened
      const settings = storeSettings(values, io.env)
      secrets = secretsOf(settings)
      output.hide(secrets)
      opened = openStore(settings)
      return opened
    }
    return await command.run({
      values,
      positionals,
      io,
      out: output,
      store,
      existingStore: async () => {
        const found = store()
        await requireExisting(found)
        return found
      }
    })
  } catch (err) {
    io.stderr.write(`fastify-autocert ${command.name}: ${scrub(describeError(err), secrets)}\n`)
    return EXIT.error
  } finally {
    clearInterval(running)
    await opened?.close().catch(() => {})
  }
}

if (require.main === module) {
  // A broken pipe (`| head`) ends the output, not the command: it goes on to its exit code and closes the store.
  process.stdout.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE' && err.code !== 'ERR_STREAM_DESTROYED') throw err
  })
  void main(process.argv.slice(2)).then((code) => { process.exitCode = code })
}
