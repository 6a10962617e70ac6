// Type tests of the public surface, checked by `npm run typecheck` (tsc):
// every line marked @ts-expect-error must fail to compile, the rest must pass.
import https from 'node:https'
import Fastify from 'fastify'
import autocert, {
  ALPNCallback, AzureBlobStore, createAutocert, FileStore, MemoryStore, rfc2136, SNICallback,
  type Autocert, type DnsProvider, type DnsRecord, type AutocertOptions, type AutocertServer, type CertificateInfo, type CertStore, type DomainStatus,
  type GetOptions, type PutOptions, type StoreEntry
} from '../lib'

export async function surface (): Promise<void> {
  const app = Fastify({ https: { SNICallback } })
  await app.register(autocert, { domains: ['example.com'], store: new MemoryStore(), termsOfServiceAgreed: true })
  const decorator: Autocert = app.autocert
  const info: CertificateInfo = await decorator.certificate('example.com')
  const notAfter: Date = info.notAfter
  const status: DomainStatus[] = app.autocert.status()
  const renewAt: Date | undefined = status[0].renewAt
  void notAfter
  void renewAt
  app.autocert.on('renewed', (event) => { const previous: string = event.previousSerial; void previous })
    .on('backoff', (event) => { const reason: 'failures' | 'budget' | 'clock' = event.reason; void reason })
    .on('lock-wait', (event) => { const holder: string | undefined = event.holder; const lock: 'name' | 'order-log' | 'account' = event.lock; void holder; void lock })
    .on('revoked', (event) => { const replacement: string = event.replacement; const reason: number | undefined = event.reason; void replacement; void reason })
  const window: { start: Date, end: Date, explanationURL?: string } | undefined = status[0].renewalWindow
  void window
  const replaced: CertificateInfo = await decorator.revoke('example.com', 'keyCompromise')
  void replaced
  await decorator.revoke('example.com', 4)
  // @ts-expect-error a revocation reason a subscriber may not give (RFC 5280 2, cACompromise)
  await decorator.revoke('example.com', 2)
  // @ts-expect-error a misspelt revocation reason
  await decorator.revoke('example.com', 'key-compromise')
  await app.register(autocert, {
    domains: ['example.com'],
    store: new MemoryStore(),
    termsOfServiceAgreed: true,
    profile: 'tlsserver',
    directoryUrl: ['production', { url: 'https://acme.zerossl.com/v2/DV90', externalAccountBinding: { kid: 'kid', hmacKey: 'key' } }]
  })
  // @ts-expect-error a fallback CA entry needs its url
  await app.register(autocert, { domains: ['example.com'], store: new MemoryStore(), termsOfServiceAgreed: true, directoryUrl: [{ externalAccountBinding: { kid: 'kid', hmacKey: 'key' } }] })
  // @ts-expect-error events are a closed set
  app.autocert.on('expired', () => {})
  // @ts-expect-error an obtained event has no previous serial
  app.autocert.on('obtained', (event) => event.previousSerial)

  const standalone: AutocertServer = createAutocert({
    domains: [], onDemand: { allow: async (name) => name.endsWith('.example.com') }, store: new MemoryStore(), termsOfServiceAgreed: true, keyType: ['ecdsa', 'rsa']
  })
  const keyType: 'ecdsa' | 'rsa' = standalone.status()[0].keyType
  void keyType
  // @ts-expect-error allow() answers with a boolean
  createAutocert({ domains: [], onDemand: { allow: async () => 'yes' }, store: new MemoryStore(), termsOfServiceAgreed: true })

  const store: CertStore = new FileStore('/var/lib/autocert')
  const bounded: GetOptions = { maxBytes: 65536 }
  const value: Buffer | undefined = await store.get('example.com', bounded)
  void value
  // @ts-expect-error a limit is a number of bytes
  await store.get('example.com', { maxBytes: '64k' })
  const written: PutOptions = { metadata: { autocert_serial: '0A' } }
  await store.put('example.com', 'bundle', written)
  // @ts-expect-error metadata values are strings
  await store.put('example.com', 'bundle', { metadata: { notafter: 1 } })
  const memory = new MemoryStore()
  for await (const entry of memory.entries()) {
    const seen: StoreEntry = entry
    const serial: string | undefined = seen.metadata?.autocert_serial
    void serial
  }
  // entries() is optional in the contract: a store of the user's own may leave it out
  const listing: CertStore['entries'] = store.entries
  void listing
  const options: AutocertOptions = { domains: ['example.com'], store, termsOfServiceAgreed: true, keyType: 'rsa', http01: { port: 80 } }
  void options

  // TLS-ALPN-01: both callbacks, on an https or http2 server.
  const tlsAlpn: AutocertOptions = { domains: ['example.com'], store, termsOfServiceAgreed: true, challenges: ['tls-alpn-01', 'http-01'] }
  await Fastify({ https: { SNICallback, ALPNCallback } }).register(autocert, tlsAlpn)
  await Fastify({ http2: true, https: { allowHTTP1: true, SNICallback, ALPNCallback } }).register(autocert, tlsAlpn)
  const core = createAutocert(tlsAlpn)
  void https.createServer({ SNICallback: core.SNICallback, ALPNCallback: core.ALPNCallback })
  // DNS-01 with the RFC 2136 provider, or a provider of a few lines.
  const dnsProvider: DnsProvider = {
    async set (record: DnsRecord, signal: AbortSignal) { void record.name; void record.value; void signal },
    async remove (record: DnsRecord) { void record }
  }
  await app.register(autocert, { domains: ['*.example.com'], store, termsOfServiceAgreed: true, dns01: { provider: dnsProvider, timeout: 60_000 } })
  await app.register(autocert, {
    domains: ['example.com'],
    store,
    termsOfServiceAgreed: true,
    challenges: ['dns-01'],
    dns01: { provider: rfc2136({ server: '192.0.2.53', zone: 'example.com', key: { name: 'k', algorithm: 'hmac-sha256', secret: 'c2VjcmV0' } }), nameservers: ['192.0.2.53:53'] }
  })
  // @ts-expect-error a challenge type the plugin does not complete
  await app.register(autocert, { domains: ['example.com'], store, termsOfServiceAgreed: true, challenges: ['http-02'] })
  // @ts-expect-error a provider sets and removes
  await app.register(autocert, { domains: ['*.example.com'], store, termsOfServiceAgreed: true, dns01: { provider: { set: dnsProvider.set } } })

  // @ts-expect-error the key type is a closed union
  await app.register(autocert, { domains: ['example.com'], store, termsOfServiceAgreed: true, keyType: 'ed25519' })
  // @ts-expect-error domains are required
  await app.register(autocert, { store, termsOfServiceAgreed: true })
  // @ts-expect-error the decorator hands out no private key
  void info.key
  // @ts-expect-error two ways to authenticate at once
  void new AzureBlobStore({ connectionString: 'x', accountName: 'a', accountKey: 'k' })
  void new AzureBlobStore({ connectionString: 'UseDevelopmentStorage=true', container: 'certs', leaseDuration: 30 })
}
