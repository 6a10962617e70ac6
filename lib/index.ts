// The package entry: the plugin and everything public, nothing else.
/*
 * The package entry. It has the shape of the official @fastify/* plugins:
 * `module.exports` is the plugin itself, also reachable as `.default` and as
 * `.fastifyAutocert`, and everything else is a property of it. So
 * `require('fastify-autocert')` and `import autocert from 'fastify-autocert'`
 * both give the plugin, and `import { SNICallback } from 'fastify-autocert'`
 * works from ESM (Node finds the names in the `module.exports.x = ` lines below).
 * The types follow with `export =` and a namespace of the same name.
 */
import type { FastifyPluginAsync } from 'fastify'
import plugin, { ALPNCallback, SNICallback } from './plugin'
import { CHALLENGE_PATH, createAutocert } from './autocert'
import { rfc2136 } from './dns/rfc2136'
import * as errors from './errors'
import { AzureBlobStore } from './store/azure-blob'
import { EncryptedStore } from './store/encrypted'
import { FileStore } from './store/file'
import { MemoryStore } from './store/memory'
import type * as acmeChallenges from './acme/challenges'
import type * as acmeDns01 from './acme/dns-01'
import type * as dnsRfc2136 from './dns/rfc2136'
import type * as acmeIssuer from './acme/issuer'
import type * as acmeTlsAlpn from './acme/tls-alpn'
import type * as autocertModule from './autocert'
import type * as events from './events'
import type * as azureBlob from './store/azure-blob'
import type * as encrypted from './store/encrypted'
import type * as fileStore from './store/file'
import type * as memoryStore from './store/memory'
import type * as options from './options'
import type * as store from './store/store'

/** The plugin, and the rest of the package as its properties. */
interface FastifyAutocert extends FastifyPluginAsync<options.AutocertOptions> {
  default: FastifyAutocert
  fastifyAutocert: FastifyAutocert
  SNICallback: typeof SNICallback
  ALPNCallback: typeof ALPNCallback
  createAutocert: typeof createAutocert
  CHALLENGE_PATH: typeof CHALLENGE_PATH
  MemoryStore: typeof MemoryStore
  FileStore: typeof FileStore
  AzureBlobStore: typeof AzureBlobStore
  EncryptedStore: typeof EncryptedStore
  rfc2136: typeof rfc2136
  errors: typeof errors
}

const fastifyAutocert: FastifyAutocert = plugin as FastifyAutocert

// eslint-disable-next-line @typescript-eslint/no-redeclare -- merges with the const above: the types of `export =`
declare namespace fastifyAutocert {
  export type AutocertOptions = options.AutocertOptions
  export type OnDemandOptions = options.OnDemandOptions
  export type KeyType = acmeIssuer.KeyType
  export type ChallengeType = acmeChallenges.ChallengeType
  export type Logger = events.Logger
  export type DnsProvider = acmeDns01.DnsProvider
  export type DnsRecord = acmeDns01.DnsRecord
  export type Dns01Options = acmeDns01.Dns01Options
  export type Rfc2136Options = dnsRfc2136.Rfc2136Options
  export type TsigAlgorithm = dnsRfc2136.TsigAlgorithm

  export type Autocert = autocertModule.Autocert
  export type AutocertServer = autocertModule.AutocertServer
  export type CertificateInfo = autocertModule.CertificateInfo
  export type RevocationReason = autocertModule.RevocationReason
  export type ChallengeMiddleware = autocertModule.ChallengeMiddleware
  export type SNICallbackFn = autocertModule.SNICallbackFn
  export type ALPNCallbackFn = acmeTlsAlpn.ALPNCallbackFn
  export type DomainStatus = events.DomainStatus
  export type AutocertEvents = events.AutocertEvents
  export type CertificateEvent = events.CertificateEvent
  export type BackoffReason = events.BackoffReason

  export type CertStore = store.CertStore
  export type Lock = store.Lock
  export type LockOptions = store.LockOptions
  export type LockState = store.LockState
  export type GetOptions = store.GetOptions
  export type PutOptions = store.PutOptions
  export type StoreEntry = store.StoreEntry
  export type MemoryStore = memoryStore.MemoryStore
  export type FileStore = fileStore.FileStore
  export type AzureBlobStore = azureBlob.AzureBlobStore
  export type AzureBlobStoreOptions = azureBlob.AzureBlobStoreOptions
  export type AzureBlobConnectionStringOptions = azureBlob.AzureBlobConnectionStringOptions
  export type AzureBlobSharedKeyOptions = azureBlob.AzureBlobSharedKeyOptions
  export type AzureBlobContainerUrlOptions = azureBlob.AzureBlobContainerUrlOptions
  export type AzureBlobTokenCredentialOptions = azureBlob.AzureBlobTokenCredentialOptions
  export type TokenCredential = azureBlob.TokenCredential
  export type EncryptedStore = encrypted.EncryptedStore
  export type EncryptionOptions = encrypted.EncryptionOptions
}

// Node's ESM loader finds the named exports of a CommonJS module by reading its
// text, in `module.exports.name = ` lines: one per name, typed by the interface
// above. TypeScript emits `export =` as the file's last line, assigning the same
// object again.
declare const module: { exports: FastifyAutocert }
module.exports = fastifyAutocert
module.exports.default = fastifyAutocert
module.exports.fastifyAutocert = fastifyAutocert
module.exports.SNICallback = SNICallback
module.exports.ALPNCallback = ALPNCallback
module.exports.createAutocert = createAutocert
module.exports.CHALLENGE_PATH = CHALLENGE_PATH
module.exports.MemoryStore = MemoryStore
module.exports.FileStore = FileStore
module.exports.AzureBlobStore = AzureBlobStore
module.exports.EncryptedStore = EncryptedStore
module.exports.rfc2136 = rfc2136
module.exports.errors = errors

export = fastifyAutocert
