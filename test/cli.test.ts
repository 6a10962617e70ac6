import t from 'tap'
import { runCli } from './helpers/cli'

t.test('fastify-autocert without a command, with --help, an unknown command or a bad flag', async (t) => {
  const bare = await runCli([])
  t.equal(bare.code, 2, 'no command: exit code 2')
  t.match(bare.stdout, /^Usage: fastify-autocert <command> \[options\]/, 'and the usage')

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
