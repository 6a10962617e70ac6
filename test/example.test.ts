import { execFileSync, spawn } from 'node:child_process'
import path from 'node:path'
import t, { type Test } from 'tap'

// Azurite's well-known development account key: public, but a connection string
// in output is the habit this test guards against.
const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

// Live processes in process group `pgid`, as `pid args` lines. A zombie (an exited
// esbuild service of tsx, say, until init reaps it) holds nothing: not counted.
function processesIn (pgid: number): string[] {
  return execFileSync('ps', ['-e', '-o', 'pgid=,pid=,stat=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter(([group, , stat]) => Number(group) === pgid && !stat?.startsWith('Z'))
    .map(([, pid, , ...args]) => `${pid} ${args.join(' ')}`)
}

// The Fastify server, the Express app and the node:https server: one playground, the same checks.
const EXAMPLES = { example: 'server.ts', 'example:express': 'express.ts', 'example:https': 'https.ts' }
for (const [script, file] of Object.entries(EXAMPLES)) {
  t.test(`npm run ${script}: the playground obtains, serves, verifies and stores a certificate, then cleans up`, async (t) => {
    await runPlayground(t, script, file)
  })
}

async function runPlayground (t: Test, script: string, file: string): Promise<void> {
  const env: NodeJS.ProcessEnv = { ...process.env, EXAMPLE_EXIT_AFTER_CHECK: '1' }
  delete env.ACME_DIRECTORY_URL
  delete env.AZURE_STORAGE_CONNECTION_STRING
  // tap follows spawned processes into coverage. The playground runs lib/ through
  // tsx, whose source maps do not line up with tap's own: merged, they showed lib/
  // branches as uncovered and failed the 100% gate about one run in three. lib/ is
  // covered by its own tests; @tapjs/processinfo's switch leaves this tree out.
  env._TAPJS_PROCESSINFO_COVERAGE_ = '0'

  // Its own process group: whatever the playground starts stays in it, so a
  // leftover is found (and, on failure, killed) by group id, not by name.
  const child = spawn('npm', ['run', '--silent', script], {
    cwd: path.resolve(__dirname, '..'), env, detached: true, stdio: ['ignore', 'pipe', 'pipe']
  })
  const pgid = child.pid as number
  t.teardown(() => {
    try { process.kill(-pgid, 'SIGKILL') } catch {}
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => { output += d.toString() })
  child.stderr.on('data', (d: Buffer) => { output += d.toString() })
  const started = performance.now()
  const code = await new Promise<number | string>((resolve) => child.on('close', (c, signal) => resolve(c ?? String(signal))))
  t.comment(`playground ran for ${Math.round(performance.now() - started)} ms`)

  t.equal(code, 0, 'exits 0 after the self-check', { output })
  t.match(output, `fastify-autocert playground: example/${file} against`, `runs example/${file}`)
  const serial = /^ +serial ([0-9A-F]+), valid to/m.exec(output)?.[1]
  t.ok(serial, 'prints the serial of the certificate served', { output })
  t.match(output, new RegExp(`certificate obtained domain=www\\.example\\.test keyType=ecdsa serial=${serial} `),
    'the served certificate is the one the server logged as obtained')
  t.match(output, /TLS +verified: the chain verifies against this run's Pebble root/, 'says it verified')
  t.match(output, /stored in +container autocertcache, blob www\.example\.test/, 'says where it is stored')
  t.notOk(output.includes(AZURITE_KEY), 'never prints the account key')
  t.notOk(output.includes('AccountKey='), 'never prints the connection string')
  t.notOk(output.includes('PRIVATE KEY'), 'never prints a private key')
  t.match(output, /the server exited by itself after SIGTERM, code 0\n/, 'the server\'s close left nothing open')
  t.match(output, /stopped: server, Pebble, Azurite\n/, 'says it stopped everything')
  t.same(processesIn(pgid), [], 'no Pebble, challtestsrv, Azurite or server process remains')
}
