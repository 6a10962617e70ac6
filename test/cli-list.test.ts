import { randomBytes, X509Certificate } from 'node:crypto'
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { rootCertificates } from 'node:tls'
import { BlobServiceClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { AzureBlobStore, FileStore, MemoryStore, type CertStore } from '../lib'
import { decodeBundle, encodeBundle } from '../lib/certificate'
import { CodedStore } from '../lib/store/coded'
import { EncryptedStore } from '../lib/store/encrypted'
import { lockPaths } from '../lib/store/keys'
import { runCli, type CliResult } from './helpers/cli'
import { startServices } from './helpers/services'
import { eventually, startApp } from './support/app'
import { freePort } from './support/ports'

// Every output of every run, checked at the end for secrets.
const outputs: CliResult[] = []
async function cli (args: string[], env: NodeJS.ProcessEnv): Promise<CliResult> {
  const result = await runCli(args, env)
  outputs.push(result)
  return result
}

const A = 'a.example.test'
const B = 'b.example.test'
const FAIL = 'fail.example.test'
const HOLDER = 'operator-on-duty'
const KEY = randomBytes(32).toString('base64')
const WRONG_KEY = randomBytes(32).toString('base64')

interface Entry {
  domain: string
  keyType: string
  storeKey: string
  certificate: string
  serial?: string
  issuer?: string
  notAfter?: string
  daysLeft?: number
  renewal?: { at: string, source: string, window?: { start: string, end: string } }
  failure?: { failures: number, error: string, retryAt: string } | { unusable: string }
  lock?: { state: string, holder?: string }
  problem?: string
  attention: boolean
}

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'autocert-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

// About 25 runs of the command line, each a process that loads the TypeScript
// sources afresh (a few seconds each on a busy 2-core machine), after three apps.
t.setTimeout(600_000)

t.test('list, show and export against a store the plugin filled', async (t) => {
  const { azurite, pebble, httpPort } = await startServices(t)
  const container = 'cli'
  const env = { AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString, AZURE_STORAGE_CONTAINER: container }
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container })

  // A name whose validation fails: its HTTP-01 listener is not where Pebble validates, so its order fails and the fleet records it.
  const failing = await startApp(pebble, await freePort(), newStore(), { domains: [FAIL], retryDelays: [3_600_000] })
  await eventually(() => failing.logs.some((l) => l.msg === 'certificate order failed'), 60_000)
  await failing.app.close()

  const store = newStore()
  t.teardown(() => store.close())
  // Each app runs until its certificates and their renewal-information records (Pebble 2.10 gives windows) are stored.
  const serials: Record<string, string | undefined> = {}
  for (const [domains, keyType] of [[[A], 'ecdsa'], [[B], ['ecdsa', 'rsa']]] as const) {
    const app = await startApp(pebble, httpPort, newStore(), { domains: [...domains], keyType: typeof keyType === 'string' ? keyType : [...keyType] })
    await eventually(() => app.app.autocert.status().every((s) => s.serial !== undefined), 60_000)
    for (const s of app.app.autocert.status()) serials[s.keyType === 'rsa' ? `${s.domain}+rsa` : s.domain] = s.serial
    const keys = app.app.autocert.status().map((s) => `${s.keyType === 'rsa' ? `${s.domain}+rsa` : s.domain}+ari`)
    await eventually(async () => { const stored = await store.list(); return keys.every((k) => stored.includes(k)) }, 30_000)
    await app.app.close()
  }
  const bundles: Record<string, string> = {}
  for (const key of [A, B, `${B}+rsa`]) bundles[key] = String(await store.get(key))

  const lock = await store.lock(A, undefined, { holder: HOLDER })
  // The holder is recorded on the lock blob just after the lock is taken (not awaited by lock()).
  await eventually(async () => (await store.lockState(A)).holder === HOLDER)

  await t.test('list: soonest expiry first, the failing name before all, the held lock and its holder', async (t) => {
    const human = await cli(['list'], env)
    t.equal(human.code, 1, 'exit code 1: a name has no certificate while its orders fail')
    t.equal(human.stderr, '', 'nothing on stderr')
    const lines = human.stdout.split('\n')
    t.match(lines[0], /^store: container cli at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1$/, 'the store first, without its key')
    t.match(lines[1], /^DOMAIN\s+KEY\s+SERIAL\s+ISSUER\s+NOT AFTER\s+DAYS\s+NEXT RENEWAL\s+FAILURES\s+LOCK$/, 'the table head')
    t.match(lines[2], new RegExp(`^${FAIL}\\s+ecdsa\\s+missing\\s+1\\s+-$`), 'the failing name first: no certificate, one failure, its lock free')
    const order = lines.slice(3, 6).map((l) => l.split(/\s+/).slice(0, 3))
    t.same(order.map((o) => o[2]), [serials[A], serials[B], serials[`${B}+rsa`]], 'then the certificates, soonest expiry first (in the order they were issued)')
    t.same(order.map((o) => o.slice(0, 2)), [[A, 'ecdsa'], [B, 'ecdsa'], [B, 'rsa']], 'each with its domain and key type')
    t.match(lines[3], /Pebble Intermediate CA/, 'the issuer')
    t.match(lines[3], /\s89\s+\d{4}-\d\d-\d\d \d\d:\d\dZ \(ARI\)\s+held by operator-on-duty$/, '89 days left, the renewal time in the CA\'s window, the lock held by its holder')
    t.match(human.stdout, new RegExp(`${FAIL}: no certificate stored, and its orders fail\n${FAIL}: 1 failed order, last at .+Z, next try .+Z: `), 'the failure record below the table')
    t.match(human.stdout, /\n3 certificates; 1 needs attention \(expiring within 14 days, unusable, or missing while orders fail\)\n$/, 'and a summary')
    t.notMatch(human.stdout, /\x1b\[/, 'no colours when stdout is not a terminal') // eslint-disable-line no-control-regex

    const json = await cli(['list', '--json'], env)
    t.equal(json.code, 1)
    const listing = JSON.parse(json.stdout) as { store: string, sealed: boolean, warnDays: number, certificates: Entry[] }
    t.equal(listing.warnDays, 14, '--warn-days defaults to 14')
    t.equal(listing.sealed, false)
    const [failed, ...certs] = listing.certificates
    t.match(failed, { domain: FAIL, certificate: 'missing', attention: true, failure: { failures: 1, error: String }, lock: { state: 'free' } }, 'the failing name: its failure record')
    t.notOk('serial' in failed)
    t.same(certs.map((c) => c.serial), [serials[A], serials[B], serials[`${B}+rsa`]], 'the serials the plugin serves, soonest expiry first')
    const times = certs.map((c) => Date.parse(c.notAfter as string))
    t.ok(times[0] <= times[1] && times[1] <= times[2], 'ordered by notAfter')
    for (const c of certs) {
      t.match(c, { certificate: 'ok', issuer: /^Pebble Intermediate CA/, daysLeft: 89, attention: false, renewal: { source: 'ari', window: { start: String, end: String } } }, `${c.storeKey}: issuer, days left, the fleet's time in the CA's window`)
      const renewAt = Date.parse(c.renewal?.at as string)
      t.ok(renewAt >= Date.parse(c.renewal?.window?.start as string) && renewAt <= Date.parse(c.renewal?.window?.end as string), 'the renewal time is in the window')
      t.notOk('failure' in c, 'no failure record')
    }
    t.same(certs[0].lock, { state: 'held', holder: HOLDER }, 'the held lock and its holder')
    t.same(certs[1].lock, { state: 'free' })

    const late = await cli(['list', '--warn-days', '100'], env)
    t.equal(late.code, 1, '--warn-days 100 > the 90-day lifetime: exit code 1')
    t.match(late.stdout, /4 need attention \(expiring within 100 days/)
    const bad = await cli(['list', '--warn-days', 'soon'], env)
    t.equal(bad.code, 2, 'a --warn-days that is not a number: exit code 2')
    t.equal(bad.stderr, 'fastify-autocert list: --warn-days must be a number of days, 0 or more (default 14): got "soon"\n', 'one line')

    await store.delete(`${FAIL}+failure`)
    const coloured = await cli(['list', '--warn-days', '30'], { ...env, FORCE_COLOR: '1' })
    t.equal(coloured.code, 0, 'once the failing name is gone, nothing needs attention: exit code 0')
    t.match(coloured.stdout, /3 certificates; none needs attention/)
    t.match(coloured.stdout, /\x1b\[32m89\x1b\[39m/, 'colours when asked for (FORCE_COLOR, as on a terminal): green days left') // eslint-disable-line no-control-regex
  })
  await lock.release()

  await t.test('show: each key type, its chain, verified, and the key matched', async (t) => {
    const human = await cli(['show', 'B.Example.Test.'], env)
    t.equal(human.code, 0, 'exit code 0')
    t.equal(human.stderr, '')
    t.match(human.stdout, `\n${B} (ecdsa, store key ${B})\n  1. CN=${B}\n     names:    ${B}\n     issuer:   Pebble Intermediate CA`, 'the name normalised as the plugin does; the leaf: subject, names, issuer')
    t.match(human.stdout, `\n${B} (rsa, store key ${B}+rsa)\n`, 'and the RSA certificate')
    t.match(human.stdout, /key:\s+ecdsa P-256\n[\s\S]*key:\s+rsa 2048\n/, 'the key types and sizes')
    t.match(human.stdout, / {2}2\. CN=Pebble Intermediate CA [0-9a-f]+\n/, 'the intermediate')
    t.equal(human.stdout.match(/chain: {4}each certificate is signed by the next/g)?.length, 2, 'both chains verify')
    t.equal(human.stdout.match(/root: {5}issued by Pebble Root CA [0-9a-f]+, not one of Node's trusted roots \(a private or test CA\)/g)?.length, 2, 'Pebble\'s root is not one of Node\'s trusted roots, and it says so')
    t.equal(human.stdout.match(/key: {6}the private key matches the leaf/g)?.length, 2, 'both keys match')
    t.match(human.stdout, /expires: {2}in 89 days/)

    const json = await cli(['show', B, '--json'], env)
    t.equal(json.code, 0)
    const shown = JSON.parse(json.stdout) as { domain: string, certificates: Array<{ keyType: string, chain: Array<{ names: string[], key: string, serial: string }>, verifies: { ok: boolean }, root: { trusted: boolean }, keyMatches: boolean }> }
    t.equal(shown.domain, B)
    t.same(shown.certificates.map((c) => [c.keyType, c.chain[0].serial, c.chain[0].key]), [['ecdsa', serials[B], 'ecdsa P-256'], ['rsa', serials[`${B}+rsa`], 'rsa 2048']])
    for (const c of shown.certificates) {
      t.same(c.chain[0].names, [B], 'the SANs')
      t.equal(c.chain.length, 2, 'leaf and intermediate, as stored')
      t.match(c, { verifies: { ok: true }, root: { trusted: false }, keyMatches: true })
    }

    const none = await cli(['show', 'nothing.example.test'], env)
    t.equal(none.code, 2, 'a name without a certificate: exit code 2')
    t.match(none.stderr, /^fastify-autocert show: no certificate for nothing\.example\.test in container cli at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1\n$/, 'one line')
    const notName = await cli(['show', '010.0.0.1'], env)
    t.equal(notName.code, 2)
    t.equal(notName.stderr, 'fastify-autocert show: "010.0.0.1" is not a host name a certificate is issued for\n')
  })

  await t.test('export: the PEM files, the key 0600, never printed', async (t) => {
    const dir = path.join(await tempDir(t), 'live', B)
    const done = await cli(['export', B, '--key-type', 'rsa', '--out', dir], env)
    t.equal(done.code, 0, 'exit code 0')
    t.equal(done.stdout, `wrote ${B} (rsa, serial ${String(serials[`${B}+rsa`])}, not after ${new Date(decodeBundle(B, `${B}+rsa`, bundles[`${B}+rsa`]).notAfter).toISOString()}) to ${dir}:\n  privkey.pem (mode 0600), fullchain.pem, cert.pem, chain.pem\n`, 'where it wrote, and what')
    const stored = decodeBundle(B, `${B}+rsa`, bundles[`${B}+rsa`])
    const file = (name: string): Promise<string> => readFile(path.join(dir, name), 'utf8')
    t.equal((await stat(dir)).mode & 0o777, 0o700, 'the directory it created: 0700')
    t.equal((await stat(path.join(dir, 'privkey.pem'))).mode & 0o777, 0o600, 'privkey.pem: 0600')
    t.equal((await stat(path.join(dir, 'fullchain.pem'))).mode & 0o777, 0o644, 'fullchain.pem: 0644')
    t.equal(await file('privkey.pem'), `${stored.key.trim()}\n`, 'the stored key')
    t.equal(await file('fullchain.pem'), `${stored.chain.trim()}\n`, 'the stored chain')
    t.equal(`${await file('cert.pem')}${await file('chain.pem')}`, await file('fullchain.pem'), 'cert.pem and chain.pem make the full chain')
    t.equal(new X509Certificate(await file('cert.pem')).serialNumber.toUpperCase(), serials[`${B}+rsa`], 'cert.pem is the leaf')
    t.ok(new X509Certificate(await file('cert.pem')).checkIssued(new X509Certificate(await file('chain.pem'))), 'chain.pem its issuer')

    const again = await cli(['export', B, '--key-type', 'rsa', '--out', dir], env)
    t.equal(again.code, 2, 'files there: exit code 2')
    t.equal(again.stderr, `fastify-autocert export: privkey.pem, fullchain.pem, cert.pem, chain.pem exist in ${dir}: pass --force to replace them\n`)
    await writeFile(path.join(dir, 'privkey.pem'), 'old', { mode: 0o644 })
    const forced = await cli(['export', B, '--out', dir, '--force', '--json'], env)
    t.equal(forced.code, 0, '--force replaces them')
    t.match(JSON.parse(forced.stdout), { domain: B, keyType: 'ecdsa', serial: serials[B], dir, files: ['privkey.pem', 'fullchain.pem', 'cert.pem', 'chain.pem'] })
    t.equal((await stat(path.join(dir, 'privkey.pem'))).mode & 0o777, 0o600, 'a replaced key file is 0600 again')
    t.equal(await file('privkey.pem'), `${decodeBundle(B, B, bundles[B]).key.trim()}\n`, 'now the ECDSA key')

    const elsewhere = path.join(await tempDir(t), 'elsewhere')
    await writeFile(elsewhere, 'not to be touched', { mode: 0o644 })
    await rm(path.join(dir, 'privkey.pem'))
    await symlink(elsewhere, path.join(dir, 'privkey.pem'))
    t.equal((await cli(['export', B, '--out', dir, '--force'], env)).code, 0, '--force over a symbolic link')
    t.equal(await readFile(elsewhere, 'utf8'), 'not to be touched', 'the link is replaced, never written through')
    t.notOk((await lstat(path.join(dir, 'privkey.pem'))).isSymbolicLink(), 'privkey.pem is a file of its own again')
    t.same((await readdir(dir)).sort(), ['cert.pem', 'chain.pem', 'fullchain.pem', 'privkey.pem'], 'no temporary file left behind')

    for (const [args, message] of [
      [['export', B], 'fastify-autocert export: --out DIR is required: the directory the PEM files are written to'],
      [['export', B, '--out', dir, '--key-type', 'dsa'], 'fastify-autocert export: --key-type must be ecdsa or rsa: got "dsa"'],
      [['export', A, '--out', dir, '--key-type', 'rsa'], /^fastify-autocert export: no rsa certificate for a\.example\.test in container cli at \S+ \(there is: ecdsa; pass --key-type\)\n$/]
    ] as const) {
      const result = await cli([...args], env)
      t.equal(result.code, 2, `${args.join(' ')}: exit code 2`)
      t.match(result.stderr, message, 'one line that says why')
      t.equal(result.stderr.split('\n').length, 2, 'and only one')
    }
    const none = await cli(['export', 'nothing.example.test', '--out', dir], env)
    t.match(none.stderr, /^fastify-autocert export: no ecdsa certificate for nothing\.example\.test in container cli at .+\n$/, 'no certificate at all: no list of others')
  })

  await t.test('a FileStore (--dir): the lifetime rule, a stale and a held lock file, an unusable entry, an empty store', async (t) => {
    const dir = await tempDir(t)
    const files = new FileStore(dir)
    t.teardown(() => files.close())
    for (const [key, bundle] of Object.entries(bundles)) await files.put(key, bundle)
    await files.put('bad.example.test', 'not a certificate')
    await files.put('acme_account+key', 'not listed')
    // A lock file its holder stopped refreshing 20 s ago (a crashed process).
    await writeFile(path.join(dir, lockPaths.file(A)), 'owner\ncrashed-instance')
    const past = new Date(Date.now() - 20_000)
    await utimes(path.join(dir, lockPaths.file(A)), past, past)
    const held = await files.lock(B, undefined, { holder: HOLDER })
    t.teardown(() => held.release())

    const human = await cli(['list', '--dir', dir], {})
    t.equal(human.code, 1, 'an unusable entry: exit code 1')
    t.match(human.stdout, `store: directory ${dir}\n`)
    t.match(human.stdout, /\nbad\.example\.test\s+ecdsa\s+unusable\s+-\n/, 'the unusable entry, listed first')
    t.match(human.stdout, '\nbad.example.test: stored data under bad.example.test is unusable: no private key\n', 'and why')
    t.match(human.stdout, /\(lifetime\)\s+stale by crashed-instance\n/, 'a stale lock file, with its holder')
    t.match(human.stdout, /\(lifetime\)\s+held by operator-on-duty\n/, 'a held one')
    const json = await cli(['list', '--dir', dir, '--json'], {})
    const listing = JSON.parse(json.stdout) as { certificates: Entry[] }
    t.same(listing.certificates.map((c) => c.storeKey), ['bad.example.test', A, B, `${B}+rsa`], 'the account key is not a certificate')
    for (const c of listing.certificates.slice(1)) {
      t.equal(c.renewal?.source, 'lifetime', `${c.storeKey}: no renewal-information record here: the lifetime rule`)
      const cert = decodeBundle(c.domain, c.storeKey, bundles[c.storeKey])
      const third = cert.notAfter - (cert.notAfter - cert.notBefore) / 3
      t.ok(Math.abs(Date.parse(c.renewal?.at as string) - third) < 1, 'when a third of its lifetime remains (the latest an instance renews)')
    }
    await files.delete('bad.example.test')

    const missing = await cli(['list', '--dir', path.join(dir, 'empty')], {})
    t.equal(missing.code, 2, 'a directory that does not exist: exit code 2, not an empty listing')
    t.equal(missing.stderr, `fastify-autocert list: no directory ${path.join(dir, 'empty')}: check --dir\n`)
    t.notOk(await stat(path.join(dir, 'empty')).then(() => true, () => false), 'and it is not created')
    await mkdir(path.join(dir, 'empty'), { mode: 0o700 })
    const empty = await cli(['list', '--dir', path.join(dir, 'empty')], {})
    t.equal(empty.code, 0)
    t.equal(empty.stdout, `store: directory ${path.join(dir, 'empty')}\nno certificates\n`, 'an empty store says so')
  })

  await t.test('show: a chain that does not verify, a key that does not match, a chain ending at a system root', async (t) => {
    const dir = await tempDir(t)
    const files = new FileStore(dir)
    t.teardown(() => files.close())
    const ecdsa = decodeBundle(B, B, bundles[B])
    const rsa = decodeBundle(B, `${B}+rsa`, bundles[`${B}+rsa`])
    const leaf = (ecdsa.chain.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/) as RegExpMatchArray)[0]
    await files.put(B, encodeBundle({ key: rsa.key, chain: `${leaf}\n${rootCertificates[0]}` }))
    const human = await cli(['show', B, '--dir', dir], {})
    t.equal(human.code, 1, 'exit code 1')
    t.match(human.stdout, '  chain:    does not verify: certificate 1 is not signed by certificate 2\n')
    t.match(human.stdout, / {2}root: {5}issued by .+, one of Node's trusted roots\n/, 'the last certificate is one of Node\'s trusted roots')
    t.match(human.stdout, '  key:      the private key does not match the leaf\n')
  })

  await t.test('a sealed store: listed with its key; with another key or none, each entry says so', async (t) => {
    const sealedEnv = { ...env, AZURE_STORAGE_CONTAINER: 'sealed' }
    const plain = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'sealed' })
    t.teardown(() => plain.close())
    const sealed = new EncryptedStore(plain, { key: KEY })
    for (const [key, bundle] of Object.entries(bundles)) await sealed.put(key, bundle)
    await sealed.put(`${A}+failure`, JSON.stringify({ failures: 2, error: 'the CA said no', at: Date.now(), retryAt: Date.now() + 60_000 }))

    const right = await cli(['list', '--json'], { ...sealedEnv, AUTOCERT_ENCRYPTION_KEY: KEY })
    t.equal(right.code, 0, 'with its key: exit code 0')
    const listing = JSON.parse(right.stdout) as { sealed: boolean, certificates: Entry[] }
    t.equal(listing.sealed, true)
    t.same(listing.certificates.map((c) => c.serial), [serials[A], serials[B], serials[`${B}+rsa`]], 'every certificate opened')
    t.match(listing.certificates[0].failure, { failures: 2, error: 'the CA said no' }, 'and the sealed failure record')

    const wrong = await cli(['list'], { ...sealedEnv, AUTOCERT_ENCRYPTION_KEY: WRONG_KEY })
    t.equal(wrong.code, 1, 'another key: exit code 1')
    t.match(wrong.stdout, /^store: container sealed at \S+ \(sealed\)\n/, 'the store line says it is read with a key')
    t.equal(wrong.stdout.match(/^[a-z.]+( \(rsa\))?: stored data under \S+ is unusable: sealed with a key that is not configured$/gm)?.length, 3, 'each certificate: sealed with a key that is not configured')
    t.match(wrong.stdout, `${A}: failure record unusable: stored data under ${A}+failure is unusable: sealed with a key that is not configured\n`, 'and the failure record')
    const none = await cli(['list', '--json'], sealedEnv)
    t.equal(none.code, 1, 'no key: exit code 1')
    for (const c of (JSON.parse(none.stdout) as { certificates: Entry[] }).certificates) {
      t.match(c, { certificate: 'unusable', problem: 'sealed: configure the encryption key it was written with (AUTOCERT_ENCRYPTION_KEY or --encryption-key)' }, `${c.storeKey}: sealed, and what to do`)
    }

    const shown = await cli(['show', B, '--encryption-key', WRONG_KEY], sealedEnv)
    t.equal(shown.code, 1, 'show with another key: exit code 1')
    t.match(shown.stdout, `${B} (ecdsa, store key ${B})\n  stored data under ${B} is unusable: sealed with a key that is not configured\n`)
    const exported = await cli(['export', B, '--out', path.join(await tempDir(t), 'x')], { ...sealedEnv, AUTOCERT_ENCRYPTION_KEY: WRONG_KEY })
    t.equal(exported.code, 2, 'export with another key: exit code 2')
    t.equal(exported.stderr, `fastify-autocert export: ${B}: stored data under ${B} is unusable: sealed with a key that is not configured\n`, 'one line')
  })

  await t.test('no secret in any output', async (t) => {
    t.ok(outputs.length > 20, `${outputs.length} runs checked`)
    const accountKey = (azurite.connectionString.match(/AccountKey=([^;]+)/) as RegExpMatchArray)[1]
    for (const { stdout, stderr } of outputs) {
      const text = stdout + stderr
      t.notOk(text.includes(accountKey), 'not the account key')
      t.notOk(/AccountKey=|PRIVATE KEY/.test(text), 'no AccountKey=, no private key')
      t.notOk(text.includes(KEY) || text.includes(WRONG_KEY), 'no encryption key')
      t.notMatch(text, /\n {4}at /, 'no stack trace')
    }
  })
})

t.test('lockState: free, held by its holder, stale, through the coded and sealed wrappers', async (t) => {
  const { azurite } = await startServices(t)
  const blob = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'locks' })
  t.teardown(() => blob.close())
  const dir = await tempDir(t)
  const file = new FileStore(dir)
  t.teardown(() => file.close())
  const memory = new MemoryStore()
  for (const [name, store] of [['AzureBlobStore', blob], ['FileStore', file], ['MemoryStore', memory]] as const) {
    t.same(await store.lockState('x.example.test'), { state: 'free' }, `${name}: a lock never taken is free`)
    const lock = await store.lock('x.example.test', undefined, { holder: 'instance-1' })
    await eventually(async () => (await store.lockState('x.example.test')).holder !== undefined)
    t.same(await store.lockState('x.example.test'), { state: 'held', holder: 'instance-1' }, `${name}: held, by its holder`)
    await lock.release()
    t.same(await store.lockState('x.example.test'), { state: 'free' }, `${name}: free again once released`)
    const anonymous = await store.lock('y.example.test')
    t.same(await store.lockState('y.example.test'), { state: 'held' }, `${name}: held, holder unknown`)
    await anonymous.release()
  }
  // A lock blob left without a lease: a crashed holder's, once its lease lapsed.
  await BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('locks').getBlockBlobClient(lockPaths.blob('z.example.test')).upload('', 0)
  t.same(await blob.lockState('z.example.test'), { state: 'stale' }, 'AzureBlobStore: a lock blob without a lease is stale')
  await writeFile(path.join(dir, lockPaths.file('z.example.test')), 'owner\n')
  const past = new Date(Date.now() - 20_000)
  await utimes(path.join(dir, lockPaths.file('z.example.test')), past, past)
  t.same(await file.lockState('z.example.test'), { state: 'stale' }, 'FileStore: an untouched lock file is stale')
  await mkdir(path.join(dir, lockPaths.file('w.example.test')))
  await t.rejects(file.lockState('w.example.test'), { code: 'EISDIR' }, 'FileStore: a lock file that cannot be read is an error, never free')

  const held = await memory.lock('x.example.test', undefined, { holder: 'instance-2' })
  t.same(await new EncryptedStore(new CodedStore(memory), { key: KEY }).lockState('x.example.test'), { state: 'held', holder: 'instance-2' }, 'passed through CodedStore and EncryptedStore')
  await held.release()
  const bare: CertStore = { get: memory.get.bind(memory), put: memory.put.bind(memory), delete: memory.delete.bind(memory), list: memory.list.bind(memory), lock: memory.lock.bind(memory) }
  t.equal(await new CodedStore(bare).lockState('x.example.test'), undefined, 'a store without lockState: the wrappers cannot tell')
  await t.rejects(new CodedStore(file).lockState('.bad'), { code: 'FST_AUTOCERT_STORE_FAILED' }, 'a failure is coded')
})
