import { X509Certificate } from 'node:crypto'
import { get as httpGet } from 'node:http'
import { BlobServiceClient } from '@azure/storage-blob'
import Fastify from 'fastify'
import t from 'tap'
import autocert, { AzureBlobStore, MemoryStore } from '../lib'
import { startApp, eventually, spyStore, type TestApp } from './support/app'
import { startServices } from './helpers/services'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

const CONTAINER = 'plugin-test'

t.test('the plugin on real Pebble and real Azurite', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })
  const domains = ['a.example.test', 'b.example.test']

  const close = async (a: TestApp): Promise<void> => { await a.app.close() }
  const store = spyStore(newStore())
  const first = await startApp(pebble, httpPort, store, { domains })
  t.teardown(() => close(first))

  let served: Record<string, string> = {}
  await t.test('after listen, every listed domain gets its certificate with no handshake', async (t) => {
    await eventually(() => first.app.autocert.status().every((s) => s.serial !== undefined))
    t.equal(pebble.orderCount(), 2, 'one order per domain')
    served = Object.fromEntries(first.app.autocert.status().map((s) => [s.domain, s.serial as string]))
    const obtained = first.logs.filter((l) => l.msg === 'certificate obtained').map((l) => l.domain)
    t.same(obtained.sort(), domains, 'one "certificate obtained" log line per domain')
  })

  await t.test('a real handshake gets a certificate that verifies against Pebble\'s root', async (t) => {
    for (const domain of domains) {
      const cert = await handshake(first.port, domain, root)
      t.ok(cert.authorized, `${domain}: chain verifies against the root`)
      t.equal(cert.subject, domain)
      t.equal(cert.serial, served[domain], 'the serial status() reports')
    }
    const res = await first.app.inject({ url: '/' })
    t.equal(res.body, 'hello', 'the app itself is untouched')
  })

  await t.test('the certificate and its key are in Azure Blob Storage, in one blob', async (t) => {
    const pem = (await container.getBlockBlobClient('a.example.test').downloadToBuffer()).toString()
    t.match(pem, /^-----BEGIN (EC )?PRIVATE KEY-----/, 'key first (autocert format)')
    const leaf = new X509Certificate(pem.slice(pem.indexOf('-----BEGIN CERTIFICATE-----')))
    t.equal(leaf.serialNumber.toUpperCase(), served['a.example.test'])
    t.ok(await container.getBlockBlobClient('acme_account+key').exists(), 'the account key is shared through the store')
  })

  await t.test('an unlisted SNI name fails the handshake and reaches neither CA nor store', async (t) => {
    const orders = pebble.orderCount()
    const before = store.keys.length
    for (const name of ['evil.example.test', 'A.EXAMPLE.TEST.evil.test', 'localhost', '127.0.0.1']) {
      await t.rejects(handshake(first.port, name, root), `${name} is refused`)
    }
    t.same(store.keys.slice(before), [], 'no store call')
    t.equal(pebble.orderCount(), orders, 'no order')
    const upper = await handshake(first.port, 'A.Example.TEST', root)
    t.equal(upper.serial, served['a.example.test'], 'a listed name in another case maps to it')
  })

  await t.test('concurrent first handshakes for a new domain share one order', async (t) => {
    const late = await startApp(pebble, await freePort(), newStore(), { domains: ['c.example.test'], http01: undefined })
    t.teardown(() => close(late))
    // This app has no HTTP-01 listener of its own: Pebble validates on the first app's,
    // which finds the answer in the shared store.
    const orders = pebble.orderCount()
    const certs = await Promise.all(Array.from({ length: 8 }, () => handshake(late.port, 'c.example.test', root)))
    t.equal(new Set(certs.map((c) => c.serial)).size, 1, 'every handshake got the same certificate')
    t.ok(certs.every((c) => c.authorized))
    t.equal(pebble.orderCount(), orders + 1, 'one order')
  })

  await t.test('the challenge route answers a token stored by another instance, for its host only', async (t) => {
    const token = 'x'.repeat(43)
    await container.getBlockBlobClient(`${token}+http-01`)
      .upload(JSON.stringify({ domain: 'a.example.test', keyAuthorization: 'x.key-authorization' }), 63)
    // fetch() cannot set Host: a plain http.get can.
    const get = (path: string, host: string): Promise<{ status?: number, type?: string, location?: string, body: string }> =>
      new Promise((resolve, reject) => {
        httpGet({ port: httpPort, host: '127.0.0.1', path, headers: { host } }, (res) => {
          let body = ''
          res.on('data', (d: Buffer) => { body += d.toString() })
          res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], location: res.headers.location, body }))
        }).on('error', reject)
      })
    const path = `/.well-known/acme-challenge/${token}`
    const hit = await get(path, `a.example.test:${httpPort}`)
    t.equal(hit.status, 200)
    t.equal(hit.body, 'x.key-authorization', 'exactly the key authorization')
    t.match(hit.type, /^text\/plain/)
    t.equal((await get(path, 'b.example.test')).status, 404, 'not for another host')
    t.equal((await get(`/.well-known/acme-challenge/${'y'.repeat(43)}`, 'a.example.test')).status, 404, 'unknown token')
    const viaApp = await first.app.inject({ url: path, headers: { host: 'A.Example.Test' } })
    t.equal(viaApp.statusCode, 200, 'the app route answers too')
    t.equal(viaApp.body, 'x.key-authorization')
    t.equal((await first.app.inject({ url: '/.well-known/acme-challenge/..%2f..%2facme_account+key', headers: { host: 'a.example.test' } })).statusCode, 404)
    const other = await get('/some/page?q=1', 'a.example.test')
    t.equal(other.status, 302, 'everything else is redirected to https')
    t.equal(other.location, `https://a.example.test:${first.port}/some/page?q=1`)
  })

  await t.test('a restarted app serves the stored certificate with no new order', async (t) => {
    await close(first)
    const orders = pebble.orderCount()
    const second = await startApp(pebble, httpPort, newStore(), { domains })
    t.teardown(() => close(second))
    t.ok(second.logs.some((l) => l.msg === 'certificate loaded' && l.domain === 'a.example.test'), 'pre-warmed at onReady')
    for (const domain of domains) {
      t.equal((await handshake(second.port, domain, root)).serial, served[domain])
    }
    t.equal(pebble.orderCount(), orders, 'no order')
    const info = await second.app.autocert.certificate('b.example.test')
    t.equal(info.serial, served['b.example.test'])
    t.notOk(JSON.stringify(info).includes('PRIVATE KEY'), 'the decorator never hands out the key')
  })

  await t.test('a forced renewal orders a new certificate and serves it', async (t) => {
    const app = await startApp(pebble, httpPort, newStore(), { domains: ['a.example.test'] })
    t.teardown(() => close(app))
    const renewed = await app.app.autocert.renew('a.example.test')
    t.not(renewed.serial, served['a.example.test'])
    t.equal((await handshake(app.port, 'a.example.test', root)).serial, renewed.serial)
    t.ok(app.logs.some((l) => l.msg === 'certificate renewed'))
  })
})

t.test('on a plain HTTP instance the challenge route is on that instance', async (t) => {
  const store = new MemoryStore()
  const app = Fastify()
  await app.register(autocert, { domains: ['p.example.test'], store, termsOfServiceAgreed: true })
  await app.ready()
  t.teardown(() => app.close())
  const token = 'T'.repeat(40)
  await store.put(`${token}+http-01`, JSON.stringify({ domain: 'p.example.test', keyAuthorization: 'T.answer' }))
  const url = `/.well-known/acme-challenge/${token}`
  const res = await app.inject({ url, headers: { host: 'p.example.test' } })
  t.equal(res.statusCode, 200)
  t.equal(res.body, 'T.answer')
  t.equal((await app.inject({ method: 'POST', url, headers: { host: 'p.example.test' } })).statusCode, 404, 'GET and HEAD only')
  t.equal((await app.inject({ url: '/.well-known/acme-challenge/short', headers: { host: 'p.example.test' } })).statusCode, 404)
})
