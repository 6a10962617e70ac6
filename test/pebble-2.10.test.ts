import { X509Certificate } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import * as acme from 'acme-client'
import t, { type Test } from 'tap'
import { eventually } from './support/app'
import { fastClient, startPebble, trustPebble, type Pebble } from './support/pebble'

// The harness on Pebble 2.10 (whatever PEBBLE_VERSION says): what 2.4 lacks (ARI,
// profiles) and the error when 2.10 is not there.

const NAME = 'ari.example.test'

// A DER element: its tag and where its content starts and ends.
interface Tlv { tag: number, start: number, end: number }
function tlv (der: Buffer, at: number): Tlv {
  const tag = der[at]!
  let length = der[at + 1]!
  let start = at + 2
  if (length & 0x80) {
    const bytes = length & 0x7f
    length = 0
    for (let i = 0; i < bytes; i++) length = length * 256 + der[start + i]!
    start += bytes
  }
  return { tag, start, end: start + length }
}
function children (der: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = []
  for (let at = parent.start; at < parent.end; at = out[out.length - 1]!.end) out.push(tlv(der, at))
  return out
}

// RFC 9773 4.1: base64url(keyIdentifier of the Authority Key Identifier) '.'
// base64url(the DER content octets of the serial number), both unpadded.
function certId (pem: string): string {
  const der = new X509Certificate(pem).raw
  const tbs = children(der, tlv(der, 0))[0]!
  const fields = children(der, tbs)
  const serial = fields[fields[0]!.tag === 0xa0 ? 1 : 0]!
  const extensions = fields.find((f) => f.tag === 0xa3)
  if (extensions === undefined) throw new Error('no extensions')
  for (const ext of children(der, children(der, extensions)[0]!)) {
    const [oid, ...rest] = children(der, ext)
    // 2.5.29.35, authorityKeyIdentifier
    if (!der.subarray(oid!.start, oid!.end).equals(Buffer.from([0x55, 0x1d, 0x23]))) continue
    const value = rest[rest.length - 1]! // the OCTET STRING (after `critical`, if present)
    const aki = tlv(der, value.start)
    const keyId = children(der, aki).find((c) => c.tag === 0x80) // [0] IMPLICIT KeyIdentifier
    if (keyId === undefined) throw new Error('no keyIdentifier in the Authority Key Identifier')
    const b64 = (b: Buffer): string => b.toString('base64url')
    return `${b64(der.subarray(keyId.start, keyId.end))}.${b64(der.subarray(serial.start, serial.end))}`
  }
  throw new Error('no Authority Key Identifier')
}

interface Answer { status: number, headers: http.IncomingHttpHeaders, body: string }
// A GET to Pebble's API, with the User-Agent 2.10 insists on (RFC 8555 6.1).
function get (pebble: Pebble, url: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    https.get(url, { ca: pebble.caCert, headers: { 'user-agent': 'fastify-autocert-tests' } }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }))
    }).on('error', reject)
  })
}

