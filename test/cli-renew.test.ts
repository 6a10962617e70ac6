// `fastify-autocert renew` and `revoke`, run as a user would, while an instance of the fleet runs: real Pebble 2.10 (behind the ARI proxy) and Azurite.
import { X509Certificate } from 'node:crypto'
import http from 'node:http'
import { BlobServiceClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { getJson, startAriFleet, storedLeaf } from './helpers/ari'
import { main } from '../lib/cli/main'
import { runCli, type CliResult } from './helpers/cli'
import { freePort } from './support/ports'
import { eventually } from './support/app'
import { handshake } from './support/tls'

const DOMAIN = 'renew.example.test'
const CONTAINER = 'clirenew'
const ACCOUNT_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
/** How long an instance may take to adopt what the command stored: its next look at the renewal information (the proxy's Retry-After of 1 s makes that a minute, plus up to 6 s of spread). */
const ADOPTION = 150_000

/** Exit code 2 and one line on stderr, no stack trace, nothing on stdout. */
function oneLineError (t: Test, result: CliResult, command: string, pattern: RegExp): void {
  t.equal(result.code, 2, 'exit code 2')
  t.equal(result.stdout, '', 'nothing on stdout')
  t.match(result.stderr, new RegExp(`^fastify-autocert ${command}: ${pattern.source}\\n$`), 'one line that says why')
  t.notMatch(result.stderr, /\n\s+at /, 'never a stack trace')
}

/** Runs main() of the command line in this process, with its output captured. */
async function inProcess (args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  let stdout = ''
  let stderr = ''
  const stream = (append: (text: string) => void): NodeJS.WritableStream => ({ write: (chunk: string) => { append(chunk); return true } }) as unknown as NodeJS.WritableStream
  const code = await main(args, { stdout: stream((text) => { stdout += text }), stderr: stream((text) => { stderr += text }), env })
  return { code, stdout, stderr }
}

/** Neither the storage account key, a connection string nor any private key in anything printed. */
function noSecrets (t: Test, result: CliResult, connectionString: string): void {
  const printed = result.stdout + result.stderr
  t.notOk(printed.includes(ACCOUNT_KEY) || printed.includes(connectionString) || /PRIVATE KEY/.test(printed), 'no secret in the output')
}

// Seven runs of the command, each a process that compiles lib/ (15 s or more under coverage on a busy machine), and two waits for the fleet's next look at renewal information.
t.setTimeout(600_000)

t.test('renew and revoke from the command line, while the fleet runs', async (t) => {
  const { pebble, root, httpPort, azurite, ca, start } = await startAriFleet(t, CONTAINER, [DOMAIN])
  // Pebble validates on httpPort; the instance answers HTTP-01 behind this relay, which notes each answer. The
  // command's child process has no way to be on that port: every validation it gets is the instance's answer from the store.
  const instancePort = await freePort()
  const answers: Array<{ path: string, status: number }> = []
  const relay = http.createServer((req, res) => {
    const forward = http.request({ host: '127.0.0.1', port: instancePort, path: req.url, method: req.method, headers: req.headers }, (answer) => {
      answers.push({ path: req.url ?? '', status: answer.statusCode ?? 0 })
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    forward.on('error', () => res.writeHead(502).end())
    req.pipe(forward)
  })
  await new Promise<void>((resolve) => relay.listen(httpPort, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => { relay.closeAllConnections(); relay.close(resolve) }))

  const instance = await start('a', { httpPort: instancePort })
  await instance.waitForLog((l) => l.msg === 'certificate obtained')
  const first = (await handshake(instance.port, DOMAIN, root)).serial
  const { connectionString } = azurite
  const env = { AZURE_STORAGE_CONNECTION_STRING: connectionString, AZURE_STORAGE_CONTAINER: CONTAINER, ACME_DIRECTORY_URL: ca.directoryUrl, NODE_EXTRA_CA_CERTS: ca.caFile }
  const challenges = (): number => answers.filter((a) => a.path.startsWith('/.well-known/acme-challenge/') && a.status === 200).length

  t.test('renew: one order, validated by the instance from the store, and the instance then serves the new serial', async (t) => {
    const orders = pebble.orderCount()
    const validations = challenges()
    const result = await runCli(['renew', DOMAIN], env)
    t.equal(result.code, 0, 'exit code 0')
    const line = new RegExp(`^renewed ${DOMAIN.replace(/\./g, '\\.')} \\(ecdsa\\): serial ([0-9A-F]+), not after (\\S+), replacing ${first}\\n`).exec(result.stdout)
    t.ok(line, `the new serial, its expiry and the one it replaces: ${result.stdout}`)
    const serial = line?.[1] as string
    t.not(serial, first, 'a new certificate')
    t.ok(Date.parse(line?.[2] as string) > Date.now() + 80 * 86_400_000, 'not after is the 90-day certificate\'s')
    t.match(result.stdout, /adopt it at their next look at the renewal information/, 'says when the fleet adopts it')
    t.equal(result.stderr, '', 'nothing on stderr')
    t.equal(pebble.orderCount(), orders + 1, 'exactly one new order at Pebble')
    t.ok(challenges() > validations, 'the CA\'s validation was answered (200) by the instance, from the store')
    await eventually(async () => (await handshake(instance.port, DOMAIN, root)).serial === serial, ADOPTION)
    t.pass('the running instance serves the new serial')
    noSecrets(t, result, connectionString)
  })

  let renewed = ''
  t.test('renew --json --verbose: the result as JSON, the plugin\'s log lines on stderr (scrubbed)', async (t) => {
    const before = (await handshake(instance.port, DOMAIN, root)).serial
    const orders = pebble.orderCount()
    const result = await runCli(['renew', DOMAIN, '--json', '--verbose'], env)
    t.equal(result.code, 0, 'exit code 0')
    const json = JSON.parse(result.stdout) as { domain: string, certificates: Array<{ keyType: string, serial: string, notAfter: string, previousSerial: string }> }
    t.equal(json.domain, DOMAIN)
    t.equal(json.certificates.length, 1, 'one certificate: the one key type stored')
    const [cert] = json.certificates
    t.match(cert, { keyType: 'ecdsa', serial: /^[0-9A-F]+$/, previousSerial: before }, 'the new serial, and the one it replaces')
    t.ok(Number.isFinite(Date.parse(cert.notAfter)), 'notAfter as an ISO date')
    renewed = cert.serial
    t.equal(pebble.orderCount(), orders + 1, 'one order')
    const logs = result.stderr.trim().split('\n').map((l) => JSON.parse(l) as { level: string, msg: string })
    t.ok(logs.some((l) => l.msg === 'certificate renewed'), 'the plugin\'s log lines, as JSON')
    t.ok(logs.some((l) => l.msg === 'ordering certificate' && (l as { replaces?: string }).replaces === before), 'the order named what it replaces')
    noSecrets(t, result, connectionString)
  })

  t.test('revoke --reason keyCompromise: replaced, revoked at Pebble, and the instance no longer serves it', async (t) => {
    const orders = pebble.orderCount()
    const result = await runCli(['revoke', DOMAIN, '--reason', 'keyCompromise'], env)
    t.equal(result.code, 0, 'exit code 0')
    const line = new RegExp(`^revoked ${DOMAIN.replace(/\./g, '\\.')} \\(ecdsa\\): serial ${renewed}, reason keyCompromise; replaced by ([0-9A-F]+), not after (\\S+)\\n`).exec(result.stdout)
    t.ok(line, `the revoked serial, the reason and the replacement: ${result.stdout}`)
    const replacement = line?.[1] as string
    t.not(replacement, renewed)
    t.equal(pebble.orderCount(), orders + 1, 'one replacement order')
    const status = await getJson(`${pebble.managementUrl}/cert-status-by-serial/${renewed.toLowerCase()}`, [pebble.caCert])
    t.match(status, { Status: 'Revoked', Reason: 1 }, 'Pebble has it revoked, for keyCompromise')
    await eventually(async () => (await handshake(instance.port, DOMAIN, root)).serial === replacement, ADOPTION)
    t.pass('the running instance serves the replacement, not the revoked serial')
    const leaf = await storedLeaf(BlobServiceClient.fromConnectionString(connectionString).getContainerClient(CONTAINER), DOMAIN)
    t.equal(new X509Certificate(leaf).serialNumber.toUpperCase(), replacement, 'the store holds the replacement')
    noSecrets(t, result, connectionString)
  })

  t.test('revoke --json without a reason', async (t) => {
    const before = (await handshake(instance.port, DOMAIN, root)).serial
    // The fleet's settings as flags and variables: its CA, contact, profile (Pebble's one, "default") and order budget.
    const result = await runCli(['revoke', DOMAIN, '--json', '--directory-url', ca.directoryUrl, '--email', 'ops@example.test', '--max-orders-per-hour', '50'],
      { ...env, ACME_DIRECTORY_URL: 'https://127.0.0.1:1/not-this-one', ACME_PROFILE: 'default' })
    t.equal(result.code, 0, 'exit code 0')
    const json = JSON.parse(result.stdout) as { domain: string, reason: null, certificates: Array<{ keyType: string, revokedSerial: string, replacement: { serial: string, notAfter: string } }> }
    t.match(json, { domain: DOMAIN, reason: null, certificates: [{ keyType: 'ecdsa', revokedSerial: before, replacement: { serial: /^[0-9A-F]+$/ } }] })
    t.match(await getJson(`${pebble.managementUrl}/cert-status-by-serial/${before.toLowerCase()}`, [pebble.caCert]), { Status: 'Revoked' }, 'revoked at Pebble')
    noSecrets(t, result, connectionString)
  })

  t.test('errors, as a user sees them: one line, exit code 2; a bad reason or an unknown name asks nothing of the CA', async (t) => {
    const orders = pebble.orderCount()
    // The instance's own looks at renewal information go on meanwhile: every other request counts.
    const ordersAndAccounts = (): number => ca.proxy.seen.filter((s) => !s.path.startsWith(ca.renewalInfoPath)).length
    const requests = ordersAndAccounts()
    const down = await freePort()
    const [reason, unknown, caDown] = await Promise.all([
      runCli(['revoke', DOMAIN, '--reason', 'bored'], env),
      runCli(['revoke', 'unknown.example.test'], env),
      runCli(['renew', DOMAIN], { ...env, ACME_DIRECTORY_URL: `https://127.0.0.1:${down}/dir` })
    ])
    oneLineError(t, reason, 'revoke', /--reason "bored" is not a revocation reason: one of unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation/)
    oneLineError(t, unknown, 'revoke', /no certificate of unknown\.example\.test in container clirenew at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1: the fleet obtains a name's first certificate itself/)
    t.equal(pebble.orderCount(), orders, 'no order')
    t.equal(ordersAndAccounts(), requests, 'not one request of theirs reached the CA')
    oneLineError(t, caDown, 'renew', /FST_AUTOCERT_ORDER_FAILED: could not obtain a certificate for renew\.example\.test: connect ECONNREFUSED 127\.0\.0\.1:\d+/)
    for (const result of [reason, unknown, caDown]) noSecrets(t, result, connectionString)
  })

  t.test('errors of the settings, in this process (main() itself, for speed): one line, exit code 2, before any order', async (t) => {
    const orders = pebble.orderCount()
    oneLineError(t, await inProcess(['renew', DOMAIN, '--key-type', 'rsa'], env), 'renew', /no rsa certificate of renew\.example\.test in .* \(stored: ecdsa\)/)
    oneLineError(t, await inProcess(['renew', DOMAIN, '--key-type', 'dsa'], env), 'renew', /--key-type "dsa": expected ecdsa or rsa/)
    oneLineError(t, await inProcess(['renew', DOMAIN, '--max-orders-per-hour', 'lots'], env), 'renew', /--max-orders-per-hour "lots": expected a positive whole number, the fleet's maxOrdersPerHour/)
    oneLineError(t, await inProcess(['renew', DOMAIN, '--max-orders-per-hour', '0'], env), 'renew', /--max-orders-per-hour "0": expected a positive whole number, the fleet's maxOrdersPerHour/)
    oneLineError(t, await inProcess(['renew', DOMAIN], { ...env, ACME_DIRECTORY_URL: undefined }), 'renew',
      /name the fleet's CA, where its account is registered: --directory-url or ACME_DIRECTORY_URL/)
    oneLineError(t, await inProcess(['renew', '1.2.3.4.5'], env), 'renew', /"1\.2\.3\.4\.5" is not a name a CA issues for \(a host name, \*\.<host name> or an IP address\)/)
    oneLineError(t, await inProcess(['renew', DOMAIN], { ...env, ACME_DIRECTORY_URL: 'http://insecure.example.test/dir' }), 'renew', /FST_AUTOCERT_INVALID_DIRECTORY_URL: .*/)
    oneLineError(t, await inProcess(['renew', DOMAIN, '--dir', '/nonexistent', '--connection-string', connectionString], env), 'renew', /--dir and --connection-string each name a store: give one/)
    const missing = await inProcess(['renew', DOMAIN], { ...env, AZURE_STORAGE_CONTAINER: 'nosuchcontainer' })
    oneLineError(t, missing, 'renew', /no container nosuchcontainer at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1: check --container \(AZURE_STORAGE_CONTAINER\) or the container URL/)
    t.notOk(await BlobServiceClient.fromConnectionString(connectionString).getContainerClient('nosuchcontainer').exists(), 'a misspelt container is not created')
    // A container with the certificate but not the fleet's account: never a new account.
    const service = BlobServiceClient.fromConnectionString(connectionString)
    const bare = service.getContainerClient('noaccount')
    await bare.create()
    const bundle = await service.getContainerClient(CONTAINER).getBlockBlobClient(DOMAIN).downloadToBuffer()
    await bare.getBlockBlobClient(DOMAIN).uploadData(bundle)
    const noAccount = await inProcess(['revoke', DOMAIN], { ...env, AZURE_STORAGE_CONTAINER: 'noaccount' })
    oneLineError(t, noAccount, 'revoke', /no ACME account in container noaccount at .*: the fleet registers it with its first order/)
    t.equal(pebble.orderCount(), orders, 'no order')
    noSecrets(t, noAccount, connectionString)
  })
})
