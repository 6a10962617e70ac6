import { X509Certificate } from 'node:crypto'
import http2 from 'node:http2'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import tls from 'node:tls'
import { BlobServiceClient } from '@azure/storage-blob'
import * as acme from 'acme-client'
import type { Authorization } from 'acme-client'
import Fastify from 'fastify'
import t from 'tap'
import autocert, { ALPNCallback, AzureBlobStore, createAutocert, MemoryStore, SNICallback, type AutocertOptions, type CertStore, type Logger } from '../lib'
import { TlsAlpn01Challenges } from '../lib/acme/tls-alpn'
import { eventually, spyStore } from './support/app'
import { sendClientHello } from './helpers/client-hello'
import { freePort } from './support/ports'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

/*
 * TLS-ALPN-01 (RFC 8737) against real Pebble and real Azurite, with real TLS:
 * Pebble validates on the HTTPS app's own port, and its HTTP-01 port has
 * nothing listening (port 80 closed), so only TLS-ALPN-01 can succeed.
 */

const CONTAINER = 'tls-alpn'
const A = 'a.example.test'
const ACME_TLS = ['acme-tls/1']
// What a client sees when no protocol it offers is selected.
const NO_PROTOCOL = 'refused: ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL'

interface Probe {
  /** The selected protocol; false when none was. */
  alpn: string | false
  /** The leaf the server sent, PEM. */
  pem: string
}

/**
 * One TLS handshake to 127.0.0.1:port offering `protocols` (undefined: no ALPN
 * extension) with SNI `servername` (undefined: none). Accepts any certificate,
 * so the challenge certificate can be read; rejects with the TLS error.
 */
function probe (port: number, servername: string | undefined, protocols: string[] | undefined, maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<Probe> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ALPNProtocols: protocols, rejectUnauthorized: false, maxVersion }, () => {
      const result = { alpn: socket.alpnProtocol ?? false, pem: socket.getPeerX509Certificate()?.toString() ?? '' }
      socket.destroy()
      resolve(result)
    })
    socket.setTimeout(30_000, () => socket.destroy(new Error('handshake timed out')))
    socket.once('error', reject)
  })
}

/** What a client sees of the ALPN choice: the protocol, none, or the TLS error that refused it. */
const outcome = (p: Promise<Probe>): Promise<string> =>
  p.then((r) => r.alpn === false ? 'no ALPN' : r.alpn, (err: NodeJS.ErrnoException) => `refused: ${err.code ?? err.message}`)

// Offers a client may make; acme-tls/1 alone is the CA's and is tested on its own.
const OFFERS: Array<string[] | undefined> = [['h2', 'http/1.1'], ['http/1.1', 'h2'], ['h2'], ['http/1.1'], undefined, ['acme-tls/1', 'http/1.1'], ['spdy/3', 'foo']]
const show = (offer: string[] | undefined): string => offer === undefined ? 'no ALPN extension' : offer.join(',')

/** A logger that keeps every line, to check no secret reaches it. */
function memoryLogger (): Logger & { lines: string[] } {
  const lines: string[] = []
  const keep = (obj: object, msg: string): void => { lines.push(`${msg} ${JSON.stringify(obj)}`) }
  return { lines, debug: keep, info: keep, warn: keep, error: keep }
}

const listening = (server: { address (): AddressInfo | string | null }): number => (server.address() as AddressInfo).port

