import { createServer, request, type Server } from 'node:http'
import { BlobServiceClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { startAzurite, type Azurite } from './support/azurite'
import { startInstance, type Instance, type InstanceOptions } from './helpers/instance'
import { startPebble, type Pebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

// Three OS processes, one Azurite container, one Pebble: the fleet this plugin exists for.

let started = 0
/**
 * Starts the instances, the one answering on Pebble's validation port first:
 * the others order as soon as they listen, and the CA's validation request
 * must find a listener. The rest start together. On failure, their warnings
 * and errors are printed.
 */
async function fleet (t: Test, pebble: Pebble, options: Array<Partial<InstanceOptions>>, base: Omit<InstanceOptions, 'name'>): Promise<Instance[]> {
  const names = options.map(() => `i${++started}`)
  const start = (i: number): Promise<Instance> => startInstance(pebble, { ...base, name: names[i], ...options[i] })
  const responder = options.findIndex((o) => o.httpPort !== undefined)
  const first = responder === -1 ? undefined : await start(responder)
  const rest = await Promise.all(options.map((_, i) => i === responder ? undefined : start(i)))
  const instances = rest.map((instance) => instance ?? first as Instance)
  t.teardown(async () => {
    if (!t.passing()) for (const i of instances) for (const l of i.logs) if ((l.level as number) >= 40) t.comment(`${i.name}: ${JSON.stringify(l)}`)
    await Promise.all(instances.map((i) => i.stop()))
  })
  return instances
}

async function servedSerials (instances: Instance[], domain: string, root: string): Promise<string[]> {
  return Promise.all(instances.map(async (i) => (await handshake(i.port, domain, root)).serial))
}

t.test('a fleet of three', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({ httpPort })
  t.teardown(() => pebble.stop())
  const root = await pebble.root()
  const domains = ['c1.example.test', 'c2.example.test', 'c3.example.test', 'c4.example.test', 'c5.example.test']
  const base = { connectionString: azurite.connectionString, container: 'cluster', domains }
  // Only the first instance answers on Pebble's validation port; the others
  // must rely on it finding their key authorizations in the store.
  const first = await fleet(t, pebble, [{ httpPort }, {}, {}], base)

  const serials: Record<string, string> = {}
  await t.test('concurrent first handshakes on all three: one order per domain, one serial everywhere', async (t) => {
    const results = await Promise.all(domains.map((d) => servedSerials(first, d, root)))
    domains.forEach((d, i) => {
      t.equal(new Set(results[i]).size, 1, `${d}: all three serve the same certificate`)
      serials[d] = results[i][0]
    })
    t.equal(pebble.orderCount(), domains.length, 'exactly one order per domain for the fleet')
    const orderedBy = first.flatMap((i) => i.logs.filter((l) => l.msg === 'certificate obtained').map(() => i.name))
    t.equal(orderedBy.length, domains.length, 'one "certificate obtained" in the whole fleet per domain')
  })

  await t.test('an order placed by an instance is validated through another one', async (t) => {
    // i3 alone lists v.example.test; i1 answers Pebble's validation from the store.
    const [other] = await fleet(t, pebble, [{}], { ...base, domains: ['v.example.test'] })
    const served = await handshake(other.port, 'v.example.test', root)
    t.ok(served.authorized)
    t.ok(other.logs.some((l) => l.msg === 'certificate obtained' && l.domain === 'v.example.test'))
  })

  await t.test('restarting the whole fleet together costs no order', async (t) => {
    await Promise.all(first.map((i) => i.stop()))
    const orders = pebble.orderCount()
    const again = await fleet(t, pebble, [{ httpPort }, {}, {}], base)
    for (const d of domains) t.same(await servedSerials(again, d, root), [serials[d], serials[d], serials[d]], d)
    t.equal(pebble.orderCount(), orders, 'zero orders')
  })
})

t.test('a lock holder killed mid-issuance: another instance completes the order', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const validationPort = await freePort()
  const pebble = await startPebble({ httpPort: validationPort })
  t.teardown(() => pebble.stop())
  const root = await pebble.root()
  const base = { connectionString: azurite.connectionString, container: 'crash', domains: ['k.example.test'] }
  const answerPort = await freePort()

  // The instances answer HTTP-01 on answerPort; Pebble validates on validationPort,
  // where this relay waits. The first validation request proves an order is in
  // flight with its lock held: the holder is killed before the answer is relayed.
  let victim: Instance | undefined
  let killedAt = 0
  const relay: Server = createServer((req, res) => {
    void (async () => {
      if (victim !== undefined && killedAt === 0) {
        killedAt = Date.now()
        await victim.kill()
      }
      const upstream = request({ host: '127.0.0.1', port: answerPort, path: req.url, headers: req.headers }, (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers)
        up.pipe(res)
      })
      upstream.on('error', () => res.writeHead(502).end())
      upstream.end()
    })()
  })
  await new Promise<void>((resolve) => relay.listen(validationPort, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => relay.close(resolve)))

  const [holder] = await fleet(t, pebble, [{}], base)
  victim = holder
  await holder.waitForLog((l) => l.msg === 'ordering certificate')
  // The survivor answers challenges and waits for the lock the dead holder leaves behind.
  const [survivor] = await fleet(t, pebble, [{ httpPort: answerPort }], base)
  const obtained = await survivor.waitForLog((l) => l.msg === 'certificate obtained', 60_000)
  const took = Date.now() - killedAt
  t.ok(killedAt > 0, 'the holder was killed in the middle of its order')
  t.ok(took < 15_000 + 10_000, `the survivor completed the order ${took} ms after the kill (lease 15 s)`)
  t.equal((await handshake(survivor.port, 'k.example.test', root)).serial, obtained.serial)
})

t.test('a domain whose validation fails is tried once per backoff step by the whole fleet', async (t) => {
  const azurite: Azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  // Nothing listens on Pebble's validation port: every validation fails.
  const pebble = await startPebble({ httpPort: await freePort() })
  t.teardown(() => pebble.stop())
  const step = 4000
  const started = Date.now()
  const instances = await fleet(t, pebble, [{}, {}, {}], {
    connectionString: azurite.connectionString, container: 'backoff', domains: ['f.example.test'], retryDelays: [step]
  })
  await Promise.any(instances.map((i) => i.waitForLog((l) => l.msg === 'certificate order failed')))
  const ordersAfterFirst = pebble.orderCount()
  t.equal(ordersAfterFirst, 1, 'the first failure stops the other two instances from ordering')

  // A handshake during the backoff fails fast and reaches no CA.
  const before = pebble.orderCount()
  for (const i of instances) await t.rejects(handshake(i.port, 'f.example.test', 'unused'), `${i.name} refuses during backoff`)
  t.equal(pebble.orderCount(), before, 'no order from handshakes during backoff')

  await new Promise((resolve) => setTimeout(resolve, 3 * step))
  const elapsed = Date.now() - started
  const orders = pebble.orderCount()
  t.ok(orders <= Math.floor(elapsed / step) + 1, `${orders} orders in ${elapsed} ms with a ${step} ms step: at most one per step`)
  t.ok(orders >= 2, 'the fleet does retry after the step')
  const record = await BlobServiceClient.fromConnectionString(azurite.connectionString)
    .getContainerClient('backoff').getBlockBlobClient('f.example.test+failure').downloadToBuffer()
  const failure = JSON.parse(record.toString()) as { failures: number, retryAt: number }
  t.ok(failure.failures >= 2, 'the shared failure record counts every failure of the fleet')
})
