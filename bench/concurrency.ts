/*
 * Figure 5: 200 simultaneous first handshakes for one new listed domain (warm
 * account in the store). They must all wait for one order (Pebble counts the
 * new-order requests it accepts) and all be served the same certificate, which
 * verifies against Pebble's root.
 */
import { AzureBlobStore } from '../lib'
import { startApp } from '../test/support/app'
import { handshake } from '../test/support/tls'
import { fmt, type Figure } from './common'

const CLIENTS = 200
const NAME = 'burst.bench.test'

export const concurrency: Figure = async (services, _settings, notes) => {
  const { pebble, httpPort } = await services.pebble()
  const azurite = await services.azurite()
  const root = await pebble.root()
  // A container of its own: the account is created by the first order, as on a first deployment.
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'bench-burst' })
  const orders = pebble.orderCount()
  const started = await startApp(pebble, httpPort, store, { domains: [NAME] })
  try {
    const t0 = performance.now()
    const served = await Promise.all(Array.from({ length: CLIENTS }, async () => {
      const s = await handshake(started.port, NAME, root)
      return { ...s, at: performance.now() - t0 }
    }))
    const ms = performance.now() - t0
    const serials = new Set(served.map((s) => s.serial))
    const verified = served.filter((s) => s.authorized && s.subject === NAME).length
    const ordered = pebble.orderCount() - orders
    const first = Math.min(...served.map((s) => s.at))
    notes.push(`figure 5: ${CLIENTS} handshakes sent at listen (cold account): first served after ${fmt.ms(first)}, all after ${fmt.ms(ms)}; ` +
      `${ordered} order(s), ${serials.size} serial(s), ${verified} verified for ${NAME}`)
    return [{
      figure: `5 ${CLIENTS} concurrent first handshakes, one domain`,
      ours: `${ordered} order, ${serials.size} serial, ${verified} ok, ${fmt.ms(ms)}`,
      baseline: '-',
      target: `1 order, 1 serial, ${CLIENTS} ok`,
      met: ordered === 1 && serials.size === 1 && verified === CLIENTS
    }]
  } finally {
    await started.app.close()
  }
}
