import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import { Resolver } from 'node:dns/promises'
import { existsSync, readdirSync, readFileSync } from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import * as acme from 'acme-client'
import { BlobServiceClient } from '@azure/storage-blob'
import t from 'tap'
import { startAzurite } from './support/azurite'
import { startBind, type Bind, type TsigKey } from './support/bind'
import { fastClient, startPebble, trustPebble } from './support/pebble'
import { freePort } from './support/ports'
import { spawnTracked } from './support/proc'

// Proves the shared test infrastructure: Pebble + challtestsrv issue a real
// certificate over HTTP-01 to a local server, Azurite stores blobs, BIND serves
// a zone and takes TSIG-signed updates, and Pebble validates DNS-01 through it.
t.test('pebble issues a certificate, azurite stores a blob', async t => {
  const tokens = new Map<string, string>()
  const challengeServer = http.createServer((req, res) => {
    const m = /^\/\.well-known\/acme-challenge\/([^/?]+)$/.exec(req.url ?? '')
    const body = m !== null ? tokens.get(m[1]!) : undefined
    res.writeHead(body !== undefined ? 200 : 404).end(body)
  })
  await new Promise<void>(resolve => challengeServer.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => challengeServer.close(() => resolve())))
  const httpPort = (challengeServer.address() as AddressInfo).port

  const [azurite, pebble] = await Promise.all([startAzurite(), startPebble({ httpPort })])
  t.teardown(() => Promise.all([azurite.stop(), pebble.stop()]))
  trustPebble(pebble)

  t.equal(pebble.orderCount(), 0, 'no order before issuance')

  const started = performance.now()
  const client = await fastClient(pebble)
  const [, csr] = await acme.crypto.createCsr({ commonName: 'a.example.test' })
  const chain = await client.auto({
    csr,
    email: 'test@example.test',
    termsOfServiceAgreed: true,
    challengePriority: ['http-01'],
    // auto() would otherwise fetch http://a.example.test:80/ through the system resolver.
    skipChallengeVerification: true,
    challengeCreateFn: async (_authz, challenge, keyAuthorization) => { tokens.set(challenge.token, keyAuthorization) },
    challengeRemoveFn: async (_authz, challenge) => { tokens.delete(challenge.token) }
  })
  const issuanceMs = performance.now() - started
  t.comment(`issuance took ${issuanceMs.toFixed(0)} ms`)

  t.equal(pebble.orderCount(), 1, 'exactly one new order')
  t.equal(tokens.size, 0, 'challenge token removed')

  // Walk leaf -> intermediate(s) -> Pebble's current root.
  const certs = chain.split(/(?=-----BEGIN CERTIFICATE-----)/).map(pem => new crypto.X509Certificate(pem))
  certs.push(new crypto.X509Certificate(await pebble.root()))
  t.ok(certs[0]!.checkHost('a.example.test'), 'leaf is for a.example.test')
  for (let i = 0; i + 1 < certs.length; i++) {
    t.ok(certs[i]!.checkIssued(certs[i + 1]!) && certs[i]!.verify(certs[i + 1]!.publicKey), `cert ${i} signed by cert ${i + 1}`)
  }
  const root = certs[certs.length - 1]!
  t.ok(root.verify(root.publicKey), 'chain ends at a self-signed root')

  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('infra')
  await container.create()
  const blob = container.getBlockBlobClient('hello.txt')
  await blob.upload('hello', 5)
  t.equal((await blob.downloadToBuffer()).toString(), 'hello', 'blob round trip')
})

interface Exit { code: number | null, stdout: string, stderr: string }

