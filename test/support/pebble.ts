// Pebble, Let's Encrypt's test CA, and pebble-challtestsrv as its DNS (or a DNS server
// given, such as startBind()'s), for one test.
// Two versions, checked here against their logs and sources:
// - 2.4.0 (Debian stable, on PATH): no ARI, no profiles; certificateValidityPeriod sets
//   the lifetime (default 5 years); challtestsrv's DNS flag is -dns01; no User-Agent needed.
// - 2.10.0 (Debian sid, unpacked by get-pebble.sh): the directory has renewalInfo
//   (default window notAfter - lifetime/3 +/- 24 h, held within the lifetime; Retry-After
//   21600, also for a window set through set-renewal-info/), meta.profiles, orders may
//   name a profile or `replaces`; the lifetime comes from the profile (default 90 days,
//   certificateValidityPeriod ignored), and so does the CN (Pebble's own default profile
//   leaves it out); challtestsrv takes -dnsserver and serves DoH on :8443 unless -doh "";
//   every ACME request (and set-renewal-info/) without a User-Agent gets 400 malformed;
//   a stray command-line argument is refused.
import { execFile } from 'node:child_process'
import { accessSync, constants, rmSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import * as acme from 'acme-client'
import { freePort } from './ports'
import { canConnect, onCrash, spawnTracked, stopChild, waitUntil } from './proc'

/**
 * '2.4': `pebble` and `pebble-challtestsrv` on PATH (Debian stable's package, 2.4.0:
 * no ARI, no profiles). '2.10': the binaries of Debian sid's package that
 * `npm run pebble:2.10` (test/support/get-pebble.sh, run by `pretest`) unpacks
 * under node_modules/.cache/fastify-autocert/pebble-2.10/ (or $PEBBLE_2_10_DIR).
 */
export type PebbleVersion = '2.4' | '2.10'

export interface PebbleProfile {
  validityPeriod: number       // certificate lifetime in seconds
  description?: string         // shown in the directory's meta.profiles
  promoteCommonName?: boolean  // put the first name in the subject's CN, as 2.4 always does and Let's Encrypt's
  // "classic" profile does (default here: true). false: an empty subject, names in the SAN only, as Let's
  // Encrypt's "tlsserver" and "shortlived" profiles (and Pebble 2.10's own default) issue.
}

export interface PebbleOptions {
  httpPort: number             // port Pebble's VA sends HTTP-01 validation requests to (on 127.0.0.1)
  tlsPort?: number             // TLS-ALPN-01 port (default: a free port)
  validityPeriod?: number      // certificate lifetime in seconds (default Pebble's: 5 years on 2.4, 90 days on 2.10).
  // 2.4: certificateValidityPeriod; 2.10 ignores that and takes it from a profile: the one profile "default".
  // Not together with `profiles`.
  profiles?: Record<string, PebbleProfile> // 2.10 only (an error on 2.4): the CA's profiles, listed in the
  // directory's meta.profiles. An order may name one; one that names none gets one at random (Pebble's
  // choice), so with several profiles the lifetimes of such orders vary; with one, every order gets it.
  version?: PebbleVersion      // default: $PEBBLE_VERSION if set, else '2.10'
  dnsServer?: string           // 'host:port' of the DNS server Pebble's VA asks (-dnsserver), e.g. a startBind()'s
  // `server`: pebble-challtestsrv is then not started. Default: a challtestsrv that answers every A query with
  // 127.0.0.1 and serves no TXT record, so only HTTP-01 and TLS-ALPN-01 can be validated.
  env?: Record<string, string> // extra env, e.g. PEBBLE_WFE_NONCEREJECT. Authorization reuse is off by default
  // (PEBBLE_AUTHZREUSE=0): every order is validated, so tests see real HTTP-01 traffic.
}

export interface AriWindow {
  start: Date | string
  end: Date | string
}

export interface Pebble {
  version: PebbleVersion
  directoryUrl: string         // https://127.0.0.1:PORT/dir
  managementUrl: string        // https://127.0.0.1:MGMT
  renewalInfoUrl?: string      // the directory's renewalInfo (2.10; 2.4 has no ARI)
  caCert: string               // PEM of the self-signed cert of Pebble's own HTTPS listener
  caFile: string               // file holding caCert (for NODE_EXTRA_CA_CERTS in child processes); deleted by stop()
  root(): Promise<string>      // PEM of the current issuing root (changes at every start)
  orderCount(): number         // new-order requests Pebble accepted so far
  replacementCount(): number   // of those, orders that named a certificate they replace (ARI `replaces`; 2.10)
  // What GET {renewalInfo}/{certID} answers for this leaf from now on (2.10; Pebble's
  // management API), instead of its default window (notAfter - lifetime/3, +/- 24 h,
  // within the certificate's lifetime).
  setRenewalInfo(leafPem: string, window: AriWindow, explanationURL?: string): Promise<void>
  output(): string             // Pebble's stdout+stderr so far (for failure diagnostics)
  stop(): Promise<void>
}

// Pebble 2.4.0 logs exactly one line per accepted newOrder, from wfe.NewOrder
// after the order is stored: `Pebble <date> <time> Added order "<id>" to the db`.
// Reused/fetched orders and finalization do not log it, rejected ones never reach it.
// Pebble 2.10.0 logs the same line at the same place (followed by `There are now N
// orders in the db`): one per new order, checked in its log and source.
const NEW_ORDER_LINE = /Added order "[^"]+" to the db/g
// Pebble 2.10.0, wfe.validateReplacementOrder, for a newOrder whose `replaces` names a
// certificate of the same account that shares an identifier and was not replaced yet:
// `ARI: order "<new order id>" is a replacement of "<replaced order id>"` (before the
// order is stored; 2.4 knows no `replaces`).
const REPLACEMENT_LINE = /ARI: order "[^"]+" is a replacement of "[^"]+"/g

// Pebble 2.10 answers 400 malformed to any request to its ACME API without a
// User-Agent (RFC 8555 6.1), and so does its management API's set-renewal-info/
// (/roots/0 does not check it). 2.4 does not care. We send one everywhere.
const USER_AGENT = 'fastify-autocert-tests'

const ROOT_DIR = path.resolve(__dirname, '..', '..')

/** Where the Pebble 2.10 binaries are (or must be put): the package's cache, or $PEBBLE_2_10_DIR. */
export function pebble210Dir (): string {
  return process.env.PEBBLE_2_10_DIR || path.join(ROOT_DIR, 'node_modules', '.cache', 'fastify-autocert', 'pebble-2.10')
}

function defaultVersion (): PebbleVersion {
  const env = process.env.PEBBLE_VERSION
  if (env === undefined || env === '') return '2.10'
  if (env === '2.4' || env === '2.10') return env
  throw new Error(`PEBBLE_VERSION=${env}: expected 2.4 or 2.10`)
}

// The two commands for a version: on PATH for 2.4, from the cache for 2.10 (never skipped:
// a missing 2.10 is an error that says how to get it).
function commands (version: PebbleVersion): { pebble: string, challtestsrv: string } {
  if (version === '2.4') return { pebble: 'pebble', challtestsrv: 'pebble-challtestsrv' }
  const bin = path.join(pebble210Dir(), 'usr', 'bin')
  const found = { pebble: path.join(bin, 'pebble'), challtestsrv: path.join(bin, 'pebble-challtestsrv') }
  for (const file of Object.values(found)) {
    try {
      accessSync(file, constants.X_OK)
    } catch {
      throw new Error(`Pebble 2.10 is not installed: ${file} is missing. Run \`npm run pebble:2.10\` ` +
        '(test/support/get-pebble.sh: it unpacks Debian sid\'s pebble package there), ' +
        'or set PEBBLE_VERSION=2.4 to use the pebble on PATH')
    }
  }
  return found
}

// Pebble's `profiles` config (2.10) for the options: the profiles given, or one "default"
// profile with `validityPeriod`, or one "default" profile with Pebble's own lifetime (90
// days: a validityPeriod of 0 means Pebble's default). Each promotes the CN unless told not
// to: Pebble 2.10's built-in default profile does not, and the tests read the served CN.
interface ProfileConfig { description: string, validityPeriod: number, promoteCommonName: boolean }
function profilesConfig (opts: PebbleOptions): Record<string, ProfileConfig> {
  const profile = (p: PebbleProfile, description: string): ProfileConfig =>
    ({ description: p.description ?? description, validityPeriod: p.validityPeriod, promoteCommonName: p.promoteCommonName ?? true })
  if (opts.profiles !== undefined) {
    if (opts.validityPeriod !== undefined) throw new Error('startPebble: give validityPeriod or profiles, not both')
    const entries = Object.entries(opts.profiles)
    if (entries.length === 0) throw new Error('startPebble: profiles is empty')
    return Object.fromEntries(entries.map(([name, p]) => [name, profile(p, `certificates valid ${p.validityPeriod} s`)]))
  }
  if (opts.validityPeriod !== undefined) {
    return { default: profile({ validityPeriod: opts.validityPeriod }, `certificates valid ${opts.validityPeriod} s`) }
  }
  return { default: profile({ validityPeriod: 0 }, 'certificates valid 90 days (Pebble\'s default)') }
}

interface Answer { status: number, body: string }

// A request over HTTPS trusting only Pebble's listener cert, with a User-Agent.
function request (url: string, ca: string, method = 'GET', body?: string): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT }
    if (body !== undefined) headers['content-type'] = 'application/json'
    const req = https.request(url, { ca, method, headers }, res => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { text += d })
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }))
    })
    req.on('error', reject)
    req.end(body)
  })
}

