// DNS-01: the TXT record through the user's DNS provider, and the wait until the zone's servers serve it.
import { Resolver } from 'node:dns/promises'
import type { Authorization } from 'acme-client'
import { errorMessage, type Logger } from '../events'
import { linkSignals, sleep, untilAborted } from '../signals'
import type { ChallengeSolver } from './challenges'

/** The TXT record of one DNS-01 challenge. */
export interface DnsRecord {
  /**
   * `_acme-challenge.<name>`, without a trailing dot: for `*.example.com` and
   * `example.com` alike, `_acme-challenge.example.com`.
   */
  readonly name: string
  /** The TXT value: the key authorization's SHA-256, base64url (43 characters). */
  readonly value: string
}

/**
 * What DNS-01 needs of a DNS service: add a TXT record, remove it. A name may
 * carry several challenge values at once (`example.com` and `*.example.com`
 * are validated under one name): set() adds its value next to the others, and
 * remove() removes that value only. Both are called by the instance that holds
 * the name's lock, bounded by options.dns01.timeout (`signal` aborts then);
 * rejecting fails the order, with the message in the error.
 */
export interface DnsProvider {
  set (record: DnsRecord, signal: AbortSignal): Promise<void>
  remove (record: DnsRecord, signal: AbortSignal): Promise<void>
}

/** options.dns01. */
export interface Dns01Options {
  /** Sets and removes the TXT records: `rfc2136({...})` for BIND, Knot, PowerDNS or Windows DNS, or your own. */
  provider: DnsProvider
  /**
   * How long setting a record may take, and then until every server asked
   * serves it (milliseconds), and how long removing it may take. Default: 120000.
   */
  timeout?: number
  /**
   * The servers asked whether the record is served, `'address'` or
   * `'address:port'` (IPv6 as `'[address]:port'`). Default: the authoritative
   * servers of the record's zone (its NS records, through the system resolver).
   */
  nameservers?: string[]
}

export interface Dns01Settings {
  provider: DnsProvider
  timeout: number
  nameservers?: readonly string[]
}

/** The TXT record name of the challenge for `identifier` (a wildcard's is its base name's). */
export function challengeRecordName (identifier: string): string {
  return `_acme-challenge.${identifier.replace(/^\*\./, '')}`
}

/** Waits between looks at the servers: at once, then 250 ms, doubling to 2 s. */
const POLL_MAX = 2000

/**
 * DNS-01 answers. publish() sets the record and resolves once every server
 * asked serves it, so the CA finds it wherever it looks; withdraw() removes
 * it. Removals are tracked: close() waits for them (each within the timeout),
 * so an app that closes mid-order leaves no record behind.
 */
export class Dns01Challenges implements ChallengeSolver {
  readonly type = 'dns-01'
  readonly #opts: Dns01Settings
  readonly #log: Logger
  /** The record each published challenge set (by token): what withdraw() removes. */
  readonly #records = new Map<string, DnsRecord>()
  readonly #removing = new Set<Promise<void>>()

  constructor (opts: Dns01Settings, log: Logger) {
    this.#opts = opts
    this.#log = log
  }

