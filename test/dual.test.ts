import { createPrivateKey, X509Certificate } from 'node:crypto'
import { BlobServiceClient } from '@azure/storage-blob'
import Fastify from 'fastify'
import t from 'tap'
import autocert, { ALPNCallback, AzureBlobStore, SNICallback } from '../lib'
import { startApp, eventually } from './support/app'
import { freePort } from './support/ports'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

// Clients that accept only one kind of handshake signature, so the server must pick the
// certificate they support. (In TLS 1.3 the list also governs the chain's signatures,
// and Pebble signs every chain with RSA: rsa_pkcs1_sha256, which TLS 1.3 allows only
// there, lets the ECDSA-only client verify the chain and nothing else.)
const RSA_ONLY = {
  tls13: { sigalgs: 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256', minVersion: 'TLSv1.3' },
  tls12: { ciphers: 'ECDHE-RSA-AES128-GCM-SHA256', maxVersion: 'TLSv1.2' }
} as const
const ECDSA_ONLY = {
  tls13: { sigalgs: 'ecdsa_secp256r1_sha256:rsa_pkcs1_sha256', minVersion: 'TLSv1.3' },
  tls12: { ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256', maxVersion: 'TLSv1.2' }
} as const

t.test('an ECDSA and an RSA certificate for one name: each client gets the kind it supports', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: 'dual' })
  const domain = 'dual.example.test'
  const app = await startApp(pebble, httpPort, newStore(), { domains: [domain], keyType: ['ecdsa', 'rsa'] })
  t.teardown(() => app.app.close())

  await eventually(() => app.app.autocert.status().every((s) => s.serial !== undefined))
  const status = app.app.autocert.status()
  t.same(status.map((s) => [s.domain, s.keyType]), [[domain, 'ecdsa'], [domain, 'rsa']], 'status() lists one certificate per key type')
  t.equal(pebble.orderCount(), 2, 'one order per key type')
  const serial = Object.fromEntries(status.map((s) => [s.keyType, s.serial]))

  for (const version of ['tls13', 'tls12'] as const) {
    const rsa = await handshake(app.port, domain, root, RSA_ONLY[version])
    t.ok(rsa.authorized, `${version} RSA-only client: the chain verifies`)
    t.equal(rsa.keyType, 'rsa', `${version} RSA-only client gets the RSA certificate`)
    t.equal(rsa.serial, serial.rsa, 'the RSA serial status() reports')
    const ecdsa = await handshake(app.port, domain, root, ECDSA_ONLY[version])
    t.ok(ecdsa.authorized, `${version} ECDSA-only client: the chain verifies`)
    t.equal(ecdsa.keyType, 'ecdsa', `${version} ECDSA-only client gets the ECDSA certificate`)
    t.equal(ecdsa.serial, serial.ecdsa, 'the ECDSA serial status() reports')
  }
  const any = await handshake(app.port, domain, root)
  t.equal(any.keyType, 'ecdsa', 'a client that supports both gets ECDSA, the first listed')

  const blobs = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('dual')
  const keyOf = async (blob: string): Promise<string | undefined> => {
    const pem = (await blobs.getBlockBlobClient(blob).downloadToBuffer()).toString()
    const leaf = new X509Certificate(pem.slice(pem.indexOf('-----BEGIN CERTIFICATE-----')))
    t.ok(leaf.checkPrivateKey(createPrivateKey(pem)), `${blob}: the stored key matches its certificate`)
    return createPrivateKey(pem).asymmetricKeyType
  }
  t.equal(await keyOf(domain), 'ec', 'the ECDSA certificate is stored under the name (Go autocert\'s key)')
  t.equal(await keyOf(`${domain}+rsa`), 'rsa', 'the RSA certificate under <name>+rsa (Go autocert\'s key)')

  await t.test('another instance loads both from the store, with no order', async (t) => {
    const orders = pebble.orderCount()
    const second = await startApp(pebble, httpPort, newStore(), { domains: [domain], keyType: ['ecdsa', 'rsa'], http01: undefined })
    t.teardown(() => second.app.close())
    t.equal((await handshake(second.port, domain, root, RSA_ONLY.tls13)).serial, serial.rsa, 'the same RSA certificate')
    t.equal((await handshake(second.port, domain, root, ECDSA_ONLY.tls13)).serial, serial.ecdsa, 'the same ECDSA certificate')
    t.equal(pebble.orderCount(), orders, 'no order')
  })

  await t.test('renew() renews both; an ECDSA-only instance reads only its own', async (t) => {
    const renewed = await app.app.autocert.renew(domain)
    const after = Object.fromEntries(app.app.autocert.status().map((s) => [s.keyType, s.serial]))
    t.equal(renewed.serial, after.ecdsa, 'renew() resolves with the primary (ECDSA) certificate')
    t.not(after.rsa, serial.rsa, 'and the RSA one was renewed too')
    t.equal((await handshake(app.port, domain, root, RSA_ONLY.tls13)).serial, after.rsa, 'the new RSA certificate is served')
    const ecdsaOnly = await startApp(pebble, httpPort, newStore(), { domains: [domain], http01: undefined })
    t.teardown(() => ecdsaOnly.app.close())
    t.same(ecdsaOnly.app.autocert.status().map((s) => [s.keyType, s.serial]), [['ecdsa', after.ecdsa]], 'it loaded only <name>')
    await t.rejects(handshake(ecdsaOnly.port, domain, root, RSA_ONLY.tls13), 'an RSA-only client cannot connect to it')
  })
})

t.test('both key types by TLS-ALPN-01: one pending challenge per name at a time', async (t) => {
  // Both orders validate on the app's own port, where a name has one challenge
  // certificate at a time: the two key types must take turns, not overwrite it.
  // Pebble waits 0-5 s (at random) before each validation here, so that two
  // orders running at once would overlap; with its usual no-sleep they rarely do.
  const tlsPort = await freePort()
  const { azurite, pebble, root } = await startServices(t, { tlsPort, env: { PEBBLE_VA_NOSLEEP: '0' } })
  const domain = 'dual-alpn.example.test'
  const app = Fastify({ https: { SNICallback, ALPNCallback } })
  await app.register(autocert, {
    domains: [domain],
    keyType: ['ecdsa', 'rsa'],
    challenges: ['tls-alpn-01'],
    directoryUrl: pebble.directoryUrl,
    termsOfServiceAgreed: true,
    store: new AzureBlobStore({ connectionString: azurite.connectionString, container: 'dual-alpn' })
  })
  await app.listen({ port: tlsPort, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const failed: unknown[] = []
  app.autocert.on('failed', (e) => failed.push(e))
  await eventually(() => app.autocert.status().every((s) => s.serial !== undefined) || failed.length > 0)
  t.same(failed, [], 'no order failed')
  t.equal(pebble.orderCount(), 2, 'two orders, each validated once')
  t.equal((await handshake(tlsPort, domain, root, RSA_ONLY.tls13)).keyType, 'rsa', 'RSA served to an RSA-only client')
  t.equal((await handshake(tlsPort, domain, root, ECDSA_ONLY.tls13)).keyType, 'ecdsa', 'ECDSA served to an ECDSA-only client')
})