// GET: any status but 200 is an error.
async function get (url: string, ca: string): Promise<string> {
  const res = await request(url, ca)
  if (res.status !== 200) throw new Error(`GET ${url}: ${res.status} ${res.body}`)
  return res.body
}

export async function startPebble (opts: PebbleOptions): Promise<Pebble> {
  const version = opts.version ?? defaultVersion()
  // Before anything is made: a missing 2.10 or an option 2.4 lacks fails at once.
  const cmd = commands(version)
  if (version === '2.4' && opts.profiles !== undefined) throw new Error('startPebble: profiles need Pebble 2.10 (2.4 has none)')
  const profiles = version === '2.10' ? profilesConfig(opts) : undefined

  const dir = await mkdtemp(path.join(os.tmpdir(), 'pebble-'))
  const forget = onCrash(() => rmSync(dir, { recursive: true, force: true }))
  const certFile = path.join(dir, 'cert.pem')
  const keyFile = path.join(dir, 'key.pem')
  // Pebble ships no listener cert; a fresh one per run keeps the trust scoped to this test.
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '7', '-subj', '/CN=localhost',
    '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'
  ])
  const caCert = await readFile(certFile, 'utf8')

  const [port, mgmtPort, dnsPort, challMgmtPort, tlsPort] = await Promise.all([
    freePort(), freePort(), freePort(), freePort(), opts.tlsPort ?? freePort()
  ])
  const configFile = path.join(dir, 'pebble.json')
  await writeFile(configFile, JSON.stringify({
    pebble: {
      listenAddress: `127.0.0.1:${port}`,
      managementListenAddress: `127.0.0.1:${mgmtPort}`,
      certificate: certFile,
      privateKey: keyFile,
      httpPort: opts.httpPort,
      tlsPort,
      ocspResponderURL: '',
      externalAccountBindingRequired: false,
      // 2.4 takes the lifetime from certificateValidityPeriod; 2.10 ignores it (deprecated)
      // and takes it from the order's profile.
      ...(version === '2.4' && opts.validityPeriod !== undefined ? { certificateValidityPeriod: opts.validityPeriod } : {}),
      ...(profiles !== undefined ? { profiles } : {})
    }
  }))

  // Unless given a dnsServer, challtestsrv only as a DNS server: every A query answers
  // 127.0.0.1 (set explicitly rather than trusting the default), no AAAA so the VA never
  // tries ::1. Its DNS flag is -dns01 on 2.4 and -dnsserver on 2.10, which also serves
  // DNS over HTTPS on :8443 unless told -doh "".
  const dnsServer = opts.dnsServer ?? `127.0.0.1:${dnsPort}`
  const dnsFlags = version === '2.4'
    ? ['-dns01', `127.0.0.1:${dnsPort}`]
    : ['-dnsserver', `127.0.0.1:${dnsPort}`, '-doh', '']
  const chall = opts.dnsServer !== undefined
    ? undefined
    : spawnTracked(cmd.challtestsrv, [
      ...dnsFlags, '-http01', '', '-https01', '', '-tlsalpn01', '',
      '-management', `127.0.0.1:${challMgmtPort}`, '-defaultIPv4', '127.0.0.1', '-defaultIPv6', ''
    ], {})
  let challLog = ''
  chall?.stdout?.on('data', (d: Buffer) => { challLog += d.toString() })
  chall?.stderr?.on('data', (d: Buffer) => { challLog += d.toString() })

  // -strict=true: Go's flag package read the `-strict false` this used to pass as `-strict`
  // plus a stray argument, which 2.4 ignored and 2.10 refuses; so the suite has always run
  // in strict mode (challenge POSTs must be `{}`, no ACME v1 `resource` field), and still does.
  const pebble = spawnTracked(cmd.pebble, ['-config', configFile, '-dnsserver', dnsServer, '-strict=true'], {
    cwd: dir,
    env: { ...process.env, PEBBLE_VA_NOSLEEP: '1', PEBBLE_AUTHZREUSE: '0', ...opts.env }
  })
  let log = ''
  pebble.stdout?.on('data', (d: Buffer) => { log += d.toString() })
  pebble.stderr?.on('data', (d: Buffer) => { log += d.toString() })

  const directoryUrl = `https://127.0.0.1:${port}/dir`
  const managementUrl = `https://127.0.0.1:${mgmtPort}`
  const stop = async (): Promise<void> => {
    await Promise.all([stopChild(pebble), ...(chall !== undefined ? [stopChild(chall)] : [])])
    await rm(dir, { recursive: true, force: true })
    forget()
  }
  let directory: { renewalInfo?: string } = {}
  try {
    // challtestsrv has no readiness probe we can cheaply use over UDP; its
    // management port opens after the DNS listener, so poll that one.
    if (chall !== undefined) await waitUntil(`pebble-challtestsrv ${version}`, () => canConnect(challMgmtPort), chall, () => challLog)
    await waitUntil(`pebble ${version}`, async () => { directory = JSON.parse(await get(directoryUrl, caCert)); return true }, pebble, () => log)
  } catch (err) {
    await stop()
    throw err
  }

  const setRenewalInfo = async (leafPem: string, window: AriWindow, explanationURL?: string): Promise<void> => {
    if (version === '2.4') throw new Error('setRenewalInfo: Pebble 2.4 has no ARI')
    const iso = (d: Date | string): string => typeof d === 'string' ? d : d.toISOString()
    const ariResponse = JSON.stringify({
      suggestedWindow: { start: iso(window.start), end: iso(window.end) },
      ...(explanationURL !== undefined ? { explanationURL } : {})
    })
    const url = `${managementUrl}/set-renewal-info/`
    // Pebble 2.10 answers 200 with no body once stored; 400 for a body or PEM it cannot
    // read, 404 for a certificate it did not issue.
    const res = await request(url, caCert, 'POST', JSON.stringify({ certificate: leafPem, ariResponse }))
    if (res.status !== 200) throw new Error(`POST ${url}: ${res.status} ${res.body}`)
  }

  return {
    version,
    directoryUrl,
    managementUrl,
    ...(directory.renewalInfo !== undefined ? { renewalInfoUrl: directory.renewalInfo } : {}),
    caCert,
    caFile: certFile,
    root: () => get(`${managementUrl}/roots/0`, caCert),
    orderCount: () => log.match(NEW_ORDER_LINE)?.length ?? 0,
    replacementCount: () => log.match(REPLACEMENT_LINE)?.length ?? 0,
    setRenewalInfo,
    output: () => log,
    stop
  }
}

