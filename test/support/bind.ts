// BIND 9's named, an authoritative server for one zone that takes RFC 2136 dynamic updates
// signed with a TSIG key, for one test. Checked against Debian bookworm's 9.18:
// - `-g` keeps it in the foreground and logs everything to stderr (the config's logging
//   statement is ignored then); it logs each update (names, types, data) but never a key's secret.
// - It runs as root without `-u`. It reads the built-in trust anchors from /etc/bind/bind.keys
//   and sets up a managed-keys zone in `directory` even with validation off; harmless here.
// - When it cannot listen on the port it logs "unable to listen on any configured interfaces"
//   and exits 1: startBind() then tries another port.
// - A signed update with a wrong secret: named logs "request has invalid signature: TSIG
//   <name>: tsig verify failure (BADSIG)"; nsupdate exits 2 with "; TSIG error with server:
//   tsig indicates error" and "update failed: NOTAUTH(BADSIG)" on stderr.
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import dgram from 'node:dgram'
import { Resolver } from 'node:dns/promises'
import { rmSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { freePort } from './ports'
import { onCrash, spawnTracked, stopChild, waitUntil } from './proc'

export interface TsigKey {
  name: string                 // the key's name, as nsupdate's `key <algorithm>:<name> <secret>` gives it
  algorithm: string            // e.g. 'hmac-sha256'
  secret: string               // base64
}

export interface BindOptions {
  zone?: string                // the one zone served (default 'example.test'; a trailing dot is dropped)
  tsig?: Partial<TsigKey>      // the key allowed to update the zone; what is left out is filled in: name
  // 'autocert-test', algorithm 'hmac-sha256', secret 32 random bytes (base64), fresh per start.
  records?: string[]           // extra zone-file lines, relative to the zone ($ORIGIN), e.g. 'www 60 IN TXT "x"'.
  // Every name in the zone already answers A 127.0.0.1 (apex, ns and a wildcard), never AAAA.
}

export interface Bind {
  address: '127.0.0.1'
  port: number                 // the same port for UDP and TCP
  server: string               // '127.0.0.1:PORT', e.g. for Pebble's -dnsserver
  zone: string
  tsig: TsigKey
  txt(name: string): Promise<string[]> // the TXT values served for name now, asked over UDP ([] for none or NXDOMAIN)
  output(): string             // named's stderr so far (for failure diagnostics; holds no secret)
  stop(): Promise<void>        // SIGTERM by pid, wait for exit, remove the temp dir
}

const DEFAULT_ZONE = 'example.test'
const DEFAULT_KEY_NAME = 'autocert-test'
const DEFAULT_ALGORITHM = 'hmac-sha256'
// named logs this and exits 1 when the port was taken between freePort() and its bind.
const CANNOT_LISTEN = 'unable to listen on any configured interfaces'
const ATTEMPTS = 3

// Names and algorithms go into named.conf unquoted or quoted; keep them to what DNS allows.
const NAME = /^(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/i
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/

// A port free for TCP (freePort checks that) and for UDP on 127.0.0.1: DNS needs both.
async function freeDnsPort (): Promise<number> {
  for (;;) {
    const port = await freePort()
    const udpFree = await new Promise<boolean>(resolve => {
      const sock = dgram.createSocket('udp4')
      sock.once('error', () => { sock.close(); resolve(false) })
      sock.bind(port, '127.0.0.1', () => sock.close(() => resolve(true)))
    })
    if (udpFree) return port
  }
}

// A Resolver that asks only this server, once, without waiting long. A fresh one per
// question: c-ares may cache answers per channel, and txt() must say what is served now.
function resolver (port: number, timeout = 1000): Resolver {
  const r = new Resolver({ timeout, tries: 1 })
  r.setServers([`127.0.0.1:${port}`])
  return r
}

function zoneFile (zone: string, records: string[]): string {
  return [
    `$ORIGIN ${zone}.`,
    // TTL 1 s everywhere, and 1 s as the SOA minimum (the negative-caching TTL): a record
    // removed is gone for resolvers within a second.
    '$TTL 1',
    `@ IN SOA ns.${zone}. hostmaster.${zone}. 1 3600 600 86400 1`,
    `@ IN NS ns.${zone}.`,
    `${zone}. IN A 127.0.0.1`,
    `ns.${zone}. IN A 127.0.0.1`,
    // Any name in the zone resolves to 127.0.0.1: HTTP-01 and TLS-ALPN-01 need an A record.
    `*.${zone}. IN A 127.0.0.1`,
    ...records,
    ''
  ].join('\n')
}

function namedConf (dir: string, port: number, zone: string, key: TsigKey): string {
  const file = (name: string): string => JSON.stringify(path.join(dir, name))
  return `key "${key.name}" {
  algorithm ${key.algorithm};
  secret "${key.secret}";
};
options {
  directory ${file('')};
  listen-on port ${port} { 127.0.0.1; };
  listen-on-v6 { none; };
  pid-file none;
  session-keyfile ${file('session.key')};
  recursion no;
  dnssec-validation no;
  notify no;
};
controls { };
zone "${zone}" {
  type primary;
  file ${file('zone.db')};
  allow-update { key "${key.name}"; };
};
`
}

export async function startBind (opts: BindOptions = {}): Promise<Bind> {
  const zone = (opts.zone ?? DEFAULT_ZONE).replace(/\.$/, '').toLowerCase()
  if (!NAME.test(zone)) throw new Error(`startBind: not a zone name: ${JSON.stringify(zone)}`)
  const tsig: TsigKey = {
    name: opts.tsig?.name ?? DEFAULT_KEY_NAME,
    algorithm: opts.tsig?.algorithm ?? DEFAULT_ALGORITHM,
    secret: opts.tsig?.secret ?? randomBytes(32).toString('base64')
  }
  if (!NAME.test(tsig.name)) throw new Error(`startBind: not a key name: ${JSON.stringify(tsig.name)}`)
  if (!/^[a-z0-9-]+$/i.test(tsig.algorithm)) throw new Error(`startBind: not an algorithm: ${JSON.stringify(tsig.algorithm)}`)
  // Checked here, never shown: named would quote a bad secret in its parse error.
  if (!BASE64.test(tsig.secret)) throw new Error('startBind: the TSIG secret is not base64')

  const dir = await mkdtemp(path.join(os.tmpdir(), 'bind-'))
  const forget = onCrash(() => rmSync(dir, { recursive: true, force: true }))
  const confFile = path.join(dir, 'named.conf')
  let named: ChildProcess | undefined
  let log = ''
  const stop = async (): Promise<void> => {
    if (named !== undefined) await stopChild(named)
    await rm(dir, { recursive: true, force: true })
    forget()
  }

  try {
    await writeFile(path.join(dir, 'zone.db'), zoneFile(zone, opts.records ?? []))
    for (let attempt = 1; ; attempt++) {
      const port = await freeDnsPort()
      await writeFile(confFile, namedConf(dir, port, zone, tsig), { mode: 0o600 })
      log = ''
      // -g: foreground, log to stderr. -4: IPv4 only. -c: our config, not /etc/bind's.
      const child = spawnTracked('named', ['-g', '-4', '-c', confFile], { cwd: dir })
      named = child
      child.stdout?.on('data', (d: Buffer) => { log += d.toString() })
      child.stderr?.on('data', (d: Buffer) => { log += d.toString() })
      try {
        // Ready once it answers the zone's SOA over UDP, as a resolver would ask.
        await waitUntil('named', async () => (await resolver(port, 250).resolveSoa(zone)).nsname === `ns.${zone}`,
          child, () => log)
      } catch (err) {
        await stopChild(child)
        if (attempt < ATTEMPTS && log.includes(CANNOT_LISTEN)) continue
        throw err
      }
      return {
        address: '127.0.0.1',
        port,
        server: `127.0.0.1:${port}`,
        zone,
        tsig,
        txt: async name => {
          try {
            return (await resolver(port).resolveTxt(name)).map(chunks => chunks.join(''))
          } catch (err) {
            const code = (err as NodeJS.ErrnoException).code
            if (code === 'ENOTFOUND' || code === 'ENODATA') return []
            throw err
          }
        },
        output: () => log,
        stop
      }
    }
  } catch (err) {
    await stop()
    throw err
  }
}
