import crypto from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import * as acme from 'acme-client'
import { BlobServiceClient } from '@azure/storage-blob'
import t from 'tap'
import { startAzurite } from './support/azurite'
import { fastClient, startPebble, trustPebble } from './support/pebble'

// Proves the shared test infrastructure: Pebble + challtestsrv issue a real
// certificate over HTTP-01 to a local server, and Azurite stores blobs.
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
