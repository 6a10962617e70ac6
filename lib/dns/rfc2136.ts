// A DNS-01 provider for RFC 2136 dynamic updates signed with TSIG (RFC 8945), through BIND's nsupdate.
import { spawn } from 'node:child_process'
import { isIP } from 'node:net'
import type { DnsProvider, DnsRecord } from '../acme/dns-01'
import { FST_AUTOCERT_INVALID_OPTION } from '../errors'
import { normalizeName } from '../names'

/** The TSIG algorithms nsupdate signs with (RFC 8945; hmac-sha256 is what `tsig-keygen` makes by default). */
export type TsigAlgorithm = 'hmac-sha256' | 'hmac-sha384' | 'hmac-sha512' | 'hmac-sha224' | 'hmac-sha1' | 'hmac-md5'

export interface Rfc2136Options {
  /** The primary server that takes updates: `'host'` or `'host:port'` (IPv6 as `'[address]:port'`). Port default: 53. */
  server: string
  /** The zone to update, e.g. `'example.com'`. Default: the one nsupdate finds by asking `server` for the record's SOA. */
  zone?: string
  /** The TSIG key the server allows updates with (`tsig-keygen <name>` prints one): its name, algorithm and base64 secret. */
  key: { name: string, algorithm: TsigAlgorithm, secret: string }
  /** TTL of the TXT records, in seconds. Default: 60. */
  ttl?: number
  /** The nsupdate command. Default: `'nsupdate'` on PATH (Debian and Ubuntu: `bind9-dnsutils`; Alpine: `bind-tools`; Fedora: `bind-utils`). */
  command?: string
}

const ALGORITHMS: readonly TsigAlgorithm[] = ['hmac-sha256', 'hmac-sha384', 'hmac-sha512', 'hmac-sha224', 'hmac-sha1', 'hmac-md5']
const OUTPUT_LIMIT = 4096

/**
 * A DNS provider that adds and removes TXT records with RFC 2136 dynamic
 * updates signed with a TSIG key: the standard BIND, Knot, PowerDNS and
 * Windows DNS accept. It runs BIND's `nsupdate` (one process per change) and
 * gives it the key on its standard input, never on its command line. The
 * options are checked here, with FST_AUTOCERT_INVALID_OPTION.
 */
export function rfc2136 (options: Rfc2136Options): DnsProvider {
  const { server, zone, key, ttl = 60, command = 'nsupdate' } = checked(options)
  const [host, port] = splitServer(server)
  const head = [
    `server ${host}${port === undefined ? '' : ` ${port}`}`,
    ...(zone === undefined ? [] : [`zone ${zone}`]),
    `key ${key.algorithm}:${key.name} ${key.secret}`
  ]
  const run = (record: DnsRecord, change: string, signal: AbortSignal): Promise<void> => {
    // Both come from the plugin, but the contract is public: nothing but a record name and a base64url value reach the script.
    if (!/^[a-z0-9_][a-z0-9_.-]*$/i.test(record.name) || !/^[A-Za-z0-9_-]+$/.test(record.value)) {
      return Promise.reject(new Error(`not a DNS-01 record: ${JSON.stringify(record.name)}`))
    }
    const script = [...head, `update ${change} ${record.name}. ${change === 'add' ? `${ttl} ` : ''}IN TXT "${record.value}"`, 'send', ''].join('\n')
    return nsupdate(command, script, key.secret, signal)
  }
  return {
    set: async (record, signal) => { await run(record, 'add', signal) },
    remove: async (record, signal) => { await run(record, 'delete', signal) }
  }
}

/** Runs nsupdate with `script` on its standard input; rejects with what it printed (the secret blanked out) when it fails. */
function nsupdate (command: string, script: string, secret: string, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [], { stdio: ['pipe', 'pipe', 'pipe'], signal })
    let output = ''
    const collect = (data: Buffer): void => { if (output.length < OUTPUT_LIMIT) output += data.toString('utf8') }
    child.stdout.on('data', collect)
    child.stderr.on('data', collect)
    child.on('error', (err: NodeJS.ErrnoException) => {
      reject(err.code === 'ENOENT'
        ? new Error(`${command} was not found: install BIND's nsupdate (Debian and Ubuntu: bind9-dnsutils; Alpine: bind-tools; Fedora: bind-utils) or give rfc2136({ command })`)
        : err)
    })
    child.on('close', (code, killed) => {
      if (code === 0) {
        resolve()
        return
      }
      const said = output.split(secret).join('[secret]').trim().split('\n').slice(0, 5).join('; ')
      reject(new Error(`nsupdate ${code === null ? `was ended by ${String(killed)}` : `exited with ${code}`}${said === '' ? '' : `: ${said}`}`))
    })
    // A child that exits before reading its input closes the pipe: its exit code says why.
    child.stdin.on('error', () => {})
    child.stdin.end(script)
  })
}

function checked (options: Rfc2136Options): Rfc2136Options {
  const invalid = (name: string, rule: string): TypeError => new FST_AUTOCERT_INVALID_OPTION(`dns01.provider: rfc2136 ${name}`, rule)
  const { server, zone, key, ttl, command } = options ?? {}
  if (typeof server !== 'string' || splitServer(server).length === 0) throw invalid('server', 'must be a host name or IP address, with an optional port: \'ns1.example.com\', \'192.0.2.53:53\', \'[2001:db8::53]:53\'')
  if (zone !== undefined && (typeof zone !== 'string' || normalizeName(zone) === undefined)) throw invalid('zone', 'must be a DNS name such as \'example.com\'')
  if (typeof key?.name !== 'string' || !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$/.test(key.name)) throw invalid('key.name', 'must be the TSIG key\'s name, as in the server\'s `key "<name>" { ... }`')
  if (!ALGORITHMS.includes(key.algorithm)) throw invalid('key.algorithm', `must be one of ${ALGORITHMS.join(', ')}`)
  if (typeof key.secret !== 'string' || !/^[A-Za-z0-9+/]+={0,2}$/.test(key.secret)) throw invalid('key.secret', 'must be the key\'s base64 secret, as `tsig-keygen` prints it')
  if (ttl !== undefined && !(Number.isInteger(ttl) && ttl > 0 && ttl <= 86_400)) throw invalid('ttl', 'must be a whole number of seconds from 1 to 86400')
  if (command !== undefined && (typeof command !== 'string' || command === '')) throw invalid('command', 'must be the path of nsupdate')
  return { server, key, ...(zone === undefined ? {} : { zone: normalizeName(zone) }), ...(ttl === undefined ? {} : { ttl }), ...(command === undefined ? {} : { command }) }
}

/** `[host, port?]` of a server option, or [] when it is not one. */
function splitServer (server: string): [string, string?] | [] {
  const v6 = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(server)
  if (v6 !== null) return isIP(v6[1]) === 6 ? (v6[2] === undefined ? [v6[1]] : [v6[1], v6[2]]) : []
  const match = /^([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::(\d{1,5}))?$/.exec(server)
  if (match === null) return []
  return match[2] === undefined ? [match[1]] : [match[1], match[2]]
}
