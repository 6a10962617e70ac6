// The options: their types and docs, one rule per option, and Settings, what the rules return.
import { isIP } from 'node:net'
import { hostname } from 'node:os'
import * as acme from 'acme-client'
import type { ChallengeType } from './acme/challenges'
import type { Dns01Options, Dns01Settings } from './acme/dns-01'
import type { KeyType } from './acme/issuer'
import {
  FST_AUTOCERT_INVALID_DIRECTORY_URL, FST_AUTOCERT_INVALID_DOMAIN, FST_AUTOCERT_INVALID_KEY_TYPE,
  FST_AUTOCERT_INVALID_OPTION, FST_AUTOCERT_INVALID_STORE, FST_AUTOCERT_NO_DOMAINS, FST_AUTOCERT_TOS_NOT_AGREED
} from './errors'
import type { Logger } from './events'
import { isAddress, isWildcard, normalizeListed } from './names'
import type { OnDemandOptions, OnDemandSettings } from './on-demand'
import type { AzureBlobStoreOptions } from './store/azure-blob'
import type { EncryptionOptions } from './store/encrypted'
import { isCertStore, STORE_METHODS, type CertStore } from './store/store'

/*
 * The options of the plugin and of createAutocert(), in one model: the
 * AutocertOptions type users write, one rule per option that checks it and
 * fills in its default, and Settings, the type of what the rules return
 * (derived, never written out). The rules build nothing: buildStore() makes
 * the store, the front ends make the rest.
 */

export type { OnDemandOptions }

