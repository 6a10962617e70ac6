// The Azure Blob Storage store: one blob per key, leases for locks.
import { randomUUID } from 'node:crypto'
import {
  AnonymousCredential,
  BlobServiceClient,
  ContainerClient,
  RestError,
  StorageSharedKeyCredential,
  type StorageRetryOptions,
  newPipeline
} from '@azure/storage-blob'
import { FST_AUTOCERT_STORE_AUTH, FST_AUTOCERT_STORE_CREDENTIAL } from '../errors'
import { linkSignals, untilAborted } from '../signals'
import { HeldLock } from './held-lock'
import { lockPaths } from './keys'
import { pollLock } from './poll-lock'
import { checkKey, oversized, type CertStore, type GetOptions, type Lock, type LockOptions, type LockState, type PutOptions, type StoreEntry } from './store'

/**
 * `@azure/core-auth`'s `TokenCredential` (what `@azure/identity` credentials
 * implement). `@azure/storage-blob` does not re-export it and `@azure/core-auth` is
 * not a direct dependency, so it is taken from the SDK's own signature.
 */
export type TokenCredential = Extract<NonNullable<Parameters<typeof newPipeline>[0]>, { getToken: unknown }>

interface CommonOptions {
  /** Prepended to every blob name, e.g. `'certs/'`. Default `''` (the keys are the blob names, as with azcertcache). */
  prefix?: string
  /** Lease of a held lock, in seconds, 15 to 60; renewed every third of it. A crashed holder's lock lapses after it. Default 15. */
  leaseDuration?: number
  /** Deadline of one store operation (SDK retries included), in milliseconds. Default 30000. */
  timeout?: number
  /** Retries of the SDK's pipeline. Default: the SDK's (4 tries, exponential from 4 s). */
  retryOptions?: StorageRetryOptions
}

interface NoAuth {
  connectionString?: never
  accountName?: never
  accountKey?: never
  endpoint?: never
  containerUrl?: never
  accountUrl?: never
  credential?: never
}

/** Authenticates with a connection string (account key or account SAS). */
export interface AzureBlobConnectionStringOptions extends CommonOptions, Omit<NoAuth, 'connectionString'> {
  connectionString: string
  /** Default `'autocertcache'`. */
  container?: string
}

/** Authenticates with the account name and one of its access keys. */
export interface AzureBlobSharedKeyOptions extends CommonOptions, Omit<NoAuth, 'accountName' | 'accountKey' | 'endpoint'> {
  accountName: string
  accountKey: string
  /** Default `'autocertcache'`. */
  container?: string
  /** The blob service URL. Default `https://<accountName>.blob.core.windows.net` (Azurite: `http://127.0.0.1:10000/devstoreaccount1`). */
  endpoint?: string
}

/** Authenticates with a container URL that carries a SAS token (permissions racwdl: read, add, create, write, delete, list). */
export interface AzureBlobContainerUrlOptions extends CommonOptions, Omit<NoAuth, 'containerUrl'> {
  containerUrl: string
  container?: never
}

/** Authenticates with a Microsoft Entra ID credential (managed identity, workload identity...). */
export interface AzureBlobTokenCredentialOptions extends CommonOptions, Omit<NoAuth, 'accountUrl' | 'credential'> {
  /** The blob service URL, e.g. `https://<account>.blob.core.windows.net`. */
  accountUrl: string
  credential: TokenCredential
  /** Default `'autocertcache'`. */
  container?: string
}

/** Exactly one way to authenticate, plus the common options. */
export type AzureBlobStoreOptions =
  | AzureBlobConnectionStringOptions
  | AzureBlobSharedKeyOptions
  | AzureBlobContainerUrlOptions
  | AzureBlobTokenCredentialOptions

const INVALID_OPTIONS = 'FST_AUTOCERT_INVALID_STORE_OPTIONS'
const DEFAULT_CONTAINER = 'autocertcache'
const DEFAULT_LEASE_SECONDS = 15
const DEFAULT_TIMEOUT_MS = 30_000
/** The most blobs a List Blobs page may hold. */
const LIST_PAGE = 5000

