import t from 'tap'
import Fastify from 'fastify'
import autocert, { ALPNCallback, createAutocert, MemoryStore, SNICallback, type AutocertOptions } from '../lib'
import { handshake } from './support/tls'
import { validate } from '../lib/options'

const valid = (): AutocertOptions => ({ domains: ['example.com'], store: new MemoryStore(), termsOfServiceAgreed: true })

async function registerError (options: unknown): Promise<Error & { code?: string }> {
  const app = Fastify()
  try {
    await app.register(autocert, options as AutocertOptions)
    await app.ready()
  } catch (err) {
    return err as Error
  } finally {
    await app.close()
  }
  throw new Error('ready() resolved')
}

t.test('every bad option rejects ready() with its own code and a way to fix it', async (t) => {
  const cases: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['no domains', { domains: [] }, 'FST_AUTOCERT_NO_DOMAINS', /non-empty array/],
    ['domains not an array', { domains: 'example.com' }, 'FST_AUTOCERT_NO_DOMAINS', /non-empty array/],
    ['an IPv4 address with leading zeros', { domains: ['example.com', '010.0.0.1'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /"010\.0\.0\.1"/],
    ['an IPv6 address with a zone', { domains: ['fe80::1%eth0'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /one IP address/],
    ['two IP addresses', { domains: ['10.0.0.1', '2001:DB8::1'] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.domains lists 10\.0\.0\.1 and 2001:db8::1: one IP address per server/],
    ['an IP address with DNS-01 only', { domains: ['10.0.0.1'], challenges: ['dns-01'], dns01: { provider: { set () {}, remove () {} } } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.challenges must list 'http-01' or 'tls-alpn-01' for 10\.0\.0\.1/],
    ['a wildcard without dns01', { domains: ['*.example.com'] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01 is needed for \*\.example\.com/],
    ['a wildcard of a top-level domain', { domains: ['*.com'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /"\*\.com"/],
    ['a wildcard of two labels', { domains: ['*.*.example.com'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /wildcard \*\.example\.com/],
    ['a wildcard inside a name', { domains: ['a.*.example.com'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /"a\.\*\.example\.com"/],
    ['a URL', { domains: ['https://example.com/'] }, 'FST_AUTOCERT_INVALID_DOMAIN', /not a name a certificate can be ordered for/],
    ['no store', { store: undefined }, 'FST_AUTOCERT_INVALID_STORE', /new AzureBlobStore/],
    ['a store without lock', { store: { get () {}, put () {}, delete () {}, list () {} } }, 'FST_AUTOCERT_INVALID_STORE', /lock/],
    ['terms not agreed', { termsOfServiceAgreed: undefined }, 'FST_AUTOCERT_TOS_NOT_AGREED', /must be true/],
    ['terms as a string', { termsOfServiceAgreed: 'yes' }, 'FST_AUTOCERT_TOS_NOT_AGREED', /must be true/],
    ['an http directory', { directoryUrl: 'http://acme.example/dir' }, 'FST_AUTOCERT_INVALID_DIRECTORY_URL', /https:\/\//],
    ['a directory that is no URL', { directoryUrl: 'letsencrypt' }, 'FST_AUTOCERT_INVALID_DIRECTORY_URL', /'staging'/],
    ['an unknown key type', { keyType: 'ed25519' }, 'FST_AUTOCERT_INVALID_KEY_TYPE', /'ecdsa', 'rsa' or both/],
    ['an unknown key type in a list', { keyType: ['ecdsa', 'dsa'] }, 'FST_AUTOCERT_INVALID_KEY_TYPE', /got "dsa"/],
    ['an empty key type list', { keyType: [] }, 'FST_AUTOCERT_INVALID_KEY_TYPE', /or both/],
    ['a bad email', { email: 'ops' }, 'FST_AUTOCERT_INVALID_OPTION', /options\.email/],
    ['a negative renewBefore', { renewBefore: -1 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.renewBefore/],
    ['empty retryDelays', { retryDelays: [] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.retryDelays/],
    ['zero concurrency', { concurrency: 0 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.concurrency/],
    ['a zero prewarmTimeout', { prewarmTimeout: 0 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.prewarmTimeout must be a positive number of milliseconds/],
    ['an infinite prewarmTimeout', { prewarmTimeout: Infinity }, 'FST_AUTOCERT_INVALID_OPTION', /options\.prewarmTimeout/],
    ['a zero contextCacheSize', { contextCacheSize: 0 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.contextCacheSize must be a positive integer/],
    ['a fractional contextCacheSize', { contextCacheSize: 2.5 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.contextCacheSize/],
    ['a bad http01 port', { http01: { port: 70000 } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.http01\.port/],
    ['no challenge type', { challenges: [] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.challenges must list 'http-01', 'tls-alpn-01' and\/or 'dns-01'/],
    ['challenges not an array', { challenges: 'tls-alpn-01' }, 'FST_AUTOCERT_INVALID_OPTION', /options\.challenges .*e\.g\. \['tls-alpn-01', 'http-01'\]/],
    ['an unsupported challenge type', { challenges: ['http-02'] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.challenges/],
    ['dns-01 without dns01', { challenges: ['dns-01'] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.challenges lists 'dns-01': give dns01: \{ provider \} too/],
    ['a DNS provider without remove', { dns01: { provider: { set () {} } } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01\.provider must have set\(record, signal\) and remove\(record, signal\)/],
    ['no DNS provider', { dns01: {} }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01\.provider/],
    ['a DNS-01 timeout past an order\'s deadline', { dns01: { provider: { set () {}, remove () {} }, timeout: 300_000 } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01\.timeout must be a positive number of milliseconds, at most 240000/],
    ['a name server that is a host name', { dns01: { provider: { set () {}, remove () {} }, nameservers: ['ns1.example.com'] } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01\.nameservers must be a non-empty array of IP addresses/],
    ['a name server with a bad port', { dns01: { provider: { set () {}, remove () {} }, nameservers: ['192.0.2.1:0'] } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.dns01\.nameservers/],
    ['a challenge type twice', { challenges: ['http-01', 'http-01'] }, 'FST_AUTOCERT_INVALID_OPTION', /once each/],
    ['a misspelt option', { domain: ['example.com'] }, 'FST_AUTOCERT_INVALID_OPTION', /options\.domain is not an option/],
    ['onDemand without allow', { onDemand: { allow: true } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.onDemand\.allow must be a function/],
    ['a zero onDemand timeout', { onDemand: { allow: () => true, timeout: 0 } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.onDemand\.timeout/],
    ['a fractional onDemand cacheSize', { onDemand: { allow: () => true, cacheSize: 1.5 } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.onDemand\.cacheSize/],
    ['an instanceId with a newline', { instanceId: 'host\nforged' }, 'FST_AUTOCERT_INVALID_OPTION', /options\.instanceId/],
    ['an empty instanceId', { instanceId: '' }, 'FST_AUTOCERT_INVALID_OPTION', /printable ASCII/],
    ['a logger without warn', { logger: { info () {} } }, 'FST_AUTOCERT_INVALID_OPTION', /options\.logger/],
    ['an empty profile', { profile: '' }, 'FST_AUTOCERT_INVALID_OPTION', /options\.profile must be the name of one of the CA's profiles/],
    ['a profile that is no token', { profile: 'short lived' }, 'FST_AUTOCERT_INVALID_OPTION', /options\.profile/],
    ['a profile that is no string', { profile: 160 }, 'FST_AUTOCERT_INVALID_OPTION', /options\.profile/]
  ]
  for (const [what, override, code, message] of cases) {
    const err = await registerError({ ...valid(), ...override })
    t.equal(err.code, code, what)
    t.match(err.message, message, `${what}: the message says how to fix it`)
    t.type(err, TypeError, `${what}: a TypeError`)
  }
})

t.test('valid options are normalised and accepted', async (t) => {
  for (const [directoryUrl, challenges] of [[undefined, undefined], ['production', ['tls-alpn-01']], ['staging', ['tls-alpn-01', 'http-01']], ['https://acme.example/dir', ['http-01']]] as const) {
    const app = Fastify()
    await app.register(autocert, { ...valid(), domains: ['Example.COM.', 'example.com', 'bücher.example'], directoryUrl, challenges })
    await app.ready()
    t.same(app.autocert.status().map((s) => s.domain), ['example.com', 'xn--bcher-kva.example'], 'deduplicated and normalised')
    await app.close()
  }
})

t.test('wildcards and IP addresses are normalised; dns01 adds DNS-01 last unless listed', async (t) => {
  const provider = { async set () {}, async remove () {} }
  const settings = validate({ ...valid(), domains: ['*.Example.COM.', '*.example.com', '2001:DB8:0:0::1', 'example.com'], dns01: { provider } })
  t.same(settings.domains, ['*.example.com', '2001:db8::1', 'example.com'], 'deduplicated, lower case, IPv6 canonical (RFC 5952)')
  t.same(settings.challenges, ['http-01', 'dns-01'], 'DNS-01 after the given types')
  t.same(settings.dns01, { provider, timeout: 120_000 }, 'the default timeout')
  t.same(validate({ ...valid(), challenges: ['dns-01', 'http-01'], dns01: { provider, timeout: 5000, nameservers: ['192.0.2.53', '[2001:db8::53]:5353'] } }).challenges,
    ['dns-01', 'http-01'], 'a listed DNS-01 keeps its place')
  t.same(validate({ ...valid(), domains: ['192.0.2.1'], challenges: ['tls-alpn-01'] }).domains, ['192.0.2.1'], 'an address with TLS-ALPN-01')
})

t.test('with onDemand, domains may be empty; createAutocert() checks the same options', async (t) => {
  const app = Fastify()
  await app.register(autocert, { ...valid(), domains: [], onDemand: { allow: () => false } })
  await app.ready()
  t.same(app.autocert.status(), [], 'nothing in memory before a handshake')
  await t.rejects(app.autocert.certificate('tenant.example'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' }, 'allow() said no')
  await app.close()
  t.throws(() => createAutocert({ ...valid(), domains: [] }), { code: 'FST_AUTOCERT_NO_DOMAINS' })
  t.throws(() => createAutocert({ ...valid(), concurrency: -1 }), { code: 'FST_AUTOCERT_INVALID_OPTION' })
  const standalone = createAutocert(valid())
  t.same(standalone.status().map((s) => s.domain), ['example.com'])
  await standalone.close()
})

t.test('the decorator refuses names it does not manage', async (t) => {
  const app = Fastify()
  await app.register(autocert, valid())
  await app.ready()
  t.teardown(() => app.close())
  await t.rejects(app.autocert.certificate('other.example'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' })
  await t.rejects(app.autocert.renew('../etc'), { code: 'FST_AUTOCERT_NAME_NOT_ALLOWED' })
})

t.test('SNICallback and ALPNCallback on a server without the plugin fail the handshake with a clear warning', async (t) => {
  const app = Fastify({ https: { SNICallback, ALPNCallback } })
  app.get('/', async () => 'hi')
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })
  const port = (app.server.address() as { port: number }).port
  await t.rejects(handshake(port, 'example.com', 'no CA needed'))
  await new Promise((resolve) => setImmediate(resolve))
  t.match(warnings.map((w) => (w as { code?: string }).code), ['FST_AUTOCERT_NOT_REGISTERED'])
})
