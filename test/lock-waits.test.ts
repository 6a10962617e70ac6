// Leases another holder keeps (on a name, the order log, the account key) and a machine whose clock is wrong, on real Pebble and Azurite.
import { BlobServiceClient, type BlobLeaseClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { AzureBlobStore, createAutocert, type AutocertEvents, type AutocertServer, type Logger } from '../lib'
import { startServices, type Services } from './helpers/services'
import { startInstance } from './helpers/instance'
import { eventually, startApp } from './support/app'
import { handshake } from './support/tls'

type LockWait = AutocertEvents['lock-wait'][0]

/** A lease on the lock blob `locks/<key>`, as another instance (or an intruder with write access) would hold it: infinite, with a holder recorded. */
async function foreignLease (connectionString: string, container: string, key: string, holder: string): Promise<BlobLeaseClient> {
  const containerClient = BlobServiceClient.fromConnectionString(connectionString).getContainerClient(container)
  await containerClient.createIfNotExists()
  const blob = containerClient.getBlockBlobClient(`locks/${key}`)
  await blob.upload('', 0, { metadata: { holder } })
  const lease = blob.getBlobLeaseClient()
  await lease.acquireLease(-1)
  return lease
}

function recordingLogger (): Logger & { lines: Array<Record<string, unknown> & { level: string, msg: string }> } {
  const lines: Array<Record<string, unknown> & { level: string, msg: string }> = []
  const at = (level: string) => (obj: object, msg: string): void => { lines.push({ ...obj, level, msg }) }
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') }
}

/** createAutocert() answering HTTP-01 on Pebble's validation port, with lock-wait events recorded from the start. */
async function core (t: Test, services: Services, container: string, domain: string): Promise<{ autocert: AutocertServer, waits: LockWait[], log: ReturnType<typeof recordingLogger> }> {
  const log = recordingLogger()
  const autocert = createAutocert({
    domains: [domain],
    directoryUrl: services.pebble.directoryUrl,
    termsOfServiceAgreed: true,
    store: { connectionString: services.azurite.connectionString, container },
    http01: { port: services.httpPort, host: '127.0.0.1' },
    lockTimeout: 3_000,
    retryDelays: [500],
    logger: log
  })
  t.teardown(() => autocert.close())
  const waits: LockWait[] = []
  autocert.on('lock-wait', (e) => waits.push(e))
  await autocert.ready()
  autocert.start()
  return { autocert, waits, log }
}

t.test('a lease another holder keeps on a name: the handshake fails within handshakeTimeout, the order gives up at lockTimeout naming the holder, and orders once it is let go', async (t) => {
  const services = await startServices(t)
  const { azurite, pebble, httpPort, root } = services
  const domain = 'held.example.test'
  const lease = await foreignLease(azurite.connectionString, 'held', domain, 'intruder/1')
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'held' })
  t.teardown(() => store.close())
  const { app, port, logs } = await startApp(pebble, httpPort, store, {
    domains: [domain],
    handshakeTimeout: 1_500,
    lockTimeout: 4_000,
    retryDelays: [500]
  })
  t.teardown(() => app.close())
  const serverErrors: Array<{ code?: string }> = []
  app.server.on('tlsClientError', (err: { code?: string }) => serverErrors.push(err))

  const started = performance.now()
  const failed = await handshake(port, domain, root).then(() => undefined, (err: Error) => err)
  const ms = performance.now() - started
  t.ok(failed, `the first handshake fails (after ${ms.toFixed(0)} ms)`)
  await eventually(() => serverErrors.length > 0)
  t.equal(serverErrors[0].code, 'FST_AUTOCERT_HANDSHAKE_TIMEOUT', 'the server saw the coded error, not Node\'s 120 s reset')
  t.match(app.autocert.status()[0], { lockHolder: 'intruder/1', waitingFor: { lock: 'name', holder: 'intruder/1' } }, 'status() shows the wait and its holder')

  await eventually(() => logs.some((l) => l.msg === 'gave up waiting for a lock another holder keeps'), 20_000)
  const warning = logs.find((l) => l.msg === 'gave up waiting for a lock another holder keeps')
  t.match(warning, { level: 40, lock: domain, holder: 'intruder/1', waitedMs: 4_000 }, 'a warning names the lock and its holder')
  await eventually(() => app.autocert.status()[0].lastError !== undefined)
  t.match(app.autocert.status()[0].lastError?.message, /gave up waiting for the lock held\.example\.test, held by intruder\/1/)
  t.equal(pebble.orderCount(), 0, 'no order while the lease is held')

  await lease.releaseLease()
  await eventually(() => app.autocert.status()[0].serial !== undefined, 30_000)
  t.equal(pebble.orderCount(), 1, 'one order once the holder let go (the retry after the deadline)')
  t.ok((await handshake(port, domain, root)).authorized, 'and the name is served')
})