/**
 * A store in an Azure Blob Storage container: one block blob per key, named
 * `<prefix><key>`, so a container written by Go autocert + azcertcache can be read
 * with an empty prefix. The lock on a key is a blob lease on `<prefix>locks/<key>` (lockPaths),
 * a blob that exists only while the lock is held or being taken.
 *
 * Every SDK error leaves the store as a `RestError` that keeps `statusCode`, `code`
 * and `details` but not the SDK's `request`/`response`: those hold the request URL
 * with its SAS signature and the `Authorization` header. A 403 authentication or
 * authorization failure leaves it as `FST_AUTOCERT_STORE_AUTH`, its message giving
 * the service's reason (`details.authenticationErrorDetail`), its `cause` that
 * `RestError`. A `credential.getToken()` that throws or returns no token is
 * `FST_AUTOCERT_STORE_CREDENTIAL`.
 */
export class AzureBlobStore implements CertStore {
  readonly #client: ContainerClient
  readonly #prefix: string
  readonly #leaseSeconds: number
  readonly #timeoutMs: number
  readonly #held = new Set<HeldLock>()
  // Aborted by close(): ends lock() waits that are still going on.
  readonly #closing = new AbortController()
  #ready: Promise<void> | undefined

  constructor (options: AzureBlobStoreOptions) {
    const o = checkOptions(options)
    this.#client = o.client
    this.#prefix = o.prefix
    this.#leaseSeconds = o.leaseSeconds
    this.#timeoutMs = o.timeoutMs
  }