// Answers HTTP-01 on Pebble's validation port from `tokens`.
async function challengeServer (t: Test, tokens: Map<string, string>): Promise<number> {
  const server = http.createServer((req, res) => {
    const m = /^\/\.well-known\/acme-challenge\/([^/?]+)$/.exec(req.url ?? '')
    const body = m !== null ? tokens.get(m[1]!) : undefined
    res.writeHead(body !== undefined ? 200 : 404).end(body)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return (server.address() as AddressInfo).port
}

async function issue (client: acme.Client, tokens: Map<string, string>): Promise<string> {
  const [, csr] = await acme.crypto.createCsr({ commonName: NAME, altNames: [NAME] })
  const chain = await client.auto({
    csr,
    termsOfServiceAgreed: true,
    challengePriority: ['http-01'],
    skipChallengeVerification: true,
    challengeCreateFn: async (_authz, challenge, keyAuthorization) => { tokens.set(challenge.token, keyAuthorization) },
    challengeRemoveFn: async (_authz, challenge) => { tokens.delete(challenge.token) }
  })
  return chain.split(/(?=-----BEGIN CERTIFICATE-----)/)[0]!
}

t.test('Pebble 2.10: renewalInfo, set-renewal-info, replacements and the lifetime from validityPeriod', async (t) => {
  const tokens = new Map<string, string>()
  const httpPort = await challengeServer(t, tokens)
  const pebble = await startPebble({ httpPort, version: '2.10', validityPeriod: 3600 })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  t.equal(pebble.version, '2.10')

  const directory = JSON.parse((await get(pebble, pebble.directoryUrl)).body)
  t.equal(directory.renewalInfo, pebble.renewalInfoUrl, 'the directory has renewalInfo, as renewalInfoUrl says')
  t.match(pebble.renewalInfoUrl, /^https:\/\/127\.0\.0\.1:\d+\/.+\/renewalInfo$/)
  t.same(Object.keys(directory.meta.profiles), ['default'], 'validityPeriod is one profile, "default"')

  const client = await fastClient(pebble)
  const leaf = await issue(client, tokens)
  const cert = new X509Certificate(leaf)
  const lifetime = (Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 1000
  t.equal(lifetime, 3599, 'the certificate lives validityPeriod (Pebble: notAfter = notBefore + period - 1 s)')
  t.equal(pebble.orderCount(), 1)

  const url = `${pebble.renewalInfoUrl}/${certId(leaf)}`
  const before = await get(pebble, url)
  t.equal(before.status, 200, 'Pebble knows the certificate by the certID computed here', { body: before.body })
  t.comment(`default renewalInfo (Retry-After ${before.headers['retry-after']}): ${before.body}`)
  t.equal(before.headers['retry-after'], '21600', 'Retry-After: 6 h')
  const window = JSON.parse(before.body).suggestedWindow
  // notAfter - lifetime/3, +/- 24 h, held within the lifetime: [notBefore, notAfter] for an hour's certificate.
  t.equal(Date.parse(window.start), Date.parse(cert.validFrom), 'the default window opens at notBefore (clamped)')
  t.ok(Math.abs(Date.parse(window.end) - Date.parse(cert.validTo)) < 1000, 'and closes at notAfter (clamped)')

  const start = new Date(Date.now() - 60_000)
  const end = new Date(Date.now() + 60_000)
  await pebble.setRenewalInfo(leaf, { start, end }, 'https://ca.example.test/why')
  const after = await get(pebble, url)
  t.equal(after.status, 200)
  t.comment(`renewalInfo after setRenewalInfo (Retry-After ${after.headers['retry-after']}): ${after.body}`)
  t.same(JSON.parse(after.body), {
    suggestedWindow: { start: start.toISOString(), end: end.toISOString() },
    explanationURL: 'https://ca.example.test/why'
  }, 'GET renewalInfo answers what was set')
  await pebble.setRenewalInfo(leaf, { start: '2030-01-01T00:00:00Z', end: '2030-01-02T00:00:00Z' })
  t.same(JSON.parse((await get(pebble, url)).body), {
    suggestedWindow: { start: '2030-01-01T00:00:00Z', end: '2030-01-02T00:00:00Z' }
  }, 'strings are sent as given, and no explanationURL when none is given')
  await t.rejects(pebble.setRenewalInfo('not a certificate', { start, end }), /set-renewal-info\/: 400 /, 'a refused POST is an error')

  t.equal(pebble.replacementCount(), 0, 'no replacement yet')
  // acme-client 5.4.0 knows no `replaces` (RFC 9773 5), but sends what it is given.
  const replacing = { identifiers: [{ type: 'dns', value: NAME }], replaces: certId(leaf) }
  await client.createOrder(replacing)
  // Pebble's log comes through a pipe that may lag its HTTPS answer.
  await t.resolves(eventually(() => pebble.replacementCount() === 1 && pebble.orderCount() >= 2), 'an order that replaces the certificate is counted')
  t.equal(pebble.orderCount(), 2, 'and is a new order')
  const line = /^.*ARI: order .*$/m.exec(pebble.output())?.[0]
  t.comment(`Pebble logged: ${line}`)
})

t.test('Pebble 2.10 profiles: listed in the directory, one order per profile named, an error on 2.4', async (t) => {
  const tokens = new Map<string, string>()
  const httpPort = await challengeServer(t, tokens)
  const profiles = {
    classic: { validityPeriod: 7200, description: 'two hours' },
    shortlived: { validityPeriod: 600, promoteCommonName: false }
  }
  const pebble = await startPebble({ httpPort, version: '2.10', profiles })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const directory = JSON.parse((await get(pebble, pebble.directoryUrl)).body)
  t.same(directory.meta.profiles, { classic: 'two hours', shortlived: 'certificates valid 600 s' }, 'meta.profiles lists them')

  const client = await fastClient(pebble)
  await client.createAccount({ termsOfServiceAgreed: true })
  for (const [profile, expected] of [['classic', 7199], ['shortlived', 599]] as const) {
    // acme-client 5.4.0 knows no `profile` either, but sends it.
    const naming = { identifiers: [{ type: 'dns', value: NAME }], profile }
    const order = await client.createOrder(naming)
    t.equal((order as { profile?: string }).profile, profile, `an order naming ${profile} gets it`)
    for (const authz of await client.getAuthorizations(order)) {
      const challenge = authz.challenges.find((c) => c.type === 'http-01')!
      tokens.set(challenge.token, await client.getChallengeKeyAuthorization(challenge))
      await client.completeChallenge(challenge)
      await client.waitForValidStatus(challenge)
    }
    const [, csr] = await acme.crypto.createCsr({ commonName: NAME, altNames: [NAME] })
    const done = await client.finalizeOrder(order, csr)
    const cert = new X509Certificate((await client.getCertificate(done)).split(/(?=-----BEGIN CERTIFICATE-----)/)[0]!)
    t.equal((Date.parse(cert.validTo) - Date.parse(cert.validFrom)) / 1000, expected, `${profile}: its lifetime`)
    // Node 20 gives an empty subject as undefined, whatever its type says.
    const subject = cert.subject as string | undefined
    t.equal(subject?.includes(`CN=${NAME}`) ?? false, profile === 'classic', `${profile}: CN ${profile === 'classic' ? 'promoted (the default here)' : 'left out (promoteCommonName: false)'}`)
  }

  await t.rejects(startPebble({ httpPort, version: '2.4', profiles }), /profiles need Pebble 2\.10/, 'profiles on 2.4 are an error')
  await t.rejects(startPebble({ httpPort, version: '2.10', profiles, validityPeriod: 60 }), /validityPeriod or profiles, not both/)
})

t.test('a missing Pebble 2.10 is an error that names the command installing it', async (t) => {
  const empty = await mkdtemp(path.join(os.tmpdir(), 'no-pebble-'))
  const saved = process.env.PEBBLE_2_10_DIR
  process.env.PEBBLE_2_10_DIR = empty
  t.teardown(async () => {
    if (saved === undefined) delete process.env.PEBBLE_2_10_DIR
    else process.env.PEBBLE_2_10_DIR = saved
    await rm(empty, { recursive: true, force: true })
  })
  await t.rejects(startPebble({ httpPort: 9, version: '2.10' }), {
    message: `Pebble 2.10 is not installed: ${path.join(empty, 'usr', 'bin', 'pebble')} is missing. ` +
      'Run `npm run pebble:2.10` (test/support/get-pebble.sh: it unpacks Debian sid\'s pebble package there), ' +
      'or set PEBBLE_VERSION=2.4 to use the pebble on PATH'
  })

  const version = process.env.PEBBLE_VERSION
  t.teardown(() => { if (version === undefined) delete process.env.PEBBLE_VERSION; else process.env.PEBBLE_VERSION = version })
  delete process.env.PEBBLE_VERSION
  await t.rejects(startPebble({ httpPort: 9 }), /Pebble 2\.10 is not installed/, 'without PEBBLE_VERSION, 2.10 is the default')
  process.env.PEBBLE_VERSION = '2.9'
  await t.rejects(startPebble({ httpPort: 9 }), /PEBBLE_VERSION=2\.9: expected 2\.4 or 2\.10/)
})