t.test('TLS-ALPN-01 on the HTTPS port, with port 80 closed', async (t) => {
  // Pebble is told its TLS-ALPN-01 port when it starts and the app must then
  // listen on exactly that port: pick a free one first and give it to both.
  const tlsPort = await freePort()
  const { azurite, pebble, root } = await startServices(t, { tlsPort })
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })
  const base = { directoryUrl: pebble.directoryUrl, termsOfServiceAgreed: true, challenges: ['tls-alpn-01'] } as const
  const logs: string[] = []
  const logStream = new Writable({ write (chunk: Buffer, _enc, done) { logs.push(chunk.toString('utf8')); done() } })

  /** A Fastify HTTPS app with both callbacks and no HTTP-01 listener. */
  async function startApp (port: number, store: CertStore, options: Partial<AutocertOptions> & { domains: string[] }): Promise<{ port: number, close (): Promise<void> }> {
    const app = Fastify({ https: { SNICallback, ALPNCallback }, logger: { level: 'debug', stream: logStream } })
    await app.register(autocert, { ...base, store, ...options })
    app.get('/', async () => 'hello')
    await app.listen({ port, host: '127.0.0.1' })
    return { port: listening(app.server), close: async () => { await app.close() } }
  }

  const store = spyStore(newStore())
  const first = await startApp(tlsPort, store, { domains: [A] })
  let closed = false
  t.teardown(async () => { if (!closed) await first.close() })

  await t.test('the first handshake gets a certificate validated by TLS-ALPN-01; one order', async (t) => {
    const served = await handshake(tlsPort, A, root)
    t.ok(served.authorized, 'the chain verifies against Pebble\'s root')
    t.equal(served.subject, A)
    t.equal(pebble.orderCount(), 1, 'one order')
    t.notOk(store.keys.some((k) => k.endsWith('+http-01')), 'no HTTP-01 answer was published')
    await eventually(async () => !(await container.getBlockBlobClient(`${A}+tls-alpn-01`).exists()))
    t.pass('the challenge certificate is withdrawn once the CA is done')
    t.equal(store.keys.filter((k) => k === `${A}+tls-alpn-01`).length, 2,
      'written and deleted, never read: the publishing instance answers from memory')
    t.equal((await handshake(tlsPort, A, root)).serial, served.serial, 'served again from memory')
  })

  await t.test('another instance completes TLS-ALPN-01 through the first one, which reads the store', async (t) => {
    // This app listens on another port: Pebble's validation reaches the first app,
    // which has no copy of the challenge in memory.
    const orders = pebble.orderCount()
    const other = await startApp(await freePort(), newStore(), { domains: ['c.example.test'] })
    t.teardown(() => other.close())
    const served = await handshake(other.port, 'c.example.test', root)
    t.ok(served.authorized, 'the chain verifies against Pebble\'s root')
    t.ok(store.keys.includes('c.example.test+tls-alpn-01'), 'the first app looked the challenge up in the store')
    t.equal(pebble.orderCount(), orders + 1, 'one order')
  })

  await t.test('challenges are tried in the order of preference, not as fallbacks', async (t) => {
    // HTTP-01 first: the CA offers it, so it is the one completed, and it fails
    // (nothing listens on Pebble's HTTP-01 port) although TLS-ALPN-01 would succeed.
    const spied = spyStore(newStore())
    const other = await startApp(await freePort(), spied, { domains: ['h.example.test'], challenges: ['http-01', 'tls-alpn-01'] })
    t.teardown(() => other.close())
    await t.rejects(handshake(other.port, 'h.example.test', root), 'the order fails')
    t.ok(spied.keys.some((k) => k.endsWith('+http-01')), 'an HTTP-01 answer was published')
    t.notOk(spied.keys.includes('h.example.test+tls-alpn-01'), 'no TLS-ALPN-01 certificate was')
  })

  await t.test('an acme-tls/1 probe gets a challenge certificate published by another process', async (t) => {
    const name = 'p.example.test'
    const quiet = { debug () {}, info () {}, warn () {}, error () {} }
    const publisher = new TlsAlpn01Challenges(newStore(), quiet)
    const authz: Authorization = { identifier: { type: 'dns', value: name }, status: 'pending', challenges: [], url: '' }
    const challenge = { token: 'T'.repeat(43) }
    const keyAuthorization = `${challenge.token}.thumbprint`
    await publisher.publish(authz, challenge, keyAuthorization)
    const answer = await probe(tlsPort, name, ACME_TLS)
    t.equal(answer.alpn, 'acme-tls/1', 'acme-tls/1 selected')
    t.ok(acme.crypto.isAlpnCertificateAuthorizationValid(answer.pem, keyAuthorization), 'the certificate carries the key authorization digest')
    t.equal(new X509Certificate(answer.pem).subjectAltName, `DNS:${name}`, 'for that name only')
    // TLS 1.2 asks for the certificate before the protocol: no validation there.
    await t.rejects(probe(tlsPort, name, ACME_TLS, 'TLSv1.2'), 'TLS 1.2: refused (an unlisted name, by the SNICallback)')
    t.equal(await outcome(probe(tlsPort, A, ACME_TLS, 'TLSv1.2')), NO_PROTOCOL,
      'TLS 1.2, a listed name: Node\'s refusal, never the real certificate under acme-tls/1')
    t.equal((await probe(tlsPort, 'P.Example.Test.', ACME_TLS)).alpn, 'acme-tls/1', 'the name is normalised')
    await publisher.withdraw(authz)
    await t.rejects(probe(tlsPort, name, ACME_TLS), 'withdrawn: the handshake fails')
    t.equal((await handshake(tlsPort, A, root)).subject, A, 'the app still serves')
  })

  await t.test('ALPN: the callbacks select exactly what Node selects without them', async (t) => {
    // Reference servers: the same certificate, Node's own ALPN choice.
    const pem = (await container.getBlockBlobClient(A).downloadToBuffer()).toString()
    const cut = pem.indexOf('-----BEGIN CERTIFICATE-----')
    const key = pem.slice(0, cut)
    const cert = pem.slice(cut)
    const variants: Array<{ what: string, reference: tls.Server, app: () => Promise<{ port: number, close (): Promise<void> }> }> = [
      {
        what: 'Fastify https',
        reference: https.createServer({ key, cert }),
        app: async () => ({ port: tlsPort, close: async () => {} })
      },
      {
        what: 'Fastify http2',
        reference: http2.createSecureServer({ key, cert }),
        app: async () => {
          const app = Fastify({ http2: true, https: { SNICallback, ALPNCallback } })
          await app.register(autocert, { ...base, store: newStore(), domains: [A] })
          await app.listen({ port: 0, host: '127.0.0.1' })
          return { port: listening(app.server), close: async () => { await app.close() } }
        }
      },
      {
        what: 'Fastify http2 with allowHTTP1',
        reference: http2.createSecureServer({ key, cert, allowHTTP1: true }),
        app: async () => {
          const app = Fastify({ http2: true, https: { allowHTTP1: true, SNICallback, ALPNCallback } })
          await app.register(autocert, { ...base, store: newStore(), domains: [A] })
          await app.listen({ port: 0, host: '127.0.0.1' })
          return { port: listening(app.server), close: async () => { await app.close() } }
        }
      }
    ]
    for (const { what, reference, app } of variants) {
      await new Promise<void>((resolve) => reference.listen(0, '127.0.0.1', resolve))
      t.teardown(() => new Promise((resolve) => reference.close(resolve)))
      const ours = await app()
      t.teardown(() => ours.close())
      for (const maxVersion of ['TLSv1.3', 'TLSv1.2'] as const) {
        for (const offer of OFFERS) {
          const expected = await outcome(probe(listening(reference), A, offer, maxVersion))
          t.equal(await outcome(probe(ours.port, A, offer, maxVersion)), expected, `${what}, ${maxVersion}, ${show(offer)}: ${expected}`)
        }
      }
    }
    // Node's choice, spelt out for Fastify's default (https, HTTP/1.1).
    t.equal(await outcome(probe(tlsPort, A, ['h2', 'http/1.1'])), 'http/1.1')
    t.equal(await outcome(probe(tlsPort, A, ['h2'])), NO_PROTOCOL)
    t.equal(await outcome(probe(tlsPort, A, undefined)), 'no ALPN')
    const real = await probe(tlsPort, A, ['acme-tls/1', 'http/1.1'])
    t.equal(real.alpn, 'http/1.1', 'acme-tls/1 among others is no validation')
    t.equal(new X509Certificate(real.pem).serialNumber, new X509Certificate(cert).serialNumber, 'and gets the real certificate')
  })

  await t.test('hostile acme-tls/1 connections fail their handshake, order nothing and never reach the store with a bad name', async (t) => {
    const orders = pebble.orderCount()
    const before = store.keys.length
    const wellFormed = ['nothing.example.test', 'A.EXAMPLE.TEST', 'c.example.test']
    const malformed = ['bad..example.test', '-x.example.test', 'acme_account+key', 'x.example.test+tls-alpn-01', 'a_b.example.test', 'localhost', 'x'.repeat(64) + '.test']
    for (const name of [...wellFormed, ...malformed]) {
      await t.rejects(probe(tlsPort, name, ACME_TLS), `${name}: refused`)
    }
    await t.rejects(probe(tlsPort, undefined, ACME_TLS), 'no SNI: refused')
    // Bytes tls.connect will not send: refused by OpenSSL or by the name check.
    for (const serverName of [Buffer.from('a.example.test\0.evil'), Buffer.from([0xff, 0xfe, 0x2e, 0x74]), 'bücher.example.test/../x', 'a'.repeat(300)]) {
      for (const version of ['1.2', '1.3'] as const) {
        const answer = await sendClientHello(tlsPort, { serverName, version, protocols: ACME_TLS })
        t.not(answer.outcome, 'served', `${version} ${JSON.stringify(serverName.toString().slice(0, 30))}: refused`)
      }
    }
    const looked = store.keys.slice(before)
    // Bytes ff fe reach Node as Latin-1 'ÿþ': an internationalised name, looked up as its punycode.
    t.same([...new Set(looked)].sort(), ['a.example.test', 'c.example.test', 'nothing.example.test', 'xn--vdab.t'].map((n) => `${n}+tls-alpn-01`),
      'only well-formed names, normalised, were looked up')
    t.equal(pebble.orderCount(), orders, 'no order')
    t.equal((await handshake(tlsPort, A, root)).subject, A, 'the app still serves')
  })

  await t.test('createAutocert() with https.createServer', async (t) => {
    // Pebble validates on tlsPort only: the Fastify app gives it up.
    await first.close()
    closed = true
    const log = memoryLogger()
    const server = createAutocert({ ...base, domains: ['d.example.test'], store: newStore(), logger: log })
    const httpsServer = https.createServer({ SNICallback: server.SNICallback, ALPNCallback: server.ALPNCallback }, (_req, res) => res.end('hello'))
    await server.ready()
    await new Promise<void>((resolve) => httpsServer.listen(tlsPort, '127.0.0.1', resolve))
    t.teardown(async () => {
      await new Promise((resolve) => httpsServer.close(resolve))
      await server.close()
    })
    server.start(httpsServer)
    const orders = pebble.orderCount()
    const served = await handshake(tlsPort, 'd.example.test', root)
    t.ok(served.authorized, 'the chain verifies against Pebble\'s root')
    t.equal(pebble.orderCount(), orders + 1, 'one order')
    t.equal(await outcome(probe(tlsPort, 'd.example.test', ['h2', 'http/1.1'])), 'http/1.1', 'h2,http/1.1: http/1.1')
    t.equal(await outcome(probe(tlsPort, 'd.example.test', ['h2'])), NO_PROTOCOL, 'h2 alone: refused')
    t.equal(await outcome(probe(tlsPort, 'd.example.test', undefined)), 'no ALPN', 'no ALPN extension: none')
    await t.rejects(probe(tlsPort, 'e.example.test', ACME_TLS), 'acme-tls/1 with no pending challenge: refused')
    t.notOk(log.lines.some((l) => l.includes('PRIVATE KEY')), 'no key in the logs')
  })

  t.notOk(logs.some((l) => l.includes('PRIVATE KEY')), 'no key in the app logs')
})

