// Wildcards through DNS-01 on real components: BIND 9 takes the RFC 2136 updates, Pebble 2.10 looks the TXT record up in it, Azurite holds the certificates.
import t from 'tap'
import { AzureBlobStore, rfc2136, type DnsProvider } from '../lib'
import { authoritativeServers } from '../lib/acme/dns-01'
import { eventually, startApp, type TestApp } from './support/app'
import { startAzurite } from './support/azurite'
import { startBind } from './support/bind'
import { startPebble, trustPebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

/** The error `promise` rejects with; an error of its own when it resolves. */
async function failure (promise: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await promise
  } catch (err) {
    return err as Error & { code?: string }
  }
  throw new Error('resolved, expected to reject')
}

t.test('wildcards through DNS-01', async (t) => {
  const bind = await startBind({ zone: 'example.test' })
  t.teardown(() => bind.stop())
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({ httpPort, version: '2.10', dnsServer: bind.server, env: { PEBBLE_WFE_NONCEREJECT: '0' } })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const root = await pebble.root()
  let container = 0
  const store = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: `wildcard${container++}` })
  const provider = (): DnsProvider => rfc2136({ server: bind.server, zone: bind.zone, key: { ...bind.tsig, algorithm: 'hmac-sha256' } })
  const dns01 = { provider: provider(), nameservers: [bind.server], timeout: 20_000 }

  t.test('a wildcard is issued, serves one label below it, and its record is gone after', async (t) => {
    const shared = store()
    const before = pebble.orderCount()
    const started = Date.now()
    const app = await startApp(pebble, httpPort, shared, { domains: ['*.example.test', 'www.example.test'], dns01 })
    t.teardown(() => app.app.close())
    const wildcard = await app.app.autocert.certificate('*.example.test')
    const wildcardMs = Date.now() - started
    const exact = await app.app.autocert.certificate('www.example.test')
    t.not(wildcard.serial, exact.serial, 'the listed name has its own certificate')
    t.equal(pebble.orderCount() - before, 2, 'one order each')

    const served = await handshake(app.port, 'tenant1.example.test', root)
    t.equal(served.serial, wildcard.serial, 'a name one label below is served the wildcard')
    t.ok(served.authorized, 'and its chain verifies for that name')
    t.equal((await handshake(app.port, 'www.example.test', root)).serial, exact.serial, 'a listed name wins over the wildcard')
    await t.rejects(handshake(app.port, 'a.b.example.test', root), 'two labels below: not served')
    await t.rejects(handshake(app.port, 'example.test', root), 'the base name: not served')
    t.same(await bind.txt('_acme-challenge.example.test'), [], 'the TXT record was removed after validation')
    t.equal(pebble.orderCount() - before, 2, 'no order for the names the wildcard serves')
    t.comment(`wildcard issued through DNS-01 in ${wildcardMs} ms`)
  })

  t.test('HTTP-01 for one name on the same CA, for comparison', async (t) => {
    const started = Date.now()
    const app = await startApp(pebble, httpPort, store(), { domains: ['one.example.test'] })
    t.teardown(() => app.app.close())
    t.ok((await handshake(app.port, 'one.example.test', root)).authorized, 'served')
    t.comment(`one name issued through HTTP-01 in ${Date.now() - started} ms`)
  })

  t.test('three instances, one wildcard: one order', async (t) => {
    const shared = store()
    const before = pebble.orderCount()
    const apps: TestApp[] = []
    for (let i = 0; i < 3; i++) {
      const app = await startApp(pebble, httpPort, shared, { domains: ['*.fleet.example.test'], dns01, instanceId: `instance-${i}`, ...(i > 0 ? { http01: undefined } : {}) })
      t.teardown(() => app.app.close())
      apps.push(app)
    }
    const serials = await Promise.all(apps.map(async (app) => (await handshake(app.port, 'x.fleet.example.test', root)).serial))
    t.equal(new Set(serials).size, 1, 'every instance serves the same certificate')
    t.equal(pebble.orderCount() - before, 1, 'one order for the fleet')
  })

  t.test('a wrong TSIG key is a failed order that names the refusal, and leaves no record', async (t) => {
    const wrong = rfc2136({ server: bind.server, zone: bind.zone, key: { name: bind.tsig.name, algorithm: 'hmac-sha256', secret: Buffer.alloc(32, 7).toString('base64') } })
    const app = await startApp(pebble, httpPort, store(), { domains: ['*.wrong.example.test'], dns01: { ...dns01, provider: wrong } })
    t.teardown(() => app.app.close())
    const err = await failure(app.app.autocert.certificate('*.wrong.example.test'))
    t.equal(err.code, 'FST_AUTOCERT_ORDER_FAILED')
    t.match(err.message, /could not set the TXT record _acme-challenge\.wrong\.example\.test: nsupdate exited with 2: .*BADSIG/, 'the DNS server\'s refusal, in the message')
    t.notMatch(err.message, bind.tsig.secret, 'no secret in the message')
    t.notMatch(JSON.stringify(app.logs), Buffer.alloc(32, 7).toString('base64'), 'nor in the logs')
    t.ok(app.app.autocert.status()[0].retryAfter, 'the fleet\'s backoff holds the name')
    t.same(await bind.txt('_acme-challenge.wrong.example.test'), [])
  })

  t.test('a provider that never answers times out: a failed order, and removal is still asked for', async (t) => {
    const calls: string[] = []
    const hanging: DnsProvider = {
      set: async (record, signal) => { calls.push(`set ${record.name}`); await new Promise((resolve) => signal.addEventListener('abort', resolve)) },
      remove: async (record) => { calls.push(`remove ${record.name}`) }
    }
    const app = await startApp(pebble, httpPort, store(), { domains: ['*.slow.example.test'], dns01: { provider: hanging, timeout: 500 } })
    t.teardown(() => app.app.close())
    const err = await failure(app.app.autocert.certificate('*.slow.example.test'))
    t.equal(err.code, 'FST_AUTOCERT_ORDER_FAILED')
    t.match(err.message, /could not set the TXT record _acme-challenge\.slow\.example\.test: no answer within 500 ms \(options\.dns01\.timeout\)/)
    await eventually(() => calls.includes('remove _acme-challenge.slow.example.test'))
    t.same(calls, ['set _acme-challenge.slow.example.test', 'remove _acme-challenge.slow.example.test'])
  })

  t.test('a record set but never served fails the order within the timeout, and is removed', async (t) => {
    // Sets nothing: the servers asked never serve the value.
    const removed: string[] = []
    const silent: DnsProvider = { set: async () => {}, remove: async (record) => { removed.push(record.value) } }
    const app = await startApp(pebble, httpPort, store(), { domains: ['*.unseen.example.test'], dns01: { provider: silent, nameservers: [bind.server], timeout: 1500 } })
    t.teardown(() => app.app.close())
    const err = await failure(app.app.autocert.certificate('*.unseen.example.test'))
    t.match(err.message, new RegExp(`set but not served in time: not served by ${bind.server.replace(/\./g, '\\.')} within 1500 ms`))
    await eventually(() => removed.length === 1)
  })

  t.test('a name a listed wildcard covers never reaches onDemand.allow()', async (t) => {
    const asked: string[] = []
    const app = await startApp(pebble, httpPort, store(), {
      domains: ['*.tenants.example.test'],
      dns01,
      onDemand: { allow: (name) => { asked.push(name); return name === 'custom.example.test' } }
    })
    t.teardown(() => app.app.close())
    const wildcard = await app.app.autocert.certificate('*.tenants.example.test')
    t.equal((await handshake(app.port, 'ACME.Tenants.Example.Test', root)).serial, wildcard.serial, 'covered, whatever the case of the SNI')
    t.equal((await handshake(app.port, 'custom.example.test', root)).authorized, true, 'an on-demand name beside it')
    t.same(asked, ['custom.example.test'], 'allow() heard of the on-demand name only')
    t.same(app.app.autocert.status().map((s) => s.domain).sort(), ['*.tenants.example.test', 'custom.example.test'], 'no site of its own for a covered name')
  })

  t.test('an app that closes mid-order removes its record', async (t) => {
    // Nothing answers on `quiet`: the wait goes on until the app closes.
    const quiet = `127.0.0.1:${await freePort()}`
    const app = await startApp(pebble, httpPort, store(), { domains: ['*.closing.example.test'], dns01: { provider: provider(), nameservers: [quiet], timeout: 60_000 } })
    const order = failure(app.app.autocert.certificate('*.closing.example.test'))
    await eventually(async () => (await bind.txt('_acme-challenge.closing.example.test')).length === 1)
    await app.app.close()
    t.same(await bind.txt('_acme-challenge.closing.example.test'), [], 'gone once close() resolves')
    t.equal((await order).code, 'FST_AUTOCERT_CLOSED', 'the order ends with the app')
  })

  t.test('an nsupdate that is not installed is a clear error', async (t) => {
    const missing = rfc2136({ server: bind.server, key: { ...bind.tsig, algorithm: 'hmac-sha256' }, command: 'nsupdate-not-installed' })
    const app = await startApp(pebble, httpPort, store(), { domains: ['*.missing.example.test'], dns01: { ...dns01, provider: missing } })
    t.teardown(() => app.app.close())
    await t.rejects(app.app.autocert.certificate('*.missing.example.test'), { message: /nsupdate-not-installed was not found: install BIND's nsupdate \(Debian and Ubuntu: bind9-dnsutils/ })
  })

  t.test('without a zone, nsupdate finds it; a zone\'s name servers are found through its NS records', async (t) => {
    const zoneless = rfc2136({ server: bind.server, key: { ...bind.tsig, algorithm: 'hmac-sha256' }, ttl: 5 })
    const record = { name: '_acme-challenge.found.example.test', value: 'x'.repeat(43) }
    await zoneless.set(record, AbortSignal.timeout(10_000))
    t.same(await bind.txt(record.name), [record.value], 'set')
    // The resolvers are BIND itself here; its NS (ns.example.test, 127.0.0.1) is then asked on BIND's port.
    t.same(await authoritativeServers(record.name, AbortSignal.timeout(10_000), { servers: [bind.server], port: bind.port }), [bind.server])
    await zoneless.remove(record, AbortSignal.timeout(10_000))
    t.same(await bind.txt(record.name), [], 'removed')
    await t.rejects(authoritativeServers('_acme-challenge.nowhere.invalid', AbortSignal.timeout(10_000), { servers: [bind.server] }),
      { message: /could not find the name servers of _acme-challenge\.nowhere\.invalid: .*\(or give options\.dns01\.nameservers\)/ })
  })

  t.test('rfc2136() checks its options', async (t) => {
    const key = { name: 'acme', algorithm: 'hmac-sha256' as const, secret: 'c2VjcmV0' }
    const bad: Array<[string, unknown, RegExp]> = [
      ['no server', { key }, /rfc2136 server must be a host name or IP address/],
      ['a server with a space', { server: 'ns1 example', key }, /rfc2136 server/],
      ['a bracketed host name', { server: '[ns1.example.com]:53', key }, /rfc2136 server/],
      ['a bad zone', { server: 'ns1', zone: 'a b', key }, /rfc2136 zone must be a DNS name/],
      ['no key', { server: 'ns1' }, /rfc2136 key\.name/],
      ['an unknown algorithm', { server: 'ns1', key: { ...key, algorithm: 'hmac-sha3' } }, /rfc2136 key\.algorithm must be one of hmac-sha256/],
      ['a secret that is no base64', { server: 'ns1', key: { ...key, secret: 'not base64!' } }, /rfc2136 key\.secret must be the key's base64 secret/],
      ['a zero ttl', { server: 'ns1', key, ttl: 0 }, /rfc2136 ttl/],
      ['an empty command', { server: 'ns1', key, command: '' }, /rfc2136 command/]
    ]
    for (const [what, options, message] of bad) {
      t.throws(() => rfc2136(options as Parameters<typeof rfc2136>[0]), { code: 'FST_AUTOCERT_INVALID_OPTION', message }, what)
    }
    t.notMatch(String(t.throws(() => rfc2136({ server: 'ns1', key: { ...key, secret: 'sec ret' } }))), 'sec ret', 'the secret is not quoted')
    const provider = rfc2136({ server: '[::1]:5300', zone: 'Example.Test.', key })
    await t.rejects(provider.set({ name: 'a\nsend', value: 'v' }, AbortSignal.timeout(1000)), { message: /not a DNS-01 record/ }, 'nothing but a record reaches nsupdate')
  })
})
