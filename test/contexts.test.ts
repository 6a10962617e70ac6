import t from 'tap'
import { AzureBlobStore } from '../lib'
import { startServices } from './helpers/services'
import { spyStore, startApp } from './support/app'
import { handshake, type Served } from './support/tls'

const A = 'a.contexts.example.test'
const B = 'b.contexts.example.test'

t.test('contextCacheSize 1 on real Pebble and Azurite: two names take turns in the one place, every handshake verified, each certificate read again from the store, nothing ordered', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const store = spyStore(new AzureBlobStore({ connectionString: azurite.connectionString, container: 'contexts' }))
  const orders = pebble.orderCount()
  const app = await startApp(pebble, httpPort, store, { domains: [A, B], contextCacheSize: 1 })
  t.teardown(() => app.app.close())

  const first: Record<string, Served> = { [A]: await handshake(app.port, A, root), [B]: await handshake(app.port, B, root) }
  t.equal(pebble.orderCount(), orders + 2, 'one order per name')
  const reads = store.keys.filter((key) => key === A || key === B).length
  for (let round = 0; round < 3; round++) {
    for (const name of [A, B]) {
      const served = await handshake(app.port, name, root)
      t.ok(served.authorized, `round ${round}, ${name}: verified against Pebble's root`)
      t.equal(served.subject, name)
      t.equal(served.serial, first[name].serial, 'the same certificate, its context built again')
    }
  }
  t.equal(pebble.orderCount(), orders + 2, 'no order for a rebuilt context')
  t.equal(store.keys.filter((key) => key === A || key === B).length, reads + 6, 'one store read for each of the 6 handshakes, each for a name cooled by the other')
})