t.test('a challenge lookup that fails, or finds unusable data, fails the handshake and is logged (once)', async (t) => {
  const inner = new MemoryStore()
  const store: CertStore = {
    get: async (key) => {
      if (key === 'down.example.test+tls-alpn-01') throw new Error('store unavailable')
      return await inner.get(key)
    },
    put: async (key, value) => { await inner.put(key, value) },
    delete: async (key) => { await inner.delete(key) },
    list: async (prefix) => await inner.list(prefix),
    lock: async (key, signal) => await inner.lock(key, signal)
  }
  await inner.put('corrupt.example.test+tls-alpn-01', 'not a certificate')
  const log = memoryLogger()
  // No start(): nothing is ordered, only challenges are looked up.
  const server = createAutocert({ domains: ['x.example.test'], store, termsOfServiceAgreed: true, challenges: ['tls-alpn-01'], logger: log })
  await server.ready()
  const httpsServer = https.createServer({ SNICallback: server.SNICallback, ALPNCallback: server.ALPNCallback })
  await new Promise<void>((resolve) => httpsServer.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    await new Promise((resolve) => httpsServer.close(resolve))
    await server.close()
  })
  for (const name of ['down.example.test', 'corrupt.example.test', 'down.example.test', 'corrupt.example.test']) {
    await t.rejects(probe(listening(httpsServer), name, ACME_TLS), `${name}: refused`)
  }
  t.match(log.lines.filter((l) => l.startsWith('ACME challenge lookup failed')), [/store unavailable/], 'the failing store: one line (then at most one per 10 s, with a count)')
  t.match(log.lines.filter((l) => l.startsWith('ignoring unusable stored TLS-ALPN-01 challenge')), [/corrupt\.example\.test\+tls-alpn-01.*FST_AUTOCERT_CORRUPT/], 'the unusable one: once')
})