/** Options of the Fastify plugin and of createAutocert(): checked once, at register time. */
export interface AutocertOptions {
  /**
   * Names to serve and keep certificates for. Normalised: lower case, no
   * trailing dot, punycode. May be empty with `onDemand`. Also:
   * - a wildcard, `*.example.com`: it serves `a.example.com` (one label, not
   *   `a.b.example.com` nor `example.com`) unless that name is listed itself;
   *   a name it covers is never asked of onDemand.allow(). Needs `dns01`.
   * - one IP address (IPv4, or IPv6 in any form; kept in its canonical one):
   *   served to clients that send no SNI, as the server's default certificate.
   *   Validated with HTTP-01 or TLS-ALPN-01; ordered with the CA's `shortlived`
   *   profile when it offers one (Let's Encrypt issues for addresses under no other).
   */
  domains: string[]
  /**
   * Certificates for names not in `domains`, obtained at their first handshake
   * when `allow(name)` resolves to `true` (SaaS custom domains; Caddy's `ask`).
   * allow() is called only for well-formed names; its answer is kept 10 minutes
   * (yes) or 1 minute (no); throwing or taking longer than `timeout` means no.
   * On-demand orders count against `maxOrdersPerHour` and the failure backoff;
   * a name allow() no longer accepts is not renewed.
   */
  onDemand?: OnDemandOptions
  /** This instance's name in lock records, `status()` and `lock-wait` events. Default: `<hostname>/<pid>`. */
  instanceId?: string
  /**
   * Where certificates, the account key, challenges, locks and failure records
   * live, shared by the fleet: a store you built (you close it), or the options
   * of an AzureBlobStore that the plugin builds and closes with the app.
   */
  store: CertStore | AzureBlobStoreOptions
  /** Must be `true`: you accept the CA's terms of service. */
  termsOfServiceAgreed: boolean
  /** Contact address for the ACME account (expiry notices, CA announcements). Default: none. */
  email?: string
  /**
   * The CA: `'production'` (Let's Encrypt, the default), `'staging'` (Let's
   * Encrypt staging) or an https:// ACME directory URL. Or a list of CAs in
   * order of preference: an order the first cannot serve (unreachable, 5xx,
   * rate-limited) is placed with the next, and later orders try the first
   * again. Each entry may be `{ url, externalAccountBinding }`; each CA has
   * its own account in the store.
   */
  directoryUrl?: string | Array<string | CaOptions>
  /**
   * The CA's certificate profile, named in every new order
   * (draft-ietf-acme-profiles): Let's Encrypt offers `'classic'` (its default),
   * `'tlsserver'` (45 days) and `'shortlived'` (160 hours). Checked against the
   * profiles the CA's directory lists when it is first read: an unknown one
   * fails the orders with FST_AUTOCERT_INVALID_PROFILE, which names them.
   * Renewal follows each certificate's own lifetime either way. Default: none (the CA's default).
   */
  profile?: string
  /**
   * Key of each certificate: `'ecdsa'` (P-256, the default), `'rsa'` (2048 bits),
   * or both, `['ecdsa', 'rsa']`: each name then has one certificate of each kind
   * in one TLS context, and OpenSSL serves the first kind the client supports
   * (old clients that cannot do ECDSA get RSA). Each kind is its own order.
   * The account key is always P-256.
   */
  keyType?: KeyType | KeyType[]
  /**
   * Renew when this much validity remains (milliseconds), or sooner when the
   * CA's renewal window (ARI) says so. Default: the CA's window, or without
   * one a third of the lifetime (half of it for certificates of under 10 days).
   */
  renewBefore?: number
  /** Waits after 1, 2, 3... consecutive failed orders (milliseconds; the last repeats). Default: 1 min, 10 min, 20 min, 30 min, 1 h, 2 h, 6 h. */
  retryDelays?: number[]
  /** How many domains are loaded from the store or ordered at once at start-up, and renewed or checked (renewal windows) at once later. Default: 8. */
  concurrency?: number
  /**
   * New orders the whole fleet may place in any hour, counted in the store, so
   * no client, bug or restart loop can exhaust the CA's limits (Let's Encrypt:
   * 300 new orders per account per 3 hours). Default: 100.
   */
  maxOrdersPerHour?: number
  /**
   * How long a TLS handshake waits for a certificate being read or ordered
   * (milliseconds). Past it the handshake fails with
   * FST_AUTOCERT_HANDSHAKE_TIMEOUT and the order goes on in the background, so
   * the client's next attempt is served. Keep it under the server's own
   * `https.handshakeTimeout` (Node: 120 s). Default: 20000.
   */
  handshakeTimeout?: number
  /**
   * How long an order waits for a lock another instance holds: a name's, the
   * order log's or the account's (milliseconds). Past it the order fails with
   * FST_AUTOCERT_LOCK_TIMEOUT, a warning names the holder, and it is tried again
   * later. Default: 120000 (an order normally holds a name's lock for seconds).
   */
  lockTimeout?: number
  /**
   * The longest `onReady` waits for the listed domains to be loaded from the
   * store (milliseconds). What is not loaded by then goes on loading in the
   * background, and a handshake for such a name reads it itself, so a start
   * with any number of domains fits Fastify's `pluginTimeout` (default 10 s).
   * Certificates missing from the store are ordered once the server listens,
   * after the loading. Default: 5000.
   */
  prewarmTimeout?: number
  /**
   * How many names keep their certificates ready to serve: keys, chains and,
   * once built, TLS contexts (each about 24 KiB per key type). Past it, the
   * least recently used name's are freed, keeping only what its renewal needs
   * (serial and validity); its next handshake reads its certificate from the
   * store again (one read per name in flight) and builds its contexts. A
   * listed IP address is never freed (it is the server's default
   * certificate). With more listed certificates than this, a start-up learns
   * their state from the store's listing of their metadata (CertStore.entries)
   * and reads only this many whole. Default: 10000.
   */
  contextCacheSize?: number
  /** Encrypts everything written to the store with AES-256-GCM (see EncryptedStore). Default: none. */
  encryption?: EncryptionOptions
  /**
   * For an HTTPS app: a companion plain-HTTP listener, started when the app is
   * ready and closed with it, that answers HTTP-01 challenges and redirects
   * everything else to https. The CA always validates on port 80. Default: none.
   */
  http01?: { port: number, host?: string }
  /**
   * The challenge types to complete, in order of preference: each authorization
   * uses the first one the CA offers. `'tls-alpn-01'` is answered on the HTTPS
   * port (443 for the CA) and needs the `ALPNCallback` in the server's options;
   * `'dns-01'` needs `dns01`, and is added last when `dns01` is given and it is
   * not listed (a CA offers only DNS-01 for a wildcard). Default: `['http-01']`.
   */
  challenges?: readonly ChallengeType[]
  /**
   * DNS-01, for wildcards (and for any name when `challenges` lists it first):
   * the provider that sets the TXT record `_acme-challenge.<name>`, with how
   * long to wait for it and where to look. The instance holding the name's lock
   * sets the record, waits until the zone's servers serve it, tells the CA, and
   * removes it after validation, also when the order fails or the app closes.
   */
  dns01?: Dns01Options
  /** External account binding, for CAs that require it (ZeroSSL, Google): of the first CA of `directoryUrl`, unless that entry has its own. */
  externalAccountBinding?: { kid: string, hmacKey: string }
  /**
   * Where to log (a pino-compatible logger: debug, info, warn, error taking an
   * object then a message). Default: the Fastify app's logger for the plugin;
   * warnings and errors on stderr for createAutocert().
   */
  logger?: Logger
}