// acme-client 5.4.0 sends every request through its own axios instance, exported
// as `acme.axios` (src/axios.js: `axios.create()`, adapter 'http'). It retries
// network/TLS errors 5 times with 5,10,15,20,25 s waits, so an untrusted listener
// looks like a 75 s hang: give that instance an agent that trusts Pebble too.
// keepAlive: a fresh TLS handshake per ACME request roughly doubled issuance time
// (~0.9 s -> ~0.4 s); idle sockets are unref'd by Node, so they hold no test open.
export function trustPebble (p: Pebble): void {
  trustListeners(p.caCert)
}

const trusted = new Set<string>()

/** Adds listener certificates (PEM) to those acme-client trusts in this process: a second CA does not untrust the first. */
export function trustListeners (...certificates: string[]): void {
  for (const pem of certificates) trusted.add(pem)
  acme.axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ca: [...tls.rootCertificates, ...trusted] })
}

/**
 * An acme-client Client with a new account key for `pebble`, for tests of the
 * CA itself. acme-client polls challenge and order status after 5 s, 10 s...:
 * ms here keeps an issuance under a second. With min 20 / max 200 its 10
 * default attempts give up after about 1.3 s of polling, too tight on a loaded
 * 2-core box: it gets more attempts.
 */
export async function fastClient (pebble: Pick<Pebble, 'directoryUrl'>): Promise<acme.Client> {
  return new acme.Client({
    directoryUrl: pebble.directoryUrl,
    accountKey: await acme.crypto.createPrivateEcdsaKey(),
    backoffAttempts: 30,
    backoffMin: 20,
    backoffMax: 200
  })
}
