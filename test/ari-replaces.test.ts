// An order naming the certificate it replaces that the CA keeps answering with serverInternal, on real Pebble 2.10 and Azurite.
import t from 'tap'
import { BlobServiceClient } from '@azure/storage-blob'
import { startAriFleet, storedLeaf } from './helpers/ari'
import { jwsPayload } from './helpers/ca-proxy'
import { handshake } from './support/tls'

const DOMAIN = 'replaces.example.test'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/*
 * Pebble 2.10 answers about one renewal in 200 of the bench's drill (figure 7)
 * with 500 serverInternal, "could not find an order for the given certificate",
 * on every retry, and the certificate was then never renewed. It cannot be made
 * to do so on purpose: the proxy gives that answer, in Pebble's words, to every
 * new-order that names a certificate it replaces, and passes the others.
 */
t.test('a renewal whose replaces the CA answers with serverInternal through every retry goes once more without it, and is served', async (t) => {
  const { root, pebble, httpPort, azurite, ca, start } = await startAriFleet(t, 'replaces', [DOMAIN])
  const instance = await start('a', { httpPort })
  await instance.waitForLog((l) => l.msg === 'certificate obtained')
  const before = (await handshake(instance.port, DOMAIN, root)).serial

  let refused = 0
  ca.proxy.intercept = ({ method, path, body }) => {
    if (method !== 'POST' || !path.startsWith('/order-plz') || jwsPayload(body)?.replaces === undefined) return undefined
    refused++
    return { status: 500, problem: { type: 'urn:ietf:params:acme:error:serverInternal', detail: 'could not find an order for the given certificate: could not find order resulting in the given certificate serial number' }, spendNonce: true, replayNonce: true }
  }
  const orders = pebble.orderCount()
  const container = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('replaces')
  await pebble.setRenewalInfo(await storedLeaf(container, DOMAIN), { start: new Date(Date.now() - 3_600_000), end: new Date(Date.now() - 3_599_000) })

  const told = Date.now()
  let served = before
  while (served === before && Date.now() - told < 150_000) {
    await sleep(1000)
    served = (await handshake(instance.port, DOMAIN, root)).serial
  }
  t.not(served, before, `renewed and served ${((Date.now() - told) / 1000).toFixed(1)} s after Pebble was told`)
  t.ok(refused >= 2, `the order naming the certificate it replaces was refused, retries included (${refused} answers)`)
  t.equal(pebble.orderCount(), orders + 1, 'then one order without replaces, accepted')
  t.ok(instance.logs.some((l) => l.msg === 'the CA refused the order\'s replaces: ordering without it'), 'the order without replaces is logged')
  t.notOk(instance.logs.some((l) => l.msg === 'certificate order failed'), 'and no order failed')
})