/** One CA of a `directoryUrl` list. */
export interface CaOptions {
  /** `'production'`, `'staging'` or an https:// ACME directory URL. */
  url: string
  /** External account binding for this CA, when it requires one. */
  externalAccountBinding?: { kid: string, hmacKey: string }
}

/** A CA as validated: its directory URL and its binding. */
export interface CaSettings {
  directoryUrl: string
  externalAccountBinding?: { kid: string, hmacKey: string }
}

const CHALLENGE_TYPES: readonly ChallengeType[] = ['http-01', 'tls-alpn-01', 'dns-01']

/**
 * One rule per option: checks the value given (a coded TypeError that names
 * the option and the fix) and returns it normalised, with its default.
 * `satisfies` makes the compiler hold this list to AutocertOptions: no option
 * without a rule, no rule without an option. They run in this order, and the
 * first problem found is the one reported.
 */
const rules = {
  onDemand: (value: AutocertOptions['onDemand']): OnDemandSettings | undefined => {
    if (value === undefined) return undefined
    if (typeof value?.allow !== 'function') {
      throw new FST_AUTOCERT_INVALID_OPTION('onDemand.allow', 'must be a function (name) => boolean | Promise<boolean> that says whether a name may have a certificate')
    }
    const { allow, timeout = 5000, cacheSize = 10_000 } = value
    if (!(Number.isFinite(timeout) && timeout > 0)) throw new FST_AUTOCERT_INVALID_OPTION('onDemand.timeout', 'must be a positive number of milliseconds')
    if (!(Number.isInteger(cacheSize) && cacheSize > 0)) throw new FST_AUTOCERT_INVALID_OPTION('onDemand.cacheSize', 'must be a positive integer')
    return { allow, timeout, cacheSize }
  },
  domains: (domains: AutocertOptions['domains'], options: AutocertOptions): string[] => {
    if (!Array.isArray(domains) || (domains.length === 0 && options.onDemand === undefined)) throw new FST_AUTOCERT_NO_DOMAINS()
    const names = [...new Set(domains.map((raw) => {
      const name = typeof raw === 'string' ? normalizeListed(raw) : undefined
      if (name === undefined) throw new FST_AUTOCERT_INVALID_DOMAIN(JSON.stringify(raw))
      return name
    }))]
    const wildcard = names.find(isWildcard)
    if (wildcard !== undefined && options.dns01 === undefined) {
      throw new FST_AUTOCERT_INVALID_OPTION('dns01', `is needed for ${wildcard}: a CA validates a wildcard with DNS-01 only; give dns01: { provider }`)
    }
    const addresses = names.filter(isAddress)
    if (addresses.length > 1) {
      throw new FST_AUTOCERT_INVALID_OPTION('domains', `lists ${addresses[0]} and ${addresses[1]}: one IP address per server, since a client that connects by address sends no SNI and gets the server's one default certificate`)
    }
    const challenges = options.challenges ?? ['http-01']
    if (addresses.length > 0 && Array.isArray(challenges) && !challenges.some((c) => c === 'http-01' || c === 'tls-alpn-01')) {
      throw new FST_AUTOCERT_INVALID_OPTION('challenges', `must list 'http-01' or 'tls-alpn-01' for ${addresses[0]}: an IP address is never validated with DNS-01`)
    }
    return names
  },
  instanceId: (value: AutocertOptions['instanceId']): string => {
    const instanceId = value ?? `${hostname()}/${process.pid}`
    // Recorded in lock files and blob metadata: printable ASCII only.
    if (typeof instanceId !== 'string' || !/^[\x21-\x7e][\x20-\x7e]{0,127}$/.test(instanceId)) {
      throw new FST_AUTOCERT_INVALID_OPTION('instanceId', 'must be 1 to 128 printable ASCII characters, e.g. the host name')
    }
    return instanceId
  },
  termsOfServiceAgreed: (value: boolean): true => {
    if (value !== true) throw new FST_AUTOCERT_TOS_NOT_AGREED()
    return value
  },
  email: (email: AutocertOptions['email']): string | undefined => {
    if (email !== undefined && (typeof email !== 'string' || !/^[^@\s]+@[^@\s]+$/.test(email))) {
      throw new FST_AUTOCERT_INVALID_OPTION('email', 'must be an e-mail address such as ops@example.com')
    }
    return email
  },
  /** Always a list here, without repeats, the preferred key type first. */
  keyType: (value: AutocertOptions['keyType']): KeyType[] => {
    const keyTypes = [...new Set(Array.isArray(value) ? value : [value ?? 'ecdsa'])]
    const badType = keyTypes.find((type) => type !== 'ecdsa' && type !== 'rsa')
    if (keyTypes.length === 0 || badType !== undefined) throw new FST_AUTOCERT_INVALID_KEY_TYPE(JSON.stringify(badType ?? value))
    return keyTypes
  },
  renewBefore: (renewBefore: AutocertOptions['renewBefore']): number | undefined => {
    if (renewBefore !== undefined && !(Number.isFinite(renewBefore) && renewBefore > 0)) {
      throw new FST_AUTOCERT_INVALID_OPTION('renewBefore', 'must be a positive number of milliseconds')
    }
    return renewBefore
  },
  retryDelays: (retryDelays: AutocertOptions['retryDelays']): readonly number[] | undefined => {
    if (retryDelays !== undefined && !(Array.isArray(retryDelays) && retryDelays.length > 0 &&
        retryDelays.every((d) => Number.isFinite(d) && d >= 0))) {
      throw new FST_AUTOCERT_INVALID_OPTION('retryDelays', 'must be a non-empty array of milliseconds, e.g. [60000, 600000]')
    }
    return retryDelays
  },
  concurrency: (value: AutocertOptions['concurrency']): number => {
    const concurrency = value ?? 8
    if (!Number.isInteger(concurrency) || concurrency < 1) throw new FST_AUTOCERT_INVALID_OPTION('concurrency', 'must be a positive integer')
    return concurrency
  },
  maxOrdersPerHour: (value: AutocertOptions['maxOrdersPerHour']): number => {
    const maxOrdersPerHour = value ?? 100
    if (!Number.isInteger(maxOrdersPerHour) || maxOrdersPerHour < 1) throw new FST_AUTOCERT_INVALID_OPTION('maxOrdersPerHour', 'must be a positive integer')
    return maxOrdersPerHour
  },
  handshakeTimeout: (value: AutocertOptions['handshakeTimeout']): number => milliseconds('handshakeTimeout', value, 20_000),
  lockTimeout: (value: AutocertOptions['lockTimeout']): number => milliseconds('lockTimeout', value, 120_000),
  prewarmTimeout: (value: AutocertOptions['prewarmTimeout']): number => milliseconds('prewarmTimeout', value, 5_000),
  contextCacheSize: (value: AutocertOptions['contextCacheSize']): number => {
    const size = value ?? 10_000
    if (!Number.isInteger(size) || size < 1) throw new FST_AUTOCERT_INVALID_OPTION('contextCacheSize', 'must be a positive integer')
    return size
  },
  encryption: (encryption: AutocertOptions['encryption']): EncryptionOptions | undefined => {
    if (encryption === undefined) return undefined
    if (encryption?.previousKeys !== undefined && !Array.isArray(encryption.previousKeys)) {
      throw new FST_AUTOCERT_INVALID_OPTION('encryption.previousKeys', 'must be an array of the keys used before, newest first')
    }
    for (const [i, key] of [encryption?.key, ...(encryption?.previousKeys ?? [])].entries()) {
      const bytes = typeof key === 'string' ? Buffer.from(key, 'base64') : key
      if (!Buffer.isBuffer(bytes) || bytes.length !== 32) {
        throw new FST_AUTOCERT_INVALID_OPTION(i === 0 ? 'encryption.key' : `encryption.previousKeys[${i - 1}]`,
          'must be 32 bytes: a Buffer, or a base64 string such as `openssl rand -base64 32` prints')
      }
    }
    return encryption
  },
  challenges: (value: AutocertOptions['challenges'], options: AutocertOptions): readonly ChallengeType[] => {
    const challenges = value ?? ['http-01']
    if (!(Array.isArray(challenges) && challenges.length > 0 && challenges.every((c) => CHALLENGE_TYPES.includes(c)) &&
        new Set(challenges).size === challenges.length)) {
      throw new FST_AUTOCERT_INVALID_OPTION('challenges', 'must list \'http-01\', \'tls-alpn-01\' and/or \'dns-01\' once each, in order of preference, e.g. [\'tls-alpn-01\', \'http-01\']')
    }
    if (options.dns01 === undefined) {
      if (challenges.includes('dns-01')) throw new FST_AUTOCERT_INVALID_OPTION('challenges', 'lists \'dns-01\': give dns01: { provider } too')
      return challenges
    }
    return challenges.includes('dns-01') ? challenges : [...challenges, 'dns-01']
  },
  dns01: (value: AutocertOptions['dns01']): Dns01Settings | undefined => {
    if (value === undefined) return undefined
    const { provider, timeout = 120_000, nameservers } = value ?? {}
    if (typeof provider?.set !== 'function' || typeof provider?.remove !== 'function') {
      throw new FST_AUTOCERT_INVALID_OPTION('dns01.provider', 'must have set(record, signal) and remove(record, signal) methods that add and remove a TXT record, e.g. rfc2136({...})')
    }
    if (!(Number.isFinite(timeout) && timeout > 0 && timeout <= MAX_DNS01_TIMEOUT)) {
      throw new FST_AUTOCERT_INVALID_OPTION('dns01.timeout', `must be a positive number of milliseconds, at most ${MAX_DNS01_TIMEOUT} (an order's own deadline is 5 minutes)`)
    }
    if (nameservers !== undefined && !(Array.isArray(nameservers) && nameservers.length > 0 && nameservers.every(isServerAddress))) {
      throw new FST_AUTOCERT_INVALID_OPTION('dns01.nameservers', 'must be a non-empty array of IP addresses, each with an optional port: \'192.0.2.53\', \'192.0.2.53:5353\', \'[2001:db8::53]:53\'')
    }
    return { provider, timeout, ...(nameservers === undefined ? {} : { nameservers: [...nameservers] }) }
  },
  logger: (logger: AutocertOptions['logger']): Logger | undefined => {
    if (logger !== undefined && !(['debug', 'info', 'warn', 'error'] as const).every((level) => typeof logger?.[level] === 'function')) {
      throw new FST_AUTOCERT_INVALID_OPTION('logger', 'must be a pino-compatible logger with debug, info, warn and error methods')
    }
    return logger
  },
  store: (value: AutocertOptions['store']): CertStore | AzureBlobStoreOptions => {
    if (isCertStore(value)) return value
    // Something with some of a store's methods is a store that misses the others.
    // Plain options are checked by AzureBlobStore itself (its errors carry their own code).
    const partial = typeof value === 'object' && value !== null &&
      STORE_METHODS.some((m) => typeof (value as unknown as Record<string, unknown>)[m] === 'function')
    if (typeof value !== 'object' || value === null || partial) throw new FST_AUTOCERT_INVALID_STORE()
    return value
  },
  http01: (http01: AutocertOptions['http01']): { port: number, host?: string } | undefined => {
    if (http01 !== undefined && !(Number.isInteger(http01?.port) && http01.port >= 0 && http01.port < 65536)) {
      throw new FST_AUTOCERT_INVALID_OPTION('http01.port', 'must be a TCP port number, usually 80')
    }
    return http01
  },
  /** Always a list here, without repeats, the preferred CA first; `externalAccountBinding` folded into the first. */
  directoryUrl: (value: AutocertOptions['directoryUrl'], options: AutocertOptions): CaSettings[] => {
    const entries = Array.isArray(value) ? value : [value ?? 'production']
    if (entries.length === 0) throw new FST_AUTOCERT_INVALID_DIRECTORY_URL('[] (an empty list)')
    const cas = entries.map((entry, i): CaSettings => {
      const given = typeof entry === 'object' && entry !== null ? entry : { url: entry }
      const binding = given.externalAccountBinding ?? (i === 0 && typeof entry !== 'object' ? options.externalAccountBinding : undefined)
      if (binding !== undefined && !(typeof binding?.kid === 'string' && typeof binding.hmacKey === 'string')) {
        throw new FST_AUTOCERT_INVALID_OPTION(typeof entry === 'object' ? `directoryUrl[${i}].externalAccountBinding` : 'externalAccountBinding', 'must be { kid, hmacKey }, as the CA gives them')
      }
      return { directoryUrl: directoryUrl(given.url), ...(binding === undefined ? {} : { externalAccountBinding: binding }) }
    })
    const urls = cas.map((ca) => ca.directoryUrl)
    const repeated = urls.find((url, i) => urls.indexOf(url) !== i)
    if (repeated !== undefined) throw new FST_AUTOCERT_INVALID_DIRECTORY_URL(`${JSON.stringify(repeated)} twice in the list`)
    return cas
  },
  profile: (profile: AutocertOptions['profile']): string | undefined => {
    // Profile names are short tokens (Let's Encrypt's: classic, tlsserver, shortlived).
    if (profile !== undefined && !(typeof profile === 'string' && /^[\x21-\x7e]{1,64}$/.test(profile))) {
      throw new FST_AUTOCERT_INVALID_OPTION('profile', 'must be the name of one of the CA\'s profiles, e.g. \'tlsserver\' or \'shortlived\'')
    }
    return profile
  },
  /** Folded into directoryUrl's first CA by its rule. */
  externalAccountBinding: (value: AutocertOptions['externalAccountBinding']): { kid: string, hmacKey: string } | undefined => value
} satisfies { [K in keyof AutocertOptions]-?: (value: AutocertOptions[K], options: AutocertOptions) => unknown }

