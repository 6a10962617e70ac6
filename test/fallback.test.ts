// A fallback CA: two real Pebbles, the first one down, a fleet of two on Azurite.
import https from 'node:https'
import tls from 'node:tls'
import t from 'tap'
import * as acme from 'acme-client'
import { BlobServiceClient } from '@azure/storage-blob'
import { AzureBlobStore } from '../lib'
import { storeKeys } from '../lib/store/keys'
import { startCaProxy } from './helpers/ca-proxy'
import { eventually, startApp } from './support/app'
import { startAzurite } from './support/azurite'
import { startPebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

const DOMAINS = ['f1.example.test', 'f2.example.test']
const CONTAINER = 'fallback'

t.test('the first CA down: certificates from the second, one order per domain for the fleet; the first again once it is back', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  // Both CAs validate HTTP-01 on the same port, where instance `a` answers from the store.
  const [first, second] = await Promise.all([startPebble({ httpPort }), startPebble({ httpPort })])
  t.teardown(async () => { await first.stop(); await second.stop() })
  const [proxyA, proxyB] = await Promise.all([startCaProxy(first), startCaProxy(second)])
  t.teardown(async () => { await proxyA.close(); await proxyB.close() })
  acme.axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ca: [...tls.rootCertificates, first.caCert, second.caCert, proxyA.caCert, proxyB.caCert] })
  const [rootA, rootB] = await Promise.all([first.root(), second.root()])
  const store = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })
  const directoryUrl = [proxyA.directoryUrl, proxyB.directoryUrl]

  await proxyA.pause()
  const started = Date.now()
  const a = await startApp(first, httpPort, store(), { domains: DOMAINS, directoryUrl })
  t.teardown(() => a.app.close())
  const b = await startApp(first, httpPort, store(), { domains: DOMAINS, directoryUrl, http01: undefined })
  t.teardown(() => b.app.close())
  await eventually(() => [a, b].every((i) => i.app.autocert.status().every((s) => s.serial !== undefined)), 60_000)
  const seconds = (Date.now() - started) / 1000
  t.equal(first.orderCount(), 0, 'nothing reached the first CA')
  t.equal(second.orderCount(), 2, `the second CA issued one certificate per domain for the fleet, ${seconds.toFixed(1)} s after start`)
  for (const domain of DOMAINS) {
    for (const instance of [a, b]) {
      const served = await handshake(instance.port, domain, rootB)
      t.ok(served.authorized, `${domain}: a chain of the second CA`)
    }
  }
  t.ok([...a.logs, ...b.logs].some((l) => l.msg === 'the CA cannot serve orders now: trying the next one'), 'the hand-over is logged')
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(CONTAINER)
  t.ok(await container.getBlockBlobClient(storeKeys.accountOf(proxyB.directoryUrl)).exists(), 'the second CA\'s account has its own key in the store')

  await proxyA.resume()
  // The first CA is passed over for a minute after it failed; after that new orders try it first again.
  await new Promise((resolve) => setTimeout(resolve, Math.max(0, started + 62_000 - Date.now())))
  const renewed = await a.app.autocert.renew(DOMAINS[0])
  t.equal(first.orderCount(), 1, 'back to the first CA for a new order')
  t.equal(first.replacementCount(), 0, 'without naming as replaced a certificate it did not issue')
  t.ok((await handshake(a.port, DOMAINS[0], rootA)).authorized, 'its certificate served')
  t.equal((await handshake(a.port, DOMAINS[0], rootA)).serial, renewed.serial)
  const [keyA, keyB] = await Promise.all([storeKeys.account, storeKeys.accountOf(proxyB.directoryUrl)].map(async (key) => await container.getBlockBlobClient(key).downloadToBuffer()))
  t.not(keyA.toString(), keyB.toString(), 'and its account has a key of its own in the store')
})
