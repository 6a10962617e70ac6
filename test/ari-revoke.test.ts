// revoke() in a fleet of three processes, on real Pebble 2.10 and Azurite: the revoked certificate is replaced everywhere.
import t from 'tap'
import { startAriFleet } from './helpers/ari'
import { callInstance, type Instance } from './helpers/instance'
import { handshake } from './support/tls'

const DOMAIN = 'revoke.example.test'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

t.test('revoke() on one instance: replaced there at once, on the others at their next look at ARI; one replacement order', async (t) => {
  const { root, pebble, httpPort, start } = await startAriFleet(t, 'revoke', [DOMAIN])
  const instances: Instance[] = [await start('a', { httpPort })]
  await instances[0].waitForLog((l) => l.msg === 'certificate obtained')
  for (const name of ['b', 'c']) instances.push(await start(name))
  const first = (await handshake(instances[0].port, DOMAIN, root)).serial
  t.same(await Promise.all(instances.map(async (i) => (await handshake(i.port, DOMAIN, root)).serial)), [first, first, first], 'one certificate for the fleet')

  // revoke() on b: b serves the replacement at once, the others at their next look; the revoked serial nowhere.
  const orders = pebble.orderCount()
  const { serial: replacement } = await callInstance(instances[1], DOMAIN, root, 'POST', '/_instance/revoke', { domain: DOMAIN, reason: 'keyCompromise' }) as { serial: string }
  t.not(replacement, first, 'a replacement')
  t.equal((await handshake(instances[1].port, DOMAIN, root)).serial, replacement, 'served by the revoking instance at once')
  const revokedAt = Date.now()
  let everywhere = false
  while (!everywhere && Date.now() - revokedAt < 90_000) {
    await sleep(1000)
    everywhere = (await Promise.all(instances.map(async (i) => (await handshake(i.port, DOMAIN, root)).serial))).every((s) => s === replacement)
  }
  t.ok(everywhere, `no instance serves the revoked serial ${((Date.now() - revokedAt) / 1000).toFixed(1)} s later`)
  t.equal(pebble.orderCount(), orders + 1, 'one replacement order')
  t.ok(instances[1].logs.some((l) => l.msg === 'certificate revoked' && l.serial === first), 'the revocation is logged')
})