/** One directory URL: a name Let's Encrypt's, or an https:// URL (FST_AUTOCERT_INVALID_DIRECTORY_URL otherwise). */
export function directoryUrl (value: unknown): string {
  if (value === undefined || value === 'production') return acme.directory.letsencrypt.production
  if (value === 'staging') return acme.directory.letsencrypt.staging
  let url: URL | undefined
  try {
    url = new URL(String(value))
  } catch {}
  if (typeof value !== 'string' || url?.protocol !== 'https:') throw new FST_AUTOCERT_INVALID_DIRECTORY_URL(JSON.stringify(String(value)))
  return value
}

/** The longest options.dns01.timeout: the wait must leave room for the validation within an order's deadline. */
const MAX_DNS01_TIMEOUT = 240_000

/** A name server as node:dns takes it: an IP address, with an optional port (IPv6 then in brackets). */
function isServerAddress (value: unknown): boolean {
  if (typeof value !== 'string') return false
  const match = /^\[([^\]]+)\]:(\d{1,5})$/.exec(value) ?? /^([^:]+):(\d{1,5})$/.exec(value)
  const [address, port] = match === null ? [value, '53'] : [match[1], match[2]]
  return isIP(address) !== 0 && Number(port) > 0 && Number(port) < 65536
}

/** A duration option: a positive number of milliseconds that a timer can wait (at most 2^31 - 1), or its default. */
function milliseconds (name: keyof AutocertOptions, value: number | undefined, fallback: number): number {
  const ms = value ?? fallback
  if (!(Number.isFinite(ms) && ms > 0 && ms <= 2 ** 31 - 1)) throw new FST_AUTOCERT_INVALID_OPTION(name, 'must be a positive number of milliseconds (at most 2147483647)')
  return ms
}

/** The options as validated: each option's rule's result (defaults filled in, names normalised). */
export type Settings = { readonly [K in keyof typeof rules]: ReturnType<(typeof rules)[K]> }

const OPTION_NAMES = Object.keys(rules)

/** Checks every option (throws the first problem as a coded TypeError) and returns them normalised. Builds nothing. */
export function validate (options: AutocertOptions): Settings {
  const given = (options ?? {}) as unknown as Record<string, unknown>
  const unknown = Object.keys(given).filter((k) => !Object.hasOwn(rules, k))
  if (unknown.length > 0) {
    throw new FST_AUTOCERT_INVALID_OPTION(unknown[0], `is not an option; the options are: ${OPTION_NAMES.join(', ')}`)
  }
  const settings: Record<string, unknown> = {}
  for (const [name, rule] of Object.entries(rules)) {
    settings[name] = (rule as (value: unknown, options: AutocertOptions) => unknown)(given[name], given as unknown as AutocertOptions)
  }
  return settings as Settings
}
