import { BlobServiceClient } from '@azure/storage-blob'
import t, { type Test } from 'tap'
import { AzureBlobStore } from '../lib'
import { domainStatus, startApp, eventually, type TestApp } from './support/app'
import { startAzurite, type Azurite } from './support/azurite'
import { startCaProxy, trustProxy, type CaProxy, type FakeAnswer, type Seen } from './helpers/ca-proxy'
import { startPebble, type Pebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

// The CA's 429 and 503 answers, faked by a proxy in front of real Pebble, with
// real Azurite as the fleet's store: acme-client's retries of them (lib/acme/retry.ts)
// carry a fresh nonce and wait the CA's Retry-After; a rateLimited answer with a
// long Retry-After becomes the order's failure and the fleet's backoff.

t.setTimeout(120_000)

const RATE_LIMITED = 'urn:ietf:params:acme:error:rateLimited'
const MINUTE = 60_000

interface Services { azurite: Azurite, pebble: Pebble, proxy: CaProxy, root: string, httpPort: number }

async function services (t: Test): Promise<Services> {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  // Pebble refuses 5% of nonces at random (badNonce): off here, so that a badNonce seen is the fault's alone.
  const pebble = await startPebble({ httpPort, env: { PEBBLE_WFE_NONCEREJECT: '0' } })
  t.teardown(() => pebble.stop())
  const proxy = await startCaProxy(pebble)
  t.teardown(() => proxy.close())
  trustProxy(proxy, pebble)
  return { azurite, pebble, proxy, root: await pebble.root(), httpPort }
}

/** An app of the fleet on `container`; `httpPort`: its HTTP-01 listener (Pebble validates on s.httpPort). */
async function start (t: Test, s: Services, container: string, domain: string, httpPort = s.httpPort): Promise<TestApp> {
  const store = new AzureBlobStore({ connectionString: s.azurite.connectionString, container, timeout: 2000, retryOptions: { maxTries: 1 } })
  t.teardown(() => store.close())
  const app = await startApp(s.pebble, httpPort, store, { domains: [domain], directoryUrl: s.proxy.directoryUrl })
  t.teardown(() => app.app.close())
  return app
}

const newOrders = (proxy: CaProxy, since = 0): Seen[] => proxy.seen.filter((r) => r.method === 'POST' && r.path.startsWith('/order-plz') && r.at >= since)

/*
 * Seen without the fix (issuer.ts building its clients without retrying()), on
 * this same Pebble: acme-client waits the 2 s, then sends the refused JWS again,
 * nonce and all; Pebble answers it 400 badNonce (the proxy had spent that nonce,
 * as a real CA does), and acme-client's badNonce path gets the order through one
 * round trip later, with the nonce of that answer. The order succeeds, but the
 * new-order requests are [the fake 429 or 503, Pebble's 400 badNonce, 201]: the
 * retry carried the rejected nonce, and 4 assertions of each case fail (the
 * statuses, the fresh nonce, no badNonce, where the nonce came from). By its code
 * (src/axios.js), acme-client would also wait out a Retry-After of 600 s inside
 * the order, in a timer nothing cancels.
 */
t.test('a 429 or a 503 with Retry-After: 2 on new-order, once: the retry carries a fresh nonce, after 2 s, and the order succeeds', async (t) => {
  const s = await services(t)
  const cases: Array<{ status: number, type: string, detail: string, replayNonce: boolean }> = [
    // Let's Encrypt sends a fresh nonce with its error answers: the retry uses it.
    { status: 429, type: RATE_LIMITED, detail: 'too many new orders recently', replayNonce: true },
    // A 503 from a load balancer has none: the retry fetches one from newNonce.
    { status: 503, type: 'urn:ietf:params:acme:error:serverInternal', detail: 'down for maintenance', replayNonce: false }
  ]
  for (const c of cases) {
    await t.test(`${c.status}${c.replayNonce ? ' with a Replay-Nonce' : ' without a Replay-Nonce'}`, async (t) => {
      const domain = `retry-${c.status}.example.test`
      let refused = false
      s.proxy.intercept = ({ method, path }) => {
        if (refused || method !== 'POST' || !path.startsWith('/order-plz')) return undefined
        refused = true
        const fake: FakeAnswer = { status: c.status, headers: { 'retry-after': '2' }, problem: { type: c.type, detail: c.detail }, spendNonce: true, replayNonce: c.replayNonce }
        return fake
      }
      const started = Date.now()
      const orders = s.pebble.orderCount()
      const app = await start(t, s, `retry-${c.status}`, domain)
      await eventually(() => domainStatus(app, domain).serial !== undefined)
      const seen = newOrders(s.proxy, started)
      t.same(seen.map((r) => [r.status, r.faked]), [[c.status, true], [201, false]], `new-order: the fake ${c.status}, then Pebble's 201`)
      const [rejected, retry] = seen
      t.ok(rejected.nonce !== undefined && retry.nonce !== undefined, 'both carry a nonce')
      t.not(retry.nonce, rejected.nonce, 'the retry\'s nonce is not the rejected request\'s')
      t.notOk(s.proxy.seen.some((r) => r.at >= started && r.problem === 'urn:ietf:params:acme:error:badNonce'), 'Pebble answered no request badNonce')
      if (c.replayNonce) {
        t.equal(retry.nonce, rejected.replayNonce, 'the retry signed with the nonce the 429 offered')
      } else {
        t.ok(s.proxy.seen.some((r) => r.method === 'HEAD' && r.path.startsWith('/nonce-plz') && r.at > rejected.at && r.at <= retry.at), 'and fetched a fresh one from newNonce before it')
      }
      const waited = retry.at - rejected.at
      t.ok(waited >= 1950, `the retry came ${waited} ms after the refusal (Retry-After: 2)`)
      t.equal(s.pebble.orderCount(), orders + 1, 'one order at Pebble')
      const cert = await handshake(app.port, domain, s.root)
      t.ok(cert.authorized, 'the certificate is served and verified')
      t.equal(cert.serial, domainStatus(app, domain).serial)
      t.equal(domainStatus(app, domain).lastError, undefined, 'no error left')
    })
  }
})

t.test('a persistent rateLimited 429 with Retry-After: 600: the order fails, the fleet\'s record says 600 s, and a second instance does not ask the CA', async (t) => {
  const s = await services(t)
  const container = 'rate-limited'
  const domain = 'limited.example.test'
  s.proxy.intercept = ({ method, path }) => method === 'POST' && path.startsWith('/order-plz')
    ? { status: 429, headers: { 'retry-after': '600' }, problem: { type: RATE_LIMITED, detail: 'too many certificates already issued for this name' }, spendNonce: true, replayNonce: true }
    : undefined
  const orders = s.pebble.orderCount()
  const first = await start(t, s, container, domain)
  await eventually(() => domainStatus(first, domain).lastError !== undefined)
  const failed = domainStatus(first, domain)
  t.match(failed.lastError?.message, /too many certificates already issued for this name \(the CA answered 429 urn:ietf:params:acme:error:rateLimited to POST \/order-plz; it asks for a wait of 600 s, more than the order may still wait \(60 s in all\)\)/,
    `a clear error: ${failed.lastError?.message}`)
  t.equal(newOrders(s.proxy).length, 1, 'one new-order: a Retry-After of 600 s is not waited for inside the order')
  t.equal(s.pebble.orderCount(), orders, 'no order at Pebble')
  t.ok(first.logs.some((l) => l.msg === 'certificate order failed' && l.domain === domain), 'logged as a failed order')

  const blob = BlobServiceClient.fromConnectionString(s.azurite.connectionString).getContainerClient(container).getBlockBlobClient(`${domain}+failure`)
  const record = JSON.parse((await blob.downloadToBuffer()).toString('utf8')) as { failures: number, at: number, retryAt: number, error: string }
  t.equal(record.failures, 1, 'the failure record is in the store')
  const after = record.retryAt - record.at
  // The default backoff's first step is 1 minute: the CA's 10 minutes win, within its longest step (6 h).
  t.ok(Math.abs(after - 10 * MINUTE) < 5000, `its retryAt is the CA's Retry-After: ${after} ms after the failure, not the 1 minute step`)
  t.match(record.error, /rateLimited/)
  t.equal(failed.retryAfter?.getTime(), record.retryAt, 'status() shows the same retry time')
  await t.rejects(first.app.autocert.certificate(domain), { code: 'FST_AUTOCERT_BACKOFF' }, 'the first instance refuses the name meanwhile')

  const seenBefore = s.proxy.seen.length
  // Another port for its HTTP-01 listener: the first app holds Pebble's, and this one is not to order anyway.
  const second = await start(t, s, container, domain, await freePort())
  await t.rejects(second.app.autocert.certificate(domain), { code: 'FST_AUTOCERT_BACKOFF', message: new RegExp(`before ${new Date(record.retryAt).toISOString()}`) },
    'a second instance on the same store refuses it until the CA\'s time')
  t.equal(newOrders(s.proxy).length, 1, 'and sent no new-order')
  t.ok(s.proxy.seen.slice(seenBefore).every((r) => !r.path.startsWith('/order-plz')), `the CA saw only its account lookup: ${s.proxy.seen.slice(seenBefore).map((r) => `${r.method} ${r.path}`).join(', ')}`)
  t.equal(domainStatus(second, domain).retryAfter?.getTime(), record.retryAt, 'its status() shows the fleet\'s retry time')
  t.equal(s.pebble.orderCount(), orders, 'still no order at Pebble')
})