// nsupdate against `bind`'s zone: the key on stdin (never on the command line, where
// ps would show it), then the update lines and `send`. -t 5: give up after 5 s.
async function nsupdate (bind: Bind, key: TsigKey, updates: string[]): Promise<Exit> {
  const child = spawnTracked('nsupdate', ['-t', '5'], { stdio: ['pipe', 'pipe', 'pipe'] })
  let stdout = ''
  let stderr = ''
  child.stdout?.on('data', (d: Buffer) => { stdout += d.toString() })
  child.stderr?.on('data', (d: Buffer) => { stderr += d.toString() })
  const closed = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject)
    child.once('close', code => resolve(code))
  })
  child.stdin?.end([
    `key ${key.algorithm}:${key.name} ${key.secret}`,
    `server ${bind.address} ${bind.port}`,
    `zone ${bind.zone}`,
    ...updates,
    'send',
    ''
  ].join('\n'))
  return { code: await closed, stdout, stderr }
}

// The pid of the named running with this config file, from /proc (undefined: none).
function namedPid (confFile: string): number | undefined {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    let argv: string[]
    try {
      argv = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0')
    } catch {
      continue // gone meanwhile
    }
    if (path.basename(argv[0] ?? '') === 'named' && argv.includes(confFile)) return Number(entry)
  }
  return undefined
}

function alive (pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

t.test('bind serves its zone and takes only updates signed with its key', async t => {
  const bind = await startBind()
  t.teardown(() => bind.stop())
  t.equal(bind.server, `127.0.0.1:${bind.port}`)
  t.equal(bind.zone, 'example.test')
  t.equal(bind.tsig.name, 'autocert-test')
  t.equal(bind.tsig.algorithm, 'hmac-sha256')
  t.equal(Buffer.from(bind.tsig.secret, 'base64').length, 32, 'a 32-byte secret')

  const resolver = new Resolver({ timeout: 1000, tries: 1 })
  resolver.setServers([bind.server])
  const soa = await resolver.resolveSoa('example.test')
  t.equal(soa.nsname, 'ns.example.test', 'SOA over UDP')
  t.equal(soa.minttl, 1, 'negative answers cached for 1 s at most')
  t.same(await resolver.resolveNs('example.test'), ['ns.example.test'])
  for (const name of ['example.test', 'ns.example.test', 'anything.example.test', 'a.b.example.test']) {
    t.same(await resolver.resolve4(name), ['127.0.0.1'], `${name} A 127.0.0.1`)
  }
  await t.rejects(resolver.resolve6('anything.example.test'), { code: 'ENODATA' }, 'no AAAA')
  // The same port over TCP.
  const { stdout } = await promisify(execFile)('dig', ['+tcp', '+short', '-p', String(bind.port), '@127.0.0.1', 'SOA', 'example.test'])
  t.match(stdout, /^ns\.example\.test\. hostmaster\.example\.test\. 1 /, 'SOA over TCP')

  const name = '_acme-challenge.a.example.test'
  t.same(await bind.txt(name), [], 'no TXT to begin with')
  const added = await nsupdate(bind, bind.tsig, [`update add ${name}. 60 TXT "first value"`])
  t.equal(added.code, 0, `nsupdate with the key succeeds ${added.stderr}`)
  t.same(await bind.txt(name), ['first value'], 'txt() returns the value added')
  t.match(bind.output(), `adding an RR at '${name}' TXT "first value"`, 'named logged the update')

  const removed = await nsupdate(bind, bind.tsig, [`update delete ${name}. TXT`])
  t.equal(removed.code, 0, `nsupdate delete succeeds ${removed.stderr}`)
  t.same(await bind.txt(name), [], 'gone once deleted')

  const wrong = { ...bind.tsig, secret: crypto.randomBytes(32).toString('base64') }
  const refused = await nsupdate(bind, wrong, [`update add ${name}. 60 TXT "forged"`])
  t.not(refused.code, 0, 'nsupdate with a wrong secret fails')
  t.match(refused.stderr, /TSIG error with server: tsig indicates error/)
  t.match(refused.stderr, /update failed: NOTAUTH\(BADSIG\)/)
  t.match(bind.output(), /request has invalid signature: TSIG autocert-test: tsig verify failure \(BADSIG\)/, 'named says why')
  t.same(await bind.txt(name), [], 'nothing added')
  t.notOk(bind.output().includes(bind.tsig.secret), 'named never printed the secret')

  // named says where it works; its config is there, and names that file on its command line.
  const dir = /the working directory is now '([^']+)'/.exec(bind.output())?.[1]
  t.ok(dir !== undefined && path.dirname(dir) === os.tmpdir() && path.basename(dir).startsWith('bind-'), `a temp dir of its own: ${dir}`)
  const pid = namedPid(path.join(dir!, 'named.conf'))
  t.ok(pid !== undefined && alive(pid), 'named is running')
  await bind.stop()
  t.notOk(alive(pid!), 'named is gone after stop()')
  t.notOk(existsSync(dir!), 'its temp dir is removed')
})