const FLEET_LOCKS = [
  { lock: 'order-log', key: 'acme_orders+log', container: 'budgetheld', domain: 'budget-held.example.test', holder: 'intruder/2', what: 'the order log', ordered: 'ordered once the log is free' },
  { lock: 'account', key: 'acme_account+key', container: 'accountheld', domain: 'account-held.example.test', holder: 'intruder/3', what: 'the account key', ordered: 'the account is registered and the name ordered once the lock is free' }
] as const

for (const { lock, key, container, domain, holder, what, ordered } of FLEET_LOCKS) {
  t.test(`a lease another holder keeps on ${what}: reported like a name's (lock-wait, status()), given up at lockTimeout`, async (t) => {
    const services = await startServices(t)
    const { azurite, pebble } = services
    const lease = await foreignLease(azurite.connectionString, container, key, holder)
    const { autocert, waits, log } = await core(t, services, container, domain)
    await eventually(() => waits.some((w) => w.lock === lock))
    t.same(waits.find((w) => w.lock === lock), { domain, holder, lock }, `a lock-wait event for ${what}, with the name waiting for it`)
    t.match(autocert.status()[0].waitingFor, { lock, holder }, 'status() shows it')
    await eventually(() => log.lines.some((l) => l.msg === 'gave up waiting for a lock another holder keeps'), 20_000)
    t.match(log.lines.find((l) => l.msg === 'gave up waiting for a lock another holder keeps'), { level: 'warn', lock: key, holder })
    t.equal(pebble.orderCount(), 0, 'no order while it is held')

    await lease.releaseLease()
    await eventually(() => autocert.status()[0].serial !== undefined, 30_000)
    t.equal(pebble.orderCount(), 1, ordered)
    t.equal(autocert.status()[0].waitingFor, undefined)
  })
}

t.test('an instance whose clock runs an hour ahead neither orders nor writes the order log; the fleet orders at its budget', async (t) => {
  const services = await startServices(t)
  const { azurite, pebble, httpPort, root } = services
  const domain = 'skew.example.test'
  const skewed = await startInstance(pebble, {
    name: 'ahead',
    connectionString: azurite.connectionString,
    container: 'skewed',
    domains: [domain],
    httpPort,
    clockOffset: 3_600_000
  })
  t.teardown(() => skewed.stop())
  const loud = await skewed.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('clock is far off'))
  t.equal(loud.level, 50, 'it says so loudly (an error)')
  // The Date header has a resolution of a second.
  t.ok(Math.abs((loud.offsetSeconds as number) + 3600) <= 2, `that its clock is an hour off the CA's (${String(loud.offsetSeconds)} s)`)
  t.equal(pebble.orderCount(), 0, 'it placed no order')
  const blobs = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient('skewed')
  t.equal(await blobs.getBlobClient('acme_orders+log').exists(), false, 'and wrote nothing to the order log')

  // No HTTP-01 listener of its own: Pebble's validation reaches the skewed instance's, which answers from the store.
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'skewed' })
  t.teardown(() => store.close())
  const fleet = await startApp(pebble, httpPort, store, {
    domains: [domain],
    maxOrdersPerHour: 1,
    http01: undefined
  })
  t.teardown(() => fleet.app.close())
  await eventually(() => fleet.app.autocert.status()[0].serial !== undefined)
  t.equal(pebble.orderCount(), 1, 'an instance with the right time orders, within a budget of 1')
  t.ok((await handshake(fleet.port, domain, root)).authorized)
})