  async publish (authz: Authorization, { token }: { token: string }, keyAuthorization: string, signal: AbortSignal): Promise<void> {
    const record: DnsRecord = { name: challengeRecordName(authz.identifier.value), value: keyAuthorization }
    this.#records.set(token, record)
    const { provider, timeout } = this.#opts
    const bound = linkSignals(signal, AbortSignal.timeout(timeout))
    try {
      await untilAborted(provider.set(record, bound.signal), bound.signal).catch((err: unknown) => {
        throw new Error(`the DNS provider could not set the TXT record ${record.name}: ${reason(err, signal, timeout)}`, { cause: err })
      })
      await this.#served(record, bound.signal).catch((err: unknown) => {
        throw new Error(`the TXT record ${record.name} was set but not served in time: ${reason(err, signal, timeout)}`, { cause: err })
      })
    } finally {
      bound.dispose()
    }
  }

  async withdraw (_authz: Authorization, { token }: { token: string }): Promise<void> {
    const record = this.#records.get(token)
    if (record === undefined) return
    this.#records.delete(token)
    const { provider, timeout } = this.#opts
    // Its own deadline: the order's signal has often aborted by now (a failed order, a closing app).
    const signal = AbortSignal.timeout(timeout)
    const removing = untilAborted(provider.remove(record, signal), signal).catch((err: unknown) => {
      this.#log.warn({ record: record.name, error: { message: reason(err, undefined, timeout) } }, 'could not remove a DNS-01 TXT record')
      throw err
    })
    const tracked = removing.catch(() => {}).finally(() => this.#removing.delete(tracked))
    this.#removing.add(tracked)
    await removing
  }

  /** Waits for the removals in flight (each bounded by the timeout). */
  async close (): Promise<void> {
    await Promise.all(this.#removing)
  }

  /** Resolves once every server asked serves `record`; rejects when `signal` aborts first, naming those that did not. */
  async #served (record: DnsRecord, signal: AbortSignal): Promise<void> {
    let waiting: string[] = [...(this.#opts.nameservers ?? await authoritativeServers(record.name, signal))]
    for (let attempt = 0; ; attempt++) {
      const served = await Promise.all(waiting.map(async (server) => await serves(server, record, signal)))
      waiting = waiting.filter((_, i) => !served[i])
      if (waiting.length === 0) return
      await sleep(Math.min(125 * 2 ** (attempt + 1), POLL_MAX), signal).catch(() => {
        throw new Error(`not served by ${waiting.join(', ')} within ${this.#opts.timeout} ms (options.dns01.timeout)`)
      })
    }
  }
}

/** Why a provider call or a wait failed, as the order's error says it. */
function reason (err: unknown, signal: AbortSignal | undefined, timeout: number): string {
  if (signal?.aborted === true) return errorMessage(signal.reason)
  const name = (err as { name?: unknown } | undefined)?.name
  return name === 'TimeoutError' ? `no answer within ${timeout} ms (options.dns01.timeout)` : errorMessage(err)
}

/** Whether `server` serves `record` now: a timed-out or failed query counts as not yet. */
async function serves (server: string, record: DnsRecord, signal: AbortSignal): Promise<boolean> {
  const resolver = new Resolver({ timeout: 2000, tries: 1 })
  resolver.setServers([server])
  try {
    const values = await untilAborted(resolver.resolveTxt(record.name), signal)
    return values.some((chunks) => chunks.join('') === record.value)
  } catch {
    return false
  } finally {
    resolver.cancel()
  }
}

/**
 * The addresses of the authoritative servers of the zone holding `name`: the
 * closest enclosing name with an SOA record is the zone, its NS records the
 * servers. `servers` are the resolvers that find them (default: the system's);
 * `port`, the port the servers are asked on (53).
 */
export async function authoritativeServers (name: string, signal: AbortSignal, { servers, port = 53 }: { servers?: string[], port?: number } = {}): Promise<string[]> {
  const resolver = new Resolver()
  if (servers !== undefined) resolver.setServers(servers)
  const onAbort = (): void => resolver.cancel()
  signal.addEventListener('abort', onAbort, { once: true })
  try {
    const zone = await zoneOf(resolver, name)
    const hosts = await resolver.resolveNs(zone)
    const addresses = (await Promise.all(hosts.map(async (host) => {
      const found = await Promise.allSettled([resolver.resolve4(host), resolver.resolve6(host)])
      return found.flatMap((r) => r.status === 'fulfilled' ? r.value : [])
    }))).flat()
    if (addresses.length === 0) throw new Error(`no address found for the name servers of ${zone} (${hosts.join(', ')})`)
    return [...new Set(addresses)].map((address) => address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`)
  } catch (err) {
    signal.throwIfAborted()
    throw new Error(`could not find the name servers of ${name}: ${errorMessage(err)} (or give options.dns01.nameservers)`, { cause: err })
  } finally {
    signal.removeEventListener('abort', onAbort)
  }
}

/** The zone of `name`: the closest enclosing name that has an SOA record. */
async function zoneOf (resolver: Resolver, name: string): Promise<string> {
  for (let candidate = name; candidate.includes('.'); candidate = candidate.slice(candidate.indexOf('.') + 1)) {
    try {
      await resolver.resolveSoa(candidate)
      return candidate
    } catch (err) {
      const code = (err as { code?: unknown }).code
      if (code !== 'ENODATA' && code !== 'ENOTFOUND') throw err
    }
  }
  throw new Error('no enclosing zone has an SOA record')
}