t.test('pebble 2.10 validates dns-01 through bind', async t => {
  const bind = await startBind()
  t.teardown(() => bind.stop())
  // Only dns-01 is used: Pebble's HTTP-01 port is never dialled.
  const pebble = await startPebble({ httpPort: await freePort(), version: '2.10', dnsServer: bind.server })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const client = await fastClient(pebble)
  await client.createAccount({ termsOfServiceAgreed: true })

  for (const name of ['a.example.test', '*.example.test']) {
    const order = await client.createOrder({ identifiers: [{ type: 'dns', value: name }] })
    for (const authz of await client.getAuthorizations(order)) {
      if (name.startsWith('*.')) {
        // Pebble 2.10 offers dns-persist-01, dns-01 and dns-account-01 for a wildcard:
        // DNS challenges only, never http-01 or tls-alpn-01.
        t.equal(authz.wildcard, true, 'a wildcard authorization')
        const types = authz.challenges.map(c => c.type)
        t.ok(types.includes('dns-01') && types.every(type => type.startsWith('dns-')), `DNS challenges only: ${types.join(', ')}`)
      }
      const challenge = authz.challenges.find(c => c.type === 'dns-01')!
      const record = `_acme-challenge.${authz.identifier.value}`
      const value = await client.getChallengeKeyAuthorization(challenge)
      const added = await nsupdate(bind, bind.tsig, [`update add ${record}. 60 TXT "${value}"`])
      t.equal(added.code, 0, `${record} TXT set ${added.stderr}`)
      t.same(await bind.txt(record), [value], 'served by bind')
      await client.completeChallenge(challenge)
      await client.waitForValidStatus(challenge)
      const removed = await nsupdate(bind, bind.tsig, [`update delete ${record}. TXT`])
      t.equal(removed.code, 0, `${record} TXT removed ${removed.stderr}`)
    }
    const [, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] })
    const done = await client.waitForValidStatus(await client.finalizeOrder(order, csr))
    t.equal(done.status, 'valid', `${name}: the order is valid`)
    const leaf = new crypto.X509Certificate((await client.getCertificate(done)).split(/(?=-----BEGIN CERTIFICATE-----)/)[0]!)
    const host = name.replace(/^\*\./, 'anything.')
    t.ok(leaf.checkHost(host), `${name}: the certificate covers ${host}`)
  }
  // And without the record, the same challenge fails: Pebble asked BIND, nothing else.
  const order = await client.createOrder({ identifiers: [{ type: 'dns', value: 'b.example.test' }] })
  const [authz] = await client.getAuthorizations(order)
  const challenge = authz!.challenges.find(c => c.type === 'dns-01')!
  await client.completeChallenge(challenge)
  await t.rejects(client.waitForValidStatus(challenge), /No TXT records found for DNS challenge/, 'no TXT at _acme-challenge.b.example.test: refused')
  t.equal(pebble.orderCount(), 3, 'three orders')
  t.notMatch(pebble.output(), /challtestsrv/i, 'no challtestsrv involved')
})
