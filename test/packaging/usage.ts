// Compiled by test/packaging.test.ts as ESM (nodenext), CommonJS (nodenext) and
// with bundler resolution, against the packed package installed in a temporary
// node_modules: everything comes from 'fastify-autocert', as in a user's app.
import Fastify from 'fastify'
import autocert, {
  ALPNCallback, AzureBlobStore, CHALLENGE_PATH, createAutocert, EncryptedStore, errors, fastifyAutocert, FileStore, MemoryStore, rfc2136, SNICallback,
  type ALPNCallbackFn, type Dns01Options, type DnsProvider, type DnsRecord, type Rfc2136Options, type TsigAlgorithm, type Autocert, type AutocertEvents, type AutocertOptions, type AutocertServer,
  type AzureBlobConnectionStringOptions, type AzureBlobContainerUrlOptions, type AzureBlobSharedKeyOptions,
  type AzureBlobStoreOptions, type AzureBlobTokenCredentialOptions, type CertificateEvent, type CertificateInfo,
  type CertStore, type ChallengeMiddleware, type ChallengeType, type DomainStatus, type EncryptionOptions, type KeyType,
  type Lock, type LockOptions, type LockState, type Logger, type OnDemandOptions, type SNICallbackFn, type TokenCredential
} from 'fastify-autocert'
// @ts-expect-error the package exports its entry only: nothing is reached inside dist/
import type { LockOptions as DeepLockOptions } from 'fastify-autocert/dist/store/store'

/** A store of the user's own, written against the exported contract only. */
export class MapStore implements CertStore {
  readonly #values = new Map<string, Buffer>()
  readonly #held = new Set<string>()

