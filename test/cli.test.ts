import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { runCli, spawnCli } from './helpers/cli'

t.test('fastify-autocert without a command, with --help, an unknown command or a bad flag', async (t) => {
  const bare = await runCli([])
  t.equal(bare.code, 2, 'no command: exit code 2')
  t.match(bare.stderr, /^Usage: fastify-autocert <command> \[options\]/, 'and the usage, on stderr')
  t.equal(bare.stdout, '')

  const topic = await runCli(['help', 'list'])
  t.equal(topic.code, 0)
  t.match(topic.stdout, /^Usage: fastify-autocert list /, 'help <command>: its help')
  const noTopic = await runCli(['help', 'frobnicate'])
  t.equal(noTopic.code, 2, 'help of an unknown command: exit code 2')
  t.match(noTopic.stderr, /^fastify-autocert help: unknown command "frobnicate"; one of list, /)

  const help = await runCli(['--help'])
  t.equal(help.code, 0, '--help: exit code 0')
  t.match(help.stdout, /Exit codes: 0 done; 1 done, and something needs attention; 2 the command could not run\./)

  const version = await runCli(['--version'])
  t.equal(version.code, 0)
  t.match(version.stdout, /^\d+\.\d+\.\d+\n$/, '--version prints the package version')

  const unknown = await runCli(['frobnicate'])
  t.equal(unknown.code, 2, 'an unknown command: exit code 2')
  t.match(unknown.stderr, /^fastify-autocert: unknown command "frobnicate"; one of /, 'one line that says so')
  t.notMatch(unknown.stderr, /\n {4}at /, 'never a stack trace')
})

t.test('a broken pipe (`| head`) ends the output, not the command: its exit code stays', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'cli-pipe-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await chmod(dir, 0o700)
  await writeFile(path.join(dir, 'x.example.test'), 'not a certificate', { mode: 0o600 })
  const child = spawnCli(['list', '--dir', dir])
  // The reading end closed before the command writes: each of its writes fails with EPIPE.
  child.stdout?.destroy()
  let stderr = ''
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const code = await new Promise((resolve) => child.on('close', resolve))
  t.equal(code, 1, 'an unusable entry needs attention: exit code 1, as without the pipe')
  t.equal(stderr, '', 'nothing on stderr')
})
