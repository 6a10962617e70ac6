// `fastify-autocert doctor` run as an operator runs it, against real Azurite and Pebble 2.10: green on a good set-up, each failure seen.
import { randomBytes } from 'node:crypto'
import { chmod, mkdir, mkdtemp, rm, stat, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { BlobServiceClient, ContainerSASPermissions, StorageSharedKeyCredential, generateBlobSASQueryParameters } from '@azure/storage-blob'
import * as acme from 'acme-client'
import t, { type Test } from 'tap'
import { AzureBlobStore } from '../lib'
import { startCaProxy } from './helpers/ca-proxy'
import { runCli, type CliResult } from './helpers/cli'
import { startServices } from './helpers/services'
import { domainStatus, eventually, startApp } from './support/app'
import { freePort } from './support/ports'

const DOMAIN = 'doctor.example.test'
const CONTAINER = 'fleet'
const STORE_CHECKS = ['store reachable', 'credential', 'permission create', 'permission read', 'permission write', 'permission lease', 'permission list', 'permission delete', 'container private']
const CA_CHECKS = ['encryption', 'CA directory', 'account', 'clock']

interface Finding { check: string, status: string, detail: string, fix?: string }

// About 27 runs of the command, each a fresh process that loads the TypeScript sources (5 s on two idle cores, 15 s on busy ones).
t.setTimeout(900_000)

t.test('doctor', async (t) => {
  const { azurite, pebble, httpPort } = await startServices(t)
  const encryptionKey = randomBytes(32).toString('base64')
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString)
  const container = service.getContainerClient(CONTAINER)

  // A store the plugin filled, sealed: the account and one certificate.
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })
  const app = await startApp(pebble, httpPort, store, { domains: [DOMAIN], encryption: { key: encryptionKey } })
  await eventually(() => domainStatus(app, DOMAIN).serial !== undefined)
  await app.app.close()
  await store.close()

  const env = {
    AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString,
    AZURE_STORAGE_CONTAINER: CONTAINER,
    AUTOCERT_ENCRYPTION_KEY: encryptionKey,
    ACME_DIRECTORY_URL: pebble.directoryUrl,
    NODE_EXTRA_CA_CERTS: pebble.caFile
  }
  const secrets = [azurite.accountKey, encryptionKey]
  /** Runs doctor; asserts that no secret shows in its output, whatever it found. */
  const doctor = async (t: Test, args: string[], extra: NodeJS.ProcessEnv = {}, hidden: string[] = []): Promise<CliResult> => {
    const result = await runCli(['doctor', ...args], { ...env, ...extra })
    const all = result.stdout + result.stderr
    t.notOk([...secrets, ...hidden].some((s) => all.includes(s)), 'no account key, SAS signature or encryption key in the output')
    t.notMatch(all, /AccountKey=|PRIVATE KEY/, 'no connection string, no private key')
    t.notMatch(all, /\n {4}at /, 'no stack trace')
    return result
  }
  const findings = (result: CliResult): Finding[] => JSON.parse(result.stdout) as Finding[]
  const statuses = (result: CliResult): Record<string, string> => Object.fromEntries(findings(result).map((f) => [f.check, f.status]))
  const probes = async (): Promise<string[]> => {
    const names: string[] = []
    for await (const blob of container.listBlobsFlat({ includeDeleted: false })) if (blob.name.includes('doctor-probe')) names.push(blob.name)
    return names
  }

  t.test('a good set-up: every check passes, exit code 0', async (t) => {
    const human = await doctor(t, [])
    t.equal(human.code, 0, 'exit code 0')
    t.equal(human.stderr, '', 'nothing on stderr')
    const lines = human.stdout.trimEnd().split('\n')
    t.match(lines[0], `store: container ${CONTAINER} at http://127.0.0.1:${azurite.port}/devstoreaccount1`, 'the store named first, without its key')
    t.match(lines[1], `CA:    ${pebble.directoryUrl}`)
    for (const check of [...STORE_CHECKS, ...CA_CHECKS]) t.match(human.stdout, new RegExp(`^ok {4}${check} +\\S`, 'm'), `ok  ${check}`)
    t.match(human.stdout, /^ok +encryption +all \d+ stored values open with the configured key$/m)
    t.match(human.stdout, /^ok +CA directory +answered; terms of service: data:text\/plain,Do%20what%20thou%20wilt$/m, 'the CA\'s terms of service')
    t.match(human.stdout, new RegExp(`^ok +account +registered: ${pebble.directoryUrl.replace('/dir', '')}/my-account/`, 'm'))
    t.equal(lines.at(-1), 'all checks passed')
    t.notOk(human.stdout.includes('\u001b['), 'no colours: not a terminal')

    const json = await doctor(t, ['--json'])
    t.equal(json.code, 0)
    t.same(findings(json).map((f) => f.check), [...STORE_CHECKS, ...CA_CHECKS], 'one finding per check, in order')
    t.ok(findings(json).every((f) => f.status === 'ok' && f.fix === undefined && f.detail !== ''), 'all ok, none with a fix')
    t.same(await probes(), [], 'the probe is gone')
  })

  t.test('a wrong account key: the credential refused, with Azure\'s reason; the store checks skipped', async (t) => {
    const wrong = randomBytes(64).toString('base64')
    const result = await doctor(t, ['--json'], { AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString.replace(azurite.accountKey, wrong) }, [wrong])
    t.equal(result.code, 1, 'exit code 1')
    const credential = findings(result).find((f) => f.check === 'credential')
    // Azurite answers a bad shared-key signature with AuthorizationFailure (Azure: AuthenticationFailed), and its reason.
    t.match(credential, { status: 'fail', detail: /^refused: 403 AuthorizationFailure: Server failed to authenticate the request/, fix: /account key/ })
    const s = statuses(result)
    t.same(STORE_CHECKS.slice(2).map((c) => s[c]), STORE_CHECKS.slice(2).map(() => 'skip'), 'permissions and public access skipped, not failed again')
    t.same([s.encryption, s['CA directory'], s.account, s.clock], ['skip', 'ok', 'skip', 'ok'])
    t.equal(findings(result).filter((f) => f.status === 'fail').length, 1, 'one failure')
  })

  /** doctor with a container SAS of `permissions` instead of the connection string. */
  const withSas = async (t: Test, permissions: string): Promise<CliResult> => {
    const sas = generateBlobSASQueryParameters({
      containerName: CONTAINER, permissions: ContainerSASPermissions.parse(permissions), expiresOn: new Date(Date.now() + 3_600_000)
    }, new StorageSharedKeyCredential(azurite.accountName, azurite.accountKey))
    const env = { AZURE_STORAGE_CONNECTION_STRING: '', AZURE_STORAGE_CONTAINER: '', AZURE_STORAGE_CONTAINER_URL: `${azurite.blobEndpoint}/${CONTAINER}?${sas.toString()}` }
    return await doctor(t, ['--json'], env, [sas.signature, encodeURIComponent(sas.signature)])
  }

  t.test('a read-only SAS for the container: the missing permissions reported, nothing left behind', async (t) => {
    const result = await withSas(t, 'rl')
    t.equal(result.code, 1, 'exit code 1')
    const s = statuses(result)
    t.same(STORE_CHECKS.map((c) => s[c]), ['ok', 'ok', 'fail', 'ok', 'fail', 'fail', 'ok', 'fail', 'warn'], 'create, write, lease and delete refused; read and list allowed; the access policy unreadable')
    for (const permission of ['create', 'write', 'lease', 'delete']) {
      t.match(findings(result).find((f) => f.check === `permission ${permission}`), { detail: /^refused: 403 AuthorizationPermissionMismatch: /, fix: new RegExp(`the ${permission} permission \\(SAS: "[cwd]"`) })
    }
    t.match(findings(result).find((f) => f.check === 'container private'), { detail: /a SAS cannot/ })
    t.same([s.encryption, s.account], ['ok', 'ok'], 'reading is all the encryption and account checks need')
    t.same(await probes(), [], 'the probe left nothing behind (the lock blob neither)')
  })

  t.test('a SAS that may write but not read, list or delete: the probe reported left behind; the reading checks skipped', async (t) => {
    const result = await withSas(t, 'acw')
    t.equal(result.code, 1)
    const s = statuses(result)
    t.same(['create', 'read', 'write', 'lease', 'list', 'delete'].map((p) => s[`permission ${p}`]), ['ok', 'fail', 'ok', 'ok', 'fail', 'fail'])
    const left = findings(result).find((f) => f.check === 'probe removed')
    t.match(left, { status: 'fail', detail: /^the probe doctor-probe\+[0-9a-f]{12} could not be removed/, fix: /by hand/ })
    t.same([s.encryption, s.account], ['skip', 'skip'], 'nothing to read the stored values with')
    const names = await probes()
    t.same(names.map((n) => n.replace(/[0-9a-f]{12}$/, '*')).sort(), ['doctor-probe+*', 'locks/doctor-probe+*'], 'what it names is what is left')
    for (const name of names) {
      const blob = container.getBlobClient(name)
      await blob.getBlobLeaseClient().breakLease(0).catch(() => {})
      await blob.delete()
    }
  })

  t.test('a wrong encryption key, and none: the stored values do not open; the account check skipped', async (t) => {
    const other = randomBytes(32).toString('base64')
    const wrong = await doctor(t, ['--json', '--encryption-key', other], {}, [other])
    t.equal(wrong.code, 1)
    t.match(findings(wrong).find((f) => f.check === 'encryption'), { status: 'fail', detail: /^(\d+) of \1 stored values do not open with the configured key \(the account key among them\)$/, fix: /AUTOCERT_ENCRYPTION_KEY/ })
    t.match(findings(wrong).find((f) => f.check === 'account'), { status: 'skip', detail: 'the stored account key does not open' })

    const none = await doctor(t, ['--json'], { AUTOCERT_ENCRYPTION_KEY: '' })
    t.equal(none.code, 1)
    t.match(findings(none).find((f) => f.check === 'encryption'), { status: 'fail', detail: /stored values are sealed, and no encryption key is configured/ })
  })

  t.test('the CA down: its directory fails, the account and clock checks skipped', async (t) => {
    const port = await freePort()
    const result = await doctor(t, ['--json', '--directory-url', `https://127.0.0.1:${port}/dir`])
    t.equal(result.code, 1)
    t.match(findings(result).find((f) => f.check === 'CA directory'), { status: 'fail', detail: new RegExp(`did not answer: connect ECONNREFUSED 127.0.0.1:${port}`), fix: /--directory-url/ })
    const s = statuses(result)
    t.same([s.account, s.clock], ['skip', 'skip'])
    t.same(STORE_CHECKS.map((c) => s[c]), STORE_CHECKS.map(() => 'ok'), 'the store checks pass all the same')
  })

  t.test('a public container: FAIL, with the command that turns it off', async (t) => {
    t.teardown(() => container.setAccessPolicy())
    await container.setAccessPolicy('container')
    const result = await doctor(t, ['--json'])
    t.equal(result.code, 1, 'exit code 1')
    t.match(findings(result).find((f) => f.check === 'container private'), { status: 'fail', detail: 'anonymous container access is on: the stored blobs, private keys included, can be read without a credential', fix: `--name ${CONTAINER} --public-access off` })
  })

  t.test('a store endpoint nothing listens on: not reachable, every store check skipped', async (t) => {
    const port = await freePort()
    const result = await doctor(t, ['--json'], { AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString.replace(`127.0.0.1:${azurite.port}`, `127.0.0.1:${port}`) })
    t.equal(result.code, 1)
    t.match(findings(result)[0], { check: 'store reachable', status: 'fail', detail: /did not answer: connect ECONNREFUSED/ })
    const s = statuses(result)
    t.same([...STORE_CHECKS.slice(1), 'encryption', 'account'].map((c) => s[c]), [...STORE_CHECKS.slice(1), 'encryption', 'account'].map(() => 'skip'))
  })

  t.test('an account key the CA does not know, and no account key at all', async (t) => {
    const fresh = service.getContainerClient('unknown')
    const other = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'unknown' })
    t.teardown(async () => { await other.close(); await fresh.deleteIfExists() })
    const missing = await doctor(t, ['--json', '--container', 'unknown', '--encryption-key', ''], { AUTOCERT_ENCRYPTION_KEY: '' })
    t.equal(missing.code, 0, 'a missing container is a warning, not a failure: the plugin creates it')
    t.match(findings(missing).find((f) => f.check === 'credential'), { status: 'warn', detail: 'accepted; container unknown does not exist', fix: /--container/ })
    t.ok(findings(missing).filter((f) => f.check.startsWith('permission') || f.check === 'container private' || f.check === 'encryption' || f.check === 'account')
      .every((f) => f.status === 'skip' && /does not exist, and doctor creates nothing/.test(f.detail)), 'the checks that need the container skipped')
    t.notOk(await fresh.exists(), 'doctor created no container')

    await fresh.create()
    const none = await doctor(t, ['--json', '--container', 'unknown', '--encryption-key', ''], { AUTOCERT_ENCRYPTION_KEY: '' })
    t.equal(none.code, 1)
    t.match(findings(none).find((f) => f.check === 'container private'), { status: 'ok' }, 'created private')
    t.match(findings(none).find((f) => f.check === 'account'), { status: 'fail', detail: 'no account key in the store (acme_account+key)', fix: /start the plugin once/ })
    t.match(findings(none).find((f) => f.check === 'encryption'), { status: 'ok', detail: 'no encryption key configured, and nothing is stored' })

    await other.put('acme_account+key', await acme.crypto.createPrivateEcdsaKey('P-256'))
    const unknown = await doctor(t, ['--json', '--container', 'unknown'], { AUTOCERT_ENCRYPTION_KEY: '' })
    t.equal(unknown.code, 1)
    t.match(findings(unknown).find((f) => f.check === 'account'), { status: 'fail', detail: /^the CA does not know the stored account key: /, fix: /--directory-url/ })
    t.match(findings(unknown).find((f) => f.check === 'encryption'), { status: 'ok', detail: 'no encryption key configured, and none of the 1 stored values is sealed' })
  })

  t.test('the CA\'s clock, directory and answers as a proxy shows them (Pebble keeps the real time and a valid directory)', async (t) => {
    const proxy = await startCaProxy(pebble)
    t.teardown(() => proxy.close())
    const dir = await mkdtemp(path.join(os.tmpdir(), 'doctor-ca-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const caFile = path.join(dir, 'ca.pem')
    await writeFile(caFile, `${pebble.caCert}\n${proxy.caCert}`)
    const via = { ACME_DIRECTORY_URL: proxy.directoryUrl, NODE_EXTRA_CA_CERTS: caFile }
    const check = async (name: string): Promise<Finding | undefined> => findings(await doctor(t, ['--json'], via)).find((f) => f.check === name)

    const shifted = (ms: number): typeof proxy.rewrite => (req) => req.path === '/dir' ? { headers: { date: new Date(Date.now() + ms).toUTCString() } } : undefined
    proxy.rewrite = shifted(10 * 60_000)
    t.match(await check('clock'), { status: 'fail', detail: /^this machine's clock is (599|600|601) s behind the CA's: past 300 s the plugin places no orders/, fix: /NTP/ })
    proxy.rewrite = shifted(-2 * 60_000)
    const warned = await doctor(t, [], via)
    t.equal(warned.code, 0, 'a warning alone: exit code 0')
    t.match(warned.stdout, /^warn {2}clock +this machine's clock is (119|120|121) s ahead of the CA's/m)
    t.match(warned.stdout.trimEnd().split('\n').at(-1), 'all checks passed (1 warning)')
    // Without a Date header, and a directory without meta: no terms listed.
    proxy.rewrite = (req, answer) => req.path === '/dir' ? { headers: { date: 'not a date' }, body: JSON.stringify({ ...JSON.parse(answer.body.toString()), meta: undefined }) } : undefined
    const undated = findings(await doctor(t, ['--json'], via))
    t.match(undated.find((f) => f.check === 'clock'), { status: 'warn', detail: /no usable Date header/ })
    t.match(undated.find((f) => f.check === 'CA directory'), { status: 'ok', detail: 'answered; terms of service: none listed' })
    t.match(undated.find((f) => f.check === 'account'), { status: 'ok' }, 'the account found all the same')

    proxy.rewrite = (req) => req.path === '/dir' ? { body: 'Service Unavailable' } : undefined
    t.match(await check('CA directory'), { status: 'fail', detail: /is not an ACME directory/ })
    proxy.rewrite = () => undefined
    proxy.intercept = (req) => req.path === '/dir' ? { status: 404 } : undefined
    t.match(await check('CA directory'), { status: 'fail', detail: `${proxy.directoryUrl} answered HTTP 404` })
    // A Retry-After longer than the retries may wait: the answer is final at once.
    proxy.intercept = (req) => req.path === '/dir' ? { status: 503, headers: { 'retry-after': '3600' } } : undefined
    t.match(await check('CA directory'), { status: 'fail', detail: `${proxy.directoryUrl} answered HTTP 503 through every retry` })
  })

  t.test('a FileStore directory: its existence and mode, then the same permissions', async (t) => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'doctor-dir-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const file = { AZURE_STORAGE_CONNECTION_STRING: '', AUTOCERT_ENCRYPTION_KEY: '' }
    const run = async (target: string): Promise<Finding[]> => findings(await doctor(t, ['--json', '--dir', target], file))

    const missing = await run(path.join(dir, 'new'))
    t.match(missing[0], { check: 'store reachable', status: 'warn', detail: /new does not exist$/, fix: /creates it \(mode 0700\) at its first write/ })
    t.same(missing.slice(1, 7).map((f) => f.status), ['skip', 'skip', 'skip', 'skip', 'skip', 'skip'], 'every permission skipped')
    t.notOk(missing.some((f) => f.check === 'credential' || f.check === 'container private'), 'no Azure checks')
    t.notOk(await stat(path.join(dir, 'new')).then(() => true, () => false), 'doctor created no directory')

    await mkdir(path.join(dir, 'new'), { mode: 0o700 })
    const owner = await run(path.join(dir, 'new'))
    t.same(owner.slice(1, 7).map((f) => f.status), ['ok', 'ok', 'ok', 'ok', 'ok', 'ok'], 'every permission tried, and passed')
    t.match(owner[0], { status: 'ok', detail: /is a directory with mode 0700$/ })
    t.match(owner.find((f) => f.check === 'account'), { status: 'fail', detail: /no account key/ })

    await mkdir(path.join(dir, 'open'))
    await chmod(path.join(dir, 'open'), 0o755)
    t.match((await run(path.join(dir, 'open')))[0], { status: 'fail', detail: /has mode 0755: other users may read the private keys in it/, fix: /^chmod 700 / })

    await writeFile(path.join(dir, 'plain'), '')
    const notDir = await run(path.join(dir, 'plain'))
    t.match(notDir[0], { status: 'fail', detail: /is not a directory$/ })
    t.ok(notDir.slice(1).filter((f) => f.check.startsWith('permission') || f.check === 'encryption').every((f) => f.status === 'skip'), 'the rest skipped')
    t.match((await run(path.join(dir, 'plain', 'below')))[0], { status: 'fail', detail: /ENOTDIR/ })
  })

  t.test('doctor that cannot run: exit code 2, one line', async (t) => {
    const noStore = await doctor(t, [], { AZURE_STORAGE_CONNECTION_STRING: '' })
    t.equal(noStore.code, 2)
    t.match(noStore.stderr, /^fastify-autocert doctor: no store: set AZURE_STORAGE_CONNECTION_STRING/)
    const badCa = await doctor(t, ['--directory-url', 'http://ca.example.test/dir'])
    t.equal(badCa.code, 2)
    t.equal(badCa.stderr, 'fastify-autocert doctor: --directory-url (ACME_DIRECTORY_URL) must be production, staging or an https:// ACME directory URL; got "http://ca.example.test/dir"\n')
  })
})