  async get (key: string): Promise<Buffer | undefined> { return this.#values.get(key) }
  async put (key: string, value: Buffer | string): Promise<void> { this.#values.set(key, Buffer.from(value)) }
  async delete (key: string): Promise<void> { this.#values.delete(key) }
  async list (prefix = ''): Promise<string[]> { return [...this.#values.keys()].filter((key) => key.startsWith(prefix)) }

  async lock (key: string, signal?: AbortSignal, options?: LockOptions): Promise<Lock> {
    signal?.throwIfAborted()
    if (this.#held.has(key)) options?.onWait?.(undefined)
    this.#held.add(key)
    const lease = new AbortController()
    return {
      signal: lease.signal,
      release: async () => { this.#held.delete(key); lease.abort() }
    }
  }

  async lockState (key: string): Promise<LockState> { return { state: this.#held.has(key) ? 'held' : 'free' } }
}

export async function readme (): Promise<void> {
  // The README's usage, word for word in its imports.
  const app = Fastify({ https: { SNICallback } })
  await app.register(autocert, {
    domains: ['example.com', 'www.example.com'],
    email: 'ops@example.com',
    termsOfServiceAgreed: true,
    store: { connectionString: 'UseDevelopmentStorage=true', container: 'autocertcache' },
    http01: { port: 80 }
  })
  const decorator: Autocert = app.autocert
  const info: CertificateInfo = await decorator.certificate('example.com')
  const status: DomainStatus[] = app.autocert.status()
  void info
  void status

  // The same plugin under its other names.
  await Fastify().register(fastifyAutocert, { domains: ['example.com'], store: new MapStore(), termsOfServiceAgreed: true })
  await Fastify().register(autocert.default, { domains: ['example.com'], store: new MapStore(), termsOfServiceAgreed: true })
  await Fastify().register(autocert.fastifyAutocert, { domains: ['example.com'], store: new MapStore(), termsOfServiceAgreed: true })
  const sameSni: typeof SNICallback = autocert.SNICallback
  void sameSni
  // @ts-expect-error options are checked through every name of the plugin
  await Fastify().register(fastifyAutocert, { domains: ['example.com'], store: new MapStore() })

  // @ts-expect-error a user's store must implement lock()
  const incomplete: CertStore = { get: async () => undefined, put: async () => {}, delete: async () => {}, list: async () => [] }
  void incomplete
}

export function everyExport (): void {
  const lockOptions: LockOptions = { holder: 'web-1', onWait: (holder) => { void holder } }
  const deep: DeepLockOptions = lockOptions
  void deep
  const keyTypes: KeyType[] = ['ecdsa', 'rsa']
  // @ts-expect-error KeyType is a closed union
  const badKeyType: KeyType = 'ed25519'
  void badKeyType
  const challenges: ChallengeType[] = ['tls-alpn-01', 'http-01']
  // @ts-expect-error ChallengeType is a closed union
  const badChallenge: ChallengeType = 'http-02'
  void badChallenge

  const onDemand: OnDemandOptions = { allow: async (name) => name.endsWith('.example.com') }
  // @ts-expect-error allow() is required; timeout and cacheSize are optional
  const noAllow: OnDemandOptions = { timeout: 1000 }
  void noAllow

  const logger: Logger = { debug () {}, info () {}, warn () {}, error () {} }
  const encryption: EncryptionOptions = { key: Buffer.alloc(32), previousKeys: ['base64'] }
  const options: AutocertOptions = {
    domains: [],
    onDemand,
    store: new EncryptedStore(new MemoryStore(), encryption),
    termsOfServiceAgreed: true,
    keyType: keyTypes,
    challenges,
    logger
  }

  const algorithm: TsigAlgorithm = 'hmac-sha256'
  const rfc: Rfc2136Options = { server: '192.0.2.53:53', zone: 'example.com', key: { name: 'acme', algorithm, secret: 'c2VjcmV0' } }
  const own: DnsProvider = { set: async (record: DnsRecord) => { void record.value }, remove: async () => {} }
  const dns01: Dns01Options[] = [{ provider: rfc2136(rfc) }, { provider: own, timeout: 60_000, nameservers: ['192.0.2.53'] }]
  void dns01

  const credential: TokenCredential = { getToken: async () => ({ token: 't', expiresOnTimestamp: Date.now() + 60_000 }) }
  const byConnectionString: AzureBlobConnectionStringOptions = { connectionString: 'UseDevelopmentStorage=true', container: 'certs' }
  const bySharedKey: AzureBlobSharedKeyOptions = { accountName: 'a', accountKey: 'k', endpoint: 'http://127.0.0.1:10000/a' }
  const byContainerUrl: AzureBlobContainerUrlOptions = { containerUrl: 'https://a.blob.core.windows.net/c?sig=x' }
  const byToken: AzureBlobTokenCredentialOptions = { accountUrl: 'https://a.blob.core.windows.net', credential }
  const all: AzureBlobStoreOptions[] = [byConnectionString, bySharedKey, byContainerUrl, byToken]
  // @ts-expect-error one way to authenticate at a time
  const both: AzureBlobConnectionStringOptions = { connectionString: 'x', accountName: 'a' }
  void both
  const blobStore: AzureBlobStore = new AzureBlobStore(all[0])
  const fileStore: FileStore = new FileStore('/var/lib/autocert')
  const memoryStore: MemoryStore = new MemoryStore()
  const stores: CertStore[] = [blobStore, fileStore, memoryStore, new MapStore()]
  void stores

  const server: AutocertServer = createAutocert(options)
  const middleware: ChallengeMiddleware = server.middleware
  const sni: SNICallbackFn = server.SNICallback
  const alpn: ALPNCallbackFn = ALPNCallback
  void middleware
  void sni
  void alpn
  const path: string = CHALLENGE_PATH
  void path

  server.on('obtained', (event: CertificateEvent) => { const serial: string = event.serial; void serial })
  const renewed = (...[event]: AutocertEvents['renewed']): void => { const previous: string = event.previousSerial; void previous }
  server.on('renewed', renewed)
  // @ts-expect-error events are a closed set
  server.on('expired', () => {})

  const error = new errors.FST_AUTOCERT_NO_DOMAINS()
  const code: 'FST_AUTOCERT_NO_DOMAINS' = error.code
  const isError: boolean = error instanceof Error && error instanceof errors.FST_AUTOCERT_NO_DOMAINS
  void code
  void isError
}
