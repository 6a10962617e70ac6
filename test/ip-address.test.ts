// A certificate for an IP address on real Pebble 2.10: the shortlived profile, HTTP-01 by address, and the server's default certificate for clients that send no SNI.
import { X509Certificate } from 'node:crypto'
import tls from 'node:tls'
import Fastify from 'fastify'
import t from 'tap'
import autocert, { ALPNCallback, MemoryStore, SNICallback } from '../lib'
import { eventually, startApp } from './support/app'
import { startPebble, trustPebble } from './support/pebble'
import { freePort } from './support/ports'

const HOUR = 3600

/** A handshake to 127.0.0.1:port without SNI, as a client that connects by address makes it; the chain and the IP verified against `ca`. */
function byAddress (port: number, ca: string): Promise<{ serial: string, authorized: boolean, notAfter: Date }> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: '' }, () => {
      const cert = socket.getPeerCertificate()
      socket.destroy()
      resolve({ serial: cert.serialNumber.toUpperCase(), authorized: socket.authorized, notAfter: new Date(cert.valid_to) })
    })
    socket.setTimeout(30_000, () => socket.destroy(new Error('handshake timed out')))
    socket.once('error', reject)
  })
}

t.test('an IP address', async (t) => {
  const httpPort = await freePort()
  const pebble = await startPebble({
    httpPort,
    version: '2.10',
    env: { PEBBLE_WFE_NONCEREJECT: '0' },
    profiles: {
      classic: { validityPeriod: 90 * 24 * HOUR, description: '90 days' },
      shortlived: { validityPeriod: 160 * HOUR, description: '160 hours, as Let\'s Encrypt\'s shortlived', promoteCommonName: false }
    }
  })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const root = await pebble.root()

  const before = pebble.orderCount()
  const app = await startApp(pebble, httpPort, new MemoryStore(), { domains: ['127.0.0.1', 'www.example.test'], profile: 'classic' })
  t.teardown(() => app.app.close())
  const issued = await app.app.autocert.certificate('127.0.0.1')
  const leaf = new X509Certificate(issued.chain)
  t.equal(leaf.checkIP('127.0.0.1'), '127.0.0.1', 'the certificate names the address')
  t.equal(leaf.subjectAltName, 'IP Address:127.0.0.1', 'in its SAN only')
  t.equal((issued.notAfter.getTime() - issued.notBefore.getTime()) / 1000, 160 * HOUR - 1, 'under the CA\'s shortlived profile, not options.profile')
  const named = await app.app.autocert.certificate('www.example.test')
  t.equal((named.notAfter.getTime() - named.notBefore.getTime()) / 1000, 90 * 24 * HOUR - 1, 'a host name keeps options.profile')
  t.equal(pebble.orderCount() - before, 2)

  await eventually(async () => (await byAddress(app.port, root).catch(() => undefined))?.serial === issued.serial)
  const served = await byAddress(app.port, root)
  t.ok(served.authorized, 'a client without SNI gets a chain that verifies for 127.0.0.1')

  // Renewal: handshakes go on the whole time, and none fails.
  let failed = 0
  let handshakes = 0
  const state = { running: true }
  const load = (async () => {
    while (state.running) {
      await byAddress(app.port, root).then(() => { handshakes++ }, () => { failed++ })
    }
  })()
  const renewed = await app.app.autocert.renew('127.0.0.1')
  t.not(renewed.serial, issued.serial, 'a new certificate')
  await eventually(async () => (await byAddress(app.port, root)).serial === renewed.serial)
  state.running = false
  await load
  t.equal(failed, 0, `no failed handshake during the renewal (${handshakes} made)`)
  t.ok(handshakes > 0)
})

t.test('an IP address validated with TLS-ALPN-01, on its reverse-mapping name (RFC 8738)', async (t) => {
  // Pebble validates TLS-ALPN-01 on tlsPort: the app listens on exactly that port, and nothing on port 80's stand-in.
  const tlsPort = await freePort()
  const pebble = await startPebble({ httpPort: await freePort(), tlsPort, version: '2.10', env: { PEBBLE_WFE_NONCEREJECT: '0' } })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const app = Fastify({ https: { SNICallback, ALPNCallback } })
  await app.register(autocert, { domains: ['127.0.0.1'], directoryUrl: pebble.directoryUrl, termsOfServiceAgreed: true, store: new MemoryStore(), challenges: ['tls-alpn-01'] })
  await app.listen({ port: tlsPort, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const issued = await app.autocert.certificate('127.0.0.1')
  t.equal(new X509Certificate(issued.chain).checkIP('127.0.0.1'), '127.0.0.1', 'issued for the address')
  const served = await byAddress(tlsPort, await pebble.root())
  t.equal(served.serial, issued.serial, 'and served without SNI')
  t.ok(served.authorized)
})