  async get (key: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    const { maxBytes } = options
    const blob = this.#client.getBlobClient(this.#prefix + checkKey(key))
    await this.#container()
    try {
      return await this.#call(async (abortSignal) => {
        // With a limit, a range request: the service sends at most one byte more
        // than allowed whatever the blob's size, and reports that size.
        const res = await blob.download(0, maxBytes === undefined ? undefined : maxBytes + 1, { abortSignal })
        // Always set in Node (browsers get blobBody instead).
        const body = res.readableStreamBody!
        const size = totalSize(res.contentRange) ?? res.contentLength ?? 0
        if (maxBytes !== undefined && size > maxBytes) {
          // Not read: closing the connection is cheaper, whether or not the service honoured the range.
          body.on('error', () => {})
          body.destroy()
          throw oversized(key, size, maxBytes)
        }
        const chunks: Buffer[] = []
        for await (const chunk of body) chunks.push(chunk as Buffer)
        return Buffer.concat(chunks)
      })
    } catch (err) {
      if (isStorageError(err, 404, 'BlobNotFound')) return undefined
      // A range starting at 0 is refused only when the blob is empty.
      if (maxBytes !== undefined && isStorageError(err, 416, 'InvalidRange')) return Buffer.alloc(0)
      throw err
    }
  }

  /** `options.metadata` becomes the blob's metadata, written with it in the one Put Blob. */
  async put (key: string, value: Buffer | string, { metadata }: PutOptions = {}): Promise<void> {
    const blob = this.#client.getBlockBlobClient(this.#prefix + checkKey(key))
    const body = Buffer.from(value)
    await this.#container()
    await this.#call((abortSignal) => blob.upload(body, body.length, {
      abortSignal,
      blobHTTPHeaders: { blobContentType: 'application/octet-stream' },
      ...(metadata === undefined ? {} : { metadata })
    }))
  }

  async delete (key: string): Promise<void> {
    const blob = this.#client.getBlobClient(this.#prefix + checkKey(key))
    await this.#container()
    await this.#call((abortSignal) => blob.deleteIfExists({ abortSignal }))
  }

  /** The blobs' metadata, from List Blobs pages of up to 5,000 blobs (one call, and one timeout, per page). */
  async * entries (prefix = ''): AsyncIterable<StoreEntry> {
    await this.#container()
    const pages = this.#client.listBlobsFlat({ prefix: this.#prefix + prefix, includeMetadata: true }).byPage({ maxPageSize: LIST_PAGE })[Symbol.asyncIterator]()
    for (;;) {
      // A page request cannot be given a signal of its own: the timeout stops the wait for it.
      const page = await this.#call(async (signal) => await untilAborted(pages.next(), signal))
      if (page.done === true) return
      for (const item of page.value.segment.blobItems) {
        const key = item.name.slice(this.#prefix.length)
        // Lock blobs (lockPaths.blob) have a '/' after the prefix, keys never do.
        if (!key.includes('/')) yield { key, ...(item.metadata === undefined || Object.keys(item.metadata).length === 0 ? {} : { metadata: item.metadata }) }
      }
    }
  }

  async list (prefix = ''): Promise<string[]> {
    await this.#container()
    return await this.#call(async (abortSignal) => {
      const keys: string[] = []
      for await (const item of this.#client.listBlobsFlat({ prefix: this.#prefix + prefix, abortSignal })) {
        const key = item.name.slice(this.#prefix.length)
        // Lock blobs (lockPaths.blob) have a '/' after the prefix, keys never do.
        if (!key.includes('/')) keys.push(key)
      }
      return keys
    })
  }

  /*
   * A released lock leaves no blob: release deletes the lock blob, the delete
   * conditioned on the lease id (it ends the lease, and cannot remove a blob
   * someone else has leased since). Lock names come from on-demand names, that is
   * from clients: kept blobs would pile up, one per name ever locked. So lock()
   * first creates the blob (if-none-match: someone else's is fine), then leases it;
   * a waiter whose holder released it finds it gone (404) and creates it again.
   * Cost of a free lock: 3 operations (create, acquire, delete), plus the holder's
   * setMetadata when one is given, where a kept blob cost 2 (acquire, release)
   * from its second lock on, 4 for its first.
   * A holder that crashed, or could not reach the store to release, leaves its
   * blob: the next lock() of that key takes it over and deletes it.
   */
  async lock (key: string, signal?: AbortSignal, options: LockOptions = {}): Promise<Lock> {
    const blob = this.#client.getBlockBlobClient(this.#prefix + lockPaths.blob(checkKey(key)))
    const lease = blob.getBlobLeaseClient(randomUUID())
    // Removes the lock blob unless another holder has leased it: with our lease id
    // it ends our lease; without (our lease was never granted, or has lapsed) it fails
    // on a blob another holder leased (412). At worst it removes a blob another
    // waiter has just created and not yet leased: that waiter creates it again.
    const discard = async (): Promise<void> => {
      await this.#call((abortSignal) => blob.deleteIfExists({ abortSignal, conditions: { leaseId: lease.leaseId } })).catch(async (err: unknown) => {
        if (!isStorageError(err, 412)) throw err
        await this.#call((abortSignal) => blob.deleteIfExists({ abortSignal }))
      })
    }
    let missing = true
    await pollLock({
      onWait: options.onWait,
      signal,
      closing: this.#closing.signal,
      attempt: async (wait) => {
        await untilAborted(this.#container(), wait)
        try {
          if (missing) {
            await this.#call((abortSignal) => blob.upload('', 0, { abortSignal, conditions: { ifNoneMatch: '*' } }), wait)
              .catch((err: unknown) => {
                // Someone else's lock blob (Azurite says 409, Azure may say 412): lease it.
                if (!isStorageError(err, 409) && !isStorageError(err, 412)) throw err
              })
            missing = false
          }
          await this.#call((abortSignal) => lease.acquireLease(this.#leaseSeconds, { abortSignal }), wait)
          // Granted, but the caller may have given up (or the store closed) just now.
          wait.throwIfAborted()
          return 'taken'
        } catch (err) {
          // (Once `wait` has aborted, #call rejects with its reason, never with these.)
          if (isStorageError(err, 409, 'LeaseAlreadyPresent')) return 'held'
          if (isStorageError(err, 404, 'BlobNotFound')) {
            // Released (deleted) by its holder since: create it again.
            missing = true
            return 'again'
          }
          // Given up, or failed: the blob may have been created, or the lease granted,
          // as the request was cancelled. Remove it rather than leave it.
          discard().catch(() => {})
          throw err
        }
      },
      readHolder: async (wait) => (await this.#call((abortSignal) => blob.getProperties({ abortSignal }), wait)).metadata?.holder
    })
    if (options.holder !== undefined) {
      // Not awaited: for operators only, it must not delay the work the lock is for.
      const metadata = { holder: options.holder }
      this.#call((abortSignal) => blob.setMetadata(metadata, { abortSignal, conditions: { leaseId: lease.leaseId } })).catch(() => {})
    }
    const intervalMs = this.#leaseSeconds * 1000 / 3
    const held: HeldLock = new HeldLock({
      key,
      intervalMs,
      // Each renewal must end before the next tick, so the lease (3 ticks long) is
      // either renewed or known lost well before it lapses.
      refresh: async () => { await this.#call((abortSignal) => lease.renewLease({ abortSignal }), undefined, intervalMs - 100) },
      free: discard,
      lost: 'its lease could not be renewed, another instance may hold it now',
      forget: () => this.#held.delete(held)
    })
    this.#held.add(held)
    return held
  }

  /**
   * From the lock blob (one read): none, free; leased, held by the holder its
   * metadata names; there but not leased (a crashed holder's lapsed lease, or a
   * lock being taken this instant), stale.
   */
  async lockState (key: string): Promise<LockState> {
    const blob = this.#client.getBlobClient(this.#prefix + lockPaths.blob(checkKey(key)))
    await this.#container()
    let properties
    try {
      properties = await this.#call((abortSignal) => blob.getProperties({ abortSignal }))
    } catch (err) {
      if (isStorageError(err, 404)) return { state: 'free' }
      throw err
    }
    const holder = properties.metadata?.holder
    return { state: properties.leaseState === 'leased' ? 'held' : 'stale', ...(holder === undefined ? {} : { holder }) }
  }

  async close (): Promise<void> {
    this.#closing.abort(new Error('AzureBlobStore closed'))
    await Promise.all([...this.#held].map((held) => held.drop(new Error('AzureBlobStore closed: the lock was released'))))
  }

  // Creates the container on first use, once; a failed attempt is retried by the
  // next call. Shared by concurrent callers, so no caller's signal cancels it.
  #container (): Promise<void> {
    this.#ready ??= this.#call(async (abortSignal) => {
      try {
        // No `access` option: the container is private.
        await this.#client.createIfNotExists({ abortSignal })
      } catch (err) {
        // A SAS or an RBAC role scoped to the container may not allow creating it:
        // assume it exists. If it does not, the next request fails with ContainerNotFound.
        if (!isStorageError(err, 403)) throw err
      }
    }).catch((err: unknown) => {
      this.#ready = undefined
      throw err
    })
    return this.#ready
  }

  // Runs one SDK operation under a deadline and the caller's signal. A timeout
  // rejects with an ETIMEDOUT error, the caller's abort with its reason, anything
  // else with the sanitized SDK error.
  async #call<T> (fn: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal, timeoutMs = this.#timeoutMs): Promise<T> {
    signal?.throwIfAborted()
    const deadline = new AbortController()
    const timer = setTimeout(() => deadline.abort(), timeoutMs)
    const linked = linkSignals(signal, deadline.signal)
    return await fn(linked.signal)
      .catch((err: unknown) => {
        if (signal?.aborted === true) throw signal.reason
        if (deadline.signal.aborted) {
          throw Object.assign(new Error(`Azure Blob Storage did not answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })
        }
        // The container went away (deleted, or an emulator restarted): create it
        // again at the next call. Until then this is an error, never a miss.
        if (isStorageError(err, 404, 'ContainerNotFound')) this.#ready = undefined
        throw storeError(err)
      })
      .finally(() => {
        clearTimeout(timer)
        linked.dispose()
      })
  }
}

/**
 * The ContainerClient `options` name, built exactly as the store builds its
 * own (one way of building it): for diagnostics that need calls the store does
 * not make, e.g. reading the container's access policy. Its errors go through
 * storeError() before anyone sees them.
 */
export function containerClientOf (options: AzureBlobStoreOptions): ContainerClient {
  return checkOptions(options).client
}

interface CheckedOptions {
  client: ContainerClient
  prefix: string
  leaseSeconds: number
  timeoutMs: number
}

// Messages name options, never their values: those may be secrets.
function checkOptions (options: AzureBlobStoreOptions): CheckedOptions {
  if (typeof options !== 'object' || options === null) {
    throw invalid('options must be an object with one of connectionString, accountName + accountKey, containerUrl or accountUrl + credential')
  }
  const o = options as Partial<Record<keyof NoAuth | keyof CommonOptions | 'container', unknown>>
  const given = (['connectionString', 'accountName', 'containerUrl', 'accountUrl'] as const)
    .filter((k) => o[k] !== undefined || (k === 'accountName' && o.accountKey !== undefined) || (k === 'accountUrl' && o.credential !== undefined))
  if (given.length === 0) {
    throw invalid('pass one of options.connectionString, options.accountName + options.accountKey, options.containerUrl (with a SAS token) or options.accountUrl + options.credential')
  }
  if (given.length > 1) {
    throw invalid(`options.${given.join(', options.')}: these are different ways to authenticate, pass exactly one`)
  }
  const prefix = o.prefix ?? ''
  if (typeof prefix !== 'string') throw invalid('options.prefix must be a string, e.g. \'certs/\'')
  const leaseSeconds = o.leaseDuration ?? DEFAULT_LEASE_SECONDS
  if (typeof leaseSeconds !== 'number' || !Number.isInteger(leaseSeconds) || leaseSeconds < 15 || leaseSeconds > 60) {
    throw invalid('options.leaseDuration must be a whole number of seconds from 15 to 60 (Azure\'s limits for a lease)')
  }
  const timeoutMs = o.timeout ?? DEFAULT_TIMEOUT_MS
  if (typeof timeoutMs !== 'number' || !(timeoutMs > 0) || !Number.isFinite(timeoutMs)) {
    throw invalid('options.timeout must be a positive number of milliseconds')
  }
  if (o.retryOptions !== undefined && (typeof o.retryOptions !== 'object' || o.retryOptions === null)) {
    throw invalid('options.retryOptions must be an object (the SDK\'s StorageRetryOptions)')
  }
  const pipelineOptions = o.retryOptions === undefined ? {} : { retryOptions: o.retryOptions as StorageRetryOptions }

  const method = given[0]
  if (method !== 'accountName' && o.endpoint !== undefined) {
    throw invalid('options.endpoint only goes with options.accountName + options.accountKey: remove it')
  }
  if (method === 'containerUrl') {
    if (o.container !== undefined) throw invalid('options.containerUrl already names the container: remove options.container')
    const url = parseUrl(o.containerUrl, 'options.containerUrl must be the container\'s URL with a SAS token, e.g. https://<account>.blob.core.windows.net/<container>?sv=...&sig=...')
    if (!url.searchParams.has('sig')) {
      throw invalid('options.containerUrl carries no SAS token: append one with read, add, create, write, delete and list permissions (?sv=...&sig=...)')
    }
    let client: ContainerClient
    try {
      client = new ContainerClient(url.href, new AnonymousCredential(), pipelineOptions)
    } catch {
      throw invalid('options.containerUrl names no container: use https://<account>.blob.core.windows.net/<container>?<SAS token>')
    }
    return { client, prefix, leaseSeconds, timeoutMs }
  }

  const container = o.container ?? DEFAULT_CONTAINER
  if (typeof container !== 'string' || !/^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$/.test(container)) {
    throw invalid('options.container must be a container name: 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit')
  }
  let service: BlobServiceClient
  if (method === 'connectionString') {
    if (typeof o.connectionString !== 'string' || o.connectionString === '') {
      throw invalid('options.connectionString must be a non-empty string: copy it from the storage account\'s "Access keys" page')
    }
    try {
      service = BlobServiceClient.fromConnectionString(o.connectionString, pipelineOptions)
    } catch {
      throw invalid('options.connectionString is not an Azure Storage connection string: expected "DefaultEndpointsProtocol=https;AccountName=...;AccountKey=...;EndpointSuffix=core.windows.net", as on the storage account\'s "Access keys" page')
    }
  } else if (method === 'accountName') {
    if (typeof o.accountName !== 'string' || o.accountName === '') {
      throw invalid('options.accountName must be the storage account\'s name when options.accountKey is set')
    }
    if (typeof o.accountKey !== 'string' || o.accountKey === '') {
      throw invalid('options.accountKey is required with options.accountName: one of the storage account\'s access keys')
    }
    const endpoint = o.endpoint === undefined
      ? `https://${o.accountName}.blob.core.windows.net`
      : parseUrl(o.endpoint, 'options.endpoint must be the blob service URL, e.g. https://<account>.blob.core.windows.net').href
    service = new BlobServiceClient(endpoint, new StorageSharedKeyCredential(o.accountName, o.accountKey), pipelineOptions)
  } else {
    const url = parseUrl(o.accountUrl, 'options.accountUrl must be the blob service URL, e.g. https://<account>.blob.core.windows.net')
    if (url.protocol !== 'https:') throw invalid('options.accountUrl must use https: token credentials are only sent over TLS')
    const credential = o.credential as { getToken?: unknown } | undefined
    if (typeof credential !== 'object' || credential === null || typeof credential.getToken !== 'function') {
      throw invalid('options.credential must be a TokenCredential, e.g. new DefaultAzureCredential() from @azure/identity')
    }
    service = new BlobServiceClient(url.href, namedCredential(credential as TokenCredential), pipelineOptions)
  }
  return { client: service.getContainerClient(container), prefix, leaseSeconds, timeoutMs }
}

function parseUrl (value: unknown, message: string): URL {
  let url: URL | undefined
  try {
    if (typeof value === 'string') url = new URL(value)
  } catch {}
  if (url === undefined || (url.protocol !== 'https:' && url.protocol !== 'http:')) throw invalid(message)
  return url
}

function invalid (message: string): TypeError {
  return Object.assign(new TypeError(`AzureBlobStore: ${message}`), { code: INVALID_OPTIONS })
}

// The SDK passes on a getToken() error as it is and reports a null token as
// "Failed to refresh access token.": neither says that the store's credential failed.
function namedCredential (credential: TokenCredential): TokenCredential {
  return {
    getToken: async (scopes, options) => {
      let token: Awaited<ReturnType<TokenCredential['getToken']>>
      try {
        token = await credential.getToken(scopes, options)
      } catch (err) {
        // The cause goes through sanitize() too: an identity library's RestError quotes its request.
        throw Object.assign(new FST_AUTOCERT_STORE_CREDENTIAL(`failed: ${redact(err instanceof Error ? err.message : String(err))}`), { cause: sanitize(err) })
      }
      if (typeof token?.token !== 'string' || token.token === '') throw new FST_AUTOCERT_STORE_CREDENTIAL('returned no token')
      return token
    }
  }
}

// The blob's size from a range answer's Content-Range (`bytes 0-65536/209715200`); undefined for a whole-blob answer.
function totalSize (contentRange: string | undefined): number | undefined {
  const total = contentRange === undefined ? undefined : /\/(\d+)$/.exec(contentRange)?.[1]
  return total === undefined ? undefined : Number(total)
}

function isStorageError (err: unknown, statusCode: number, code?: string): boolean {
  return err instanceof RestError && err.statusCode === statusCode && (code === undefined || err.code === code)
}

// A RestError's `request` (non-enumerable) holds the URL with its `sig=` and the
// Authorization header: rebuild the error without it.
function sanitize (err: unknown): unknown {
  // The SDK reports HTTP and network failures as RestError; anything else passes as it is.
  /* c8 ignore next */
  if (!(err instanceof RestError)) return err
  const clean = new RestError(redact(err.message), { code: err.code, statusCode: err.statusCode })
  if (err.details !== undefined) clean.details = err.details
  if (err.stack !== undefined) clean.stack = redact(err.stack)
  return clean
}

// Azure answers 403 AuthenticationFailed for a token that is expired, for another
// audience or from another issuer, and Authorization* codes for a missing role (or
// a SAS without the permission); the reason is in details.authenticationErrorDetail
// (for AuthenticationFailed) or the message's first line.
/** An SDK error as the store reports it: sanitized, and a 403 authentication or authorization failure as FST_AUTOCERT_STORE_AUTH. */
export function storeError (err: unknown): unknown {
  const clean = sanitize(err)
  if (!(clean instanceof RestError) || clean.statusCode !== 403 ||
    (clean.code !== 'AuthenticationFailed' && clean.code?.startsWith('Authorization') !== true)) return clean
  const detail = (clean.details as { authenticationErrorDetail?: unknown } | undefined)?.authenticationErrorDetail
  const reason = typeof detail === 'string' && detail !== '' ? redact(detail) : clean.message.split('\n')[0]
  return Object.assign(new FST_AUTOCERT_STORE_AUTH(403, clean.code, reason), { cause: clean })
}

// SDK messages hold no secrets today (checked with 12.32); this keeps it so if one
// ever quotes a URL or a connection string.
function redact (text: string): string {
  return text
    .replace(/\b(sig|AccountKey|SharedAccessSignature)=[^&;\s'"]*/gi, '$1=REDACTED')
    .replace(/\bBearer\s+[^\s'",;]+/gi, 'Bearer REDACTED')
}
