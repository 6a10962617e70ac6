// `fastify-autocert doctor`: the fleet's set-up checked end to end, one line per check and what to do when it fails.
import { randomBytes } from 'node:crypto'
import { stat } from 'node:fs/promises'
import * as acme from 'acme-client'
import { retrying, retryingRequest } from '../acme/retry'
import { errorMessage } from '../events'
import { CLOCK_TOLERANCE } from '../fleet/budget'
import { directoryUrl } from '../options'
import { containerClientOf, storeError } from '../store/azure-blob'
import { isSealed } from '../store/encrypted'
import { storeKeys, storeLimits } from '../store/keys'
import { isCorrupt, readBounded, type CertStore } from '../store/store'
import { untilAborted } from '../signals'
import { CA_FLAGS, CA_HELP, caDirectories, CliError, EXIT, STORE_FLAGS, STORE_HELP, describeError, type Command, type CommandContext, type OpenedStore, type Output, type StoreSettings, type Values } from './context'

/** A check's outcome: passed, failed (exit code 1), passed with a caveat, or not run because an earlier check failed. */
export type CheckStatus = 'ok' | 'fail' | 'warn' | 'skip'

/** One line of the report (`--json` prints the array of them). */
export interface Finding {
  check: string
  status: CheckStatus
  /** What was found; never a secret. */
  detail: string
  /** What to do about it (failures and warnings). */
  fix?: string
}

/** Deadline of each network request doctor makes itself (store endpoint, CA), in milliseconds. */
const REQUEST_TIMEOUT = 15_000
/** A clock this far off the CA's (ms) is worth a warning; past CLOCK_TOLERANCE (5 min) the plugin refuses to order, and doctor fails. */
const CLOCK_WARNING = 30_000
/** Values read at a time when checking that they open. */
const READ_CONCURRENCY = 8
/** The largest value of any kind the plugin writes (storeLimits): a larger one cannot be its own. */
const LARGEST_VALUE = Math.max(...Object.values(storeLimits))

/** The probe's key starts with this: no key the plugin writes does (keys.ts), so it is never taken for the fleet's. */
const PROBE_PREFIX = 'doctor-probe+'
/** The permissions the probe exercises, in the order they are tried, with what grants each. */
const PERMISSIONS = ['create', 'read', 'write', 'lease', 'list', 'delete'] as const
type Permission = typeof PERMISSIONS[number]
const SAS_LETTER: Record<Permission, string> = { create: 'c', read: 'r', write: 'w', lease: 'w', list: 'l', delete: 'd' }
/** What to do about a refused permission, by kind of store (`%p`: the permission, `%l`: its SAS letter). */
const PERMISSION_FIX = {
  azure: 'give the credential the %p permission (SAS: "%l"; role: Storage Blob Data Contributor)',
  file: 'make the directory and its files writable by the user the fleet runs as'
} as const

/** The findings, in the order the checks ran. */
class Report {
  readonly findings: Finding[] = []

  add (check: string, status: CheckStatus, detail: string, fix?: string): boolean {
    this.findings.push({ check, status, detail, ...(fix === undefined ? {} : { fix }) })
    return status === 'ok' || status === 'warn'
  }

  get failed (): boolean {
    return this.findings.some((f) => f.status === 'fail')
  }
}

/** What the store checks found that later checks need. */
interface StoreState {
  /** Whether the store could be read and listed (the encryption and account checks need both). */
  readable: boolean
  /** Why not, when not: the detail of a skipped check. */
  unreadable?: string
}

export const doctor: Command = {
  name: 'doctor',
  summary: 'check the store, its credential and permissions, the encryption key, the CA, the account and the clock',
  usage: 'doctor [--json] [store and CA options]',
  help: `Checks, in order, one line each (ok, FAIL, warn, or skip when an earlier check failed):
  store reachable     the endpoint answers (DNS, TCP, HTTP); for --dir, the directory exists with mode 0700
  credential          the store accepts the credential (Azure's reason when it does not)
  permission ...      create, read, write, lease, list and delete, tried on a probe blob
                      doctor-probe+<random> that is removed afterwards
  container private   no anonymous (public) access to the container
  encryption          every stored value opens with the configured key (or none is sealed without one)
  CA directory        the directory answers; its terms of service
  account             the store's account key (acme_account+key) is registered at the CA
  clock               this machine's clock against the CA's Date header

${STORE_HELP}

${CA_HELP}
doctor's CA is production unless named; of a fallback list, the first. --email is not used: the account is looked up,
never created. Nothing is created either: a container or directory that does not exist is a warning, and the
checks that need it are skipped.

Exit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 doctor could not run.`,
  options: { ...STORE_FLAGS, ...CA_FLAGS },
  positionals: { min: 0, max: 0 },
  run: diagnose
}

async function diagnose ({ values, io, out, store }: CommandContext): Promise<number> {
  const directory = caDirectory(values, io.env)
  const opened = store()
  const report = new Report()
  const probe = `${PROBE_PREFIX}${randomBytes(6).toString('hex')}`
  const state = opened.settings.kind === 'file'
    ? await checkDirectory(opened, opened.settings.dir, report, probe)
    : await checkAzure(opened, opened.settings, report, probe)
  const account = await checkEncryption(opened, state, report)
  const ca = await checkDirectoryUrl(directory, report)
  await checkAccount(directory, account, ca, report)
  checkClock(ca, report)
  print(out, opened.describe, directory, report.findings)
  return report.failed ? EXIT.attention : EXIT.ok
}

/**
 * The CA's directory URL: the first of the flag's (or ACME_DIRECTORY_URL's)
 * list, the CA the fleet orders from, else Let's Encrypt's production; resolved
 * as the plugin resolves it.
 */
function caDirectory (values: Values, env: NodeJS.ProcessEnv): string {
  const given = caDirectories(values, env)?.[0]
  try {
    return directoryUrl(given)
  } catch {
    throw new CliError(`--directory-url (ACME_DIRECTORY_URL) must be production, staging or an https:// ACME directory URL; got ${JSON.stringify(given)}`)
  }
}

function print (out: Output, store: string, directory: string, findings: readonly Finding[]): void {
  if (out.json) {
    out.writeJson(findings)
    return
  }
  const style = { ok: 'green', fail: 'red', warn: 'yellow', skip: 'dim' } as const
  const width = Math.max(...findings.map((f) => f.check.length))
  out.line(`store: ${store}`)
  out.line(`CA:    ${directory}`)
  for (const f of findings) {
    const status = out.paint(style[f.status], (f.status === 'fail' ? 'FAIL' : f.status).padEnd(4))
    out.line(`${status}  ${f.check.padEnd(width)}  ${f.detail}${f.fix === undefined ? '' : `; ${out.paint('bold', 'fix')}: ${f.fix}`}`)
  }
  const failed = findings.filter((f) => f.status === 'fail').length
  const warned = findings.filter((f) => f.status === 'warn').length
  out.line(failed === 0 ? `all checks passed${warned === 0 ? '' : ` (${warned} ${warned === 1 ? 'warning' : 'warnings'})`}` : `${failed} ${failed === 1 ? 'check' : 'checks'} failed`)
}

// ---- the store ----

/** Blob Storage: the endpoint, the credential, the permissions, public access. */
async function checkAzure (opened: OpenedStore, settings: Extract<StoreSettings, { kind: 'azure' }>, report: Report, probe: string): Promise<StoreState> {
  const client = containerClientOf(settings.options)
  // The origin only: the client's URL may carry a SAS token.
  const origin = new URL(client.url).origin
  try {
    const answer = await fetch(`${origin}/`, { signal: AbortSignal.timeout(REQUEST_TIMEOUT) })
    await answer.body?.cancel()
    report.add('store reachable', 'ok', `${origin} answered (HTTP ${answer.status})`)
  } catch (err) {
    report.add('store reachable', 'fail', `${origin} did not answer: ${networkReason(err)}`,
      'check the endpoint (BlobEndpoint or AccountName of the connection string, or the container URL), DNS and firewall rules')
    return skipStore(report, 'the store is not reachable', { credential: true, container: true })
  }

  try {
    await client.getProperties({ abortSignal: AbortSignal.timeout(REQUEST_TIMEOUT) })
    report.add('credential', 'ok', `accepted; container ${settings.container} exists`)
  } catch (raw) {
    const err = storeError(raw)
    const auth = authFailure(err)
    if (statusOf(err) === 404) {
      report.add('credential', 'warn', `accepted; container ${settings.container} does not exist`,
        'check --container (AZURE_STORAGE_CONTAINER); the plugin creates it at its first start, given an account-level credential; with a container SAS, create it first')
      return skipStore(report, `container ${settings.container} does not exist, and doctor creates nothing`, { credential: false, container: true })
    } else if (auth !== undefined && /PermissionMismatch$/.test(auth.code)) {
      // A container SAS or a blob-level role cannot read the container's properties: it authenticated all the same.
      report.add('credential', 'ok', `accepted (it may not read the container's properties: ${auth.code})`)
    } else {
      report.add('credential', 'fail', storeReason(err),
        'check the account key in AZURE_STORAGE_CONNECTION_STRING (or the SAS token: its expiry, its signature), or the role assignment of the identity')
      return skipStore(report, 'the credential was refused', { credential: false, container: true })
    }
  }

  const state = await checkPermissions(opened.store, report, probe, 'azure')

  try {
    const { blobPublicAccess } = await client.getAccessPolicy({ abortSignal: AbortSignal.timeout(REQUEST_TIMEOUT) })
    if (blobPublicAccess === undefined) {
      report.add('container private', 'ok', 'no anonymous access')
    } else {
      report.add('container private', 'fail', `anonymous ${blobPublicAccess} access is on: the stored blobs, private keys included, can be read without a credential`,
        `turn it off: az storage container set-permission --name ${settings.container} --public-access off (or the container's "Change access level" in the portal)`)
    }
  } catch (raw) {
    const err = storeError(raw)
    if (statusOf(err) === 403) {
      report.add('container private', 'warn', 'this credential may not read the container\'s access policy (a SAS cannot)',
        'check with an account key or in the portal that the container\'s access level is private')
    /* c8 ignore start: the container answered the probe's requests just before; not reproducible on demand */
    } else {
      report.add('container private', 'fail', `could not read the access policy: ${storeReason(err)}`, 'run doctor again; if it persists, check the storage account')
    }
    /* c8 ignore stop */
  }
  return state
}

/** A FileStore: the directory (exists, owner only), then the permissions through the store. */
async function checkDirectory (opened: OpenedStore, dir: string, report: Report, probe: string): Promise<StoreState> {
  let mode: number | undefined
  try {
    const found = await stat(dir)
    if (!found.isDirectory()) {
      report.add('store reachable', 'fail', `${dir} is not a directory`, 'point --dir at the FileStore\'s directory')
      return skipStore(report, 'the directory is not usable', { credential: false, container: false })
    }
    mode = found.mode & 0o777
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
      report.add('store reachable', 'fail', `${dir}: ${errorMessage(err)}`, 'check the path and this user\'s access to it')
      return skipStore(report, 'the directory is not usable', { credential: false, container: false })
    }
    report.add('store reachable', 'warn', `${dir} does not exist`,
      'check that --dir is the directory the fleet uses; the store creates it (mode 0700) at its first write')
    return skipStore(report, `${dir} does not exist, and doctor creates nothing`, { credential: false, container: false })
  }
  if (mode !== undefined && (mode & 0o077) !== 0) {
    report.add('store reachable', 'fail', `${dir} has mode 0${mode.toString(8)}: other users may read the private keys in it`, `chmod 700 ${dir}`)
  } else if (mode !== undefined) {
    report.add('store reachable', 'ok', `${dir} is a directory with mode 0700`)
  }
  return await checkPermissions(opened.store, report, probe, 'file')
}

/** The checks after a failed connection or credential, reported as skipped: `credential` and `container` too when asked. */
function skipStore (report: Report, why: string, { credential, container }: { credential: boolean, container: boolean }): StoreState {
  if (credential) report.add('credential', 'skip', why)
  for (const permission of PERMISSIONS) report.add(`permission ${permission}`, 'skip', why)
  if (container) report.add('container private', 'skip', why)
  return { readable: false, unreadable: why }
}

/**
 * Creates, reads, rewrites, leases, lists and deletes the probe through the
 * store, each step tried whatever the others did, and removes the probe in
 * every case.
 */
async function checkPermissions (store: CertStore, report: Report, probe: string, kind: StoreSettings['kind']): Promise<StoreState> {
  let created = false
  let removed = false
  const outcome: Partial<Record<Permission, boolean>> = {}
  const step = async (permission: Permission, work: () => Promise<string>): Promise<void> => {
    try {
      outcome[permission] = report.add(`permission ${permission}`, 'ok', await work())
    } catch (err) {
      outcome[permission] = report.add(`permission ${permission}`, 'fail', storeReason(err),
        PERMISSION_FIX[kind].replace('%p', permission).replace('%l', SAS_LETTER[permission]))
    }
  }
  try {
    await step('create', async () => {
      await store.put(probe, 'fastify-autocert doctor probe')
      created = true
      return `wrote a new value ${probe}`
    })
    await step('read', async () => {
      const value = await store.get(probe)
      return value === undefined ? 'allowed (the probe is not there to read)' : 'read the probe back'
    })
    await step('write', async () => {
      await store.put(probe, 'fastify-autocert doctor probe, rewritten')
      created = true
      return 'replaced the probe'
    })
    await step('lease', async () => {
      const lock = await store.lock(probe)
      await lock.release()
      return 'took and released the probe\'s lock'
    })
    await step('list', async () => {
      const keys = await store.list(probe)
      return keys.includes(probe) ? 'listed the probe' : 'allowed (the probe is not there to list)'
    })
    await step('delete', async () => {
      await store.delete(probe)
      removed = true
      return 'removed the probe'
    })
  } finally {
    if (created && !removed) {
      await store.delete(probe).catch(() => {
        report.add('probe removed', 'fail', `the probe ${probe} could not be removed (nor its lock, if the lease step took it)`,
          `delete ${probe} and locks/${probe} by hand, with a credential that may: the plugin never reads them`)
      })
    }
  }
  const readable = outcome.read === true && outcome.list === true
  return readable ? { readable } : { readable, unreadable: 'the store cannot be read and listed' }
}

// ---- the encryption key ----

/** What the account check gets from the encryption check: the stored account key, or why it has none to look at. */
type StoredAccount = { skip: string } | { key: Buffer | undefined }

/**
 * Reads every stored value: with a key, each must open; without, none may be
 * sealed. Resolves with the account key as read on the way.
 */
async function checkEncryption (opened: OpenedStore, state: StoreState, report: Report): Promise<StoredAccount> {
  if (!state.readable) {
    report.add('encryption', 'skip', state.unreadable as string)
    return { skip: state.unreadable as string }
  }
  const sealed = opened.settings.encryption !== undefined
  const failed = new Set<string>()
  let account: Buffer | undefined
  let total = 0
  try {
    // Not the probes, this one or one a run without the delete permission left.
    const keys = (await opened.store.list()).filter((key) => !key.startsWith(PROBE_PREFIX))
    total = keys.length
    for (let i = 0; i < keys.length; i += READ_CONCURRENCY) {
      await Promise.all(keys.slice(i, i + READ_CONCURRENCY).map(async (key) => {
        try {
          const value = await readBounded(opened.store, key, key === storeKeys.account ? storeLimits.account : LARGEST_VALUE)
          // Without a key the store hands back what is stored: a sealed value shows its MAGIC.
          if (!sealed && value !== undefined && isSealed(value)) failed.add(key)
          else if (key === storeKeys.account) account = value
        } catch (err) {
          if (!isCorrupt(err)) throw err
          failed.add(key)
        }
      }))
    }
  /* c8 ignore start: a store that fails between the permission checks and these reads; not reproducible on demand */
  } catch (err) {
    report.add('encryption', 'fail', `the stored values could not be read: ${storeReason(err)}`, 'run doctor again; if it persists, check the store')
    return { skip: 'the stored values could not be read' }
  }
  /* c8 ignore stop */
  const among = failed.has(storeKeys.account) ? ' (the account key among them)' : ''
  if (failed.size > 0 && sealed) {
    report.add('encryption', 'fail', `${failed.size} of ${total} stored values do not open with the configured key${among}`,
      'set AUTOCERT_ENCRYPTION_KEY to the fleet\'s key; after a rotation, list the key they were sealed with in AUTOCERT_PREVIOUS_ENCRYPTION_KEYS')
  } else if (failed.size > 0) {
    report.add('encryption', 'fail', `${failed.size} of ${total} stored values are sealed, and no encryption key is configured${among}`,
      'set AUTOCERT_ENCRYPTION_KEY (or --encryption-key) to the fleet\'s key')
  } else {
    const what = sealed ? 'an encryption key is configured' : 'no encryption key configured'
    report.add('encryption', 'ok', total === 0
      ? `${what}, and nothing is stored`
      : sealed ? `all ${total} stored values open with the configured key` : `${what}, and none of the ${total} stored values is sealed`)
  }
  return failed.has(storeKeys.account) ? { skip: 'the stored account key does not open' } : { key: account }
}

// ---- the CA ----

/** What the CA's directory answered: the clock check reads its Date. */
interface CaAnswer {
  /** The CA's clock minus this machine's (ms), undefined without a usable Date header. */
  offset?: number
}

async function checkDirectoryUrl (url: string, report: Report): Promise<CaAnswer | undefined> {
  const signal = AbortSignal.timeout(REQUEST_TIMEOUT)
  const sent = Date.now()
  const fix = 'check --directory-url (ACME_DIRECTORY_URL), DNS, the firewall or proxy towards the CA, and the CA\'s status page'
  let answer: { status: number, data: unknown, headers: Record<string, unknown> }
  try {
    // Retried as the plugin's own directory reads are (retry.ts): a CA that is down fails within seconds.
    // Its adapter hands back every answer that is not retried, whatever its status.
    answer = await acme.axios.get(url, { timeout: REQUEST_TIMEOUT, ...retryingRequest(signal) })
  } catch (err) {
    // A 5xx or 429 through every retry is a CaRefusal, with its status.
    const status = (err as { status?: unknown }).status
    report.add('CA directory', 'fail', `${url} ${typeof status === 'number' ? `answered HTTP ${status} through every retry` : `did not answer: ${networkReason(err)}`}`, fix)
    return undefined
  }
  if (answer.status !== 200) {
    report.add('CA directory', 'fail', `${url} answered HTTP ${answer.status}`, fix)
    return undefined
  }
  const received = Date.now()
  const directory = (typeof answer.data === 'object' && answer.data !== null ? answer.data : {}) as { newAccount?: unknown, newNonce?: unknown, meta?: { termsOfService?: unknown } }
  if (typeof directory.newAccount !== 'string' || typeof directory.newNonce !== 'string') {
    report.add('CA directory', 'fail', `${url} is not an ACME directory (no newAccount, newNonce)`, 'set --directory-url to the CA\'s ACME directory URL')
    return undefined
  }
  const terms = directory.meta?.termsOfService
  report.add('CA directory', 'ok', `answered; terms of service: ${typeof terms === 'string' ? terms : 'none listed'}`)
  const date = Date.parse(String(answer.headers.date))
  // The header has a resolution of a second (the CA's time is within the second after it): read against the middle of the round trip.
  return Number.isFinite(date) ? { offset: date + 500 - (sent + received) / 2 } : {}
}

async function checkAccount (url: string, stored: StoredAccount, ca: CaAnswer | undefined, report: Report): Promise<void> {
  if ('skip' in stored) {
    report.add('account', 'skip', stored.skip)
    return
  }
  if (ca === undefined) {
    report.add('account', 'skip', 'the CA directory is not usable')
    return
  }
  if (stored.key === undefined) {
    report.add('account', 'fail', `no account key in the store (${storeKeys.account})`,
      'start the plugin once with this store and CA: it creates and registers the fleet\'s account')
    return
  }
  const signal = AbortSignal.timeout(REQUEST_TIMEOUT)
  try {
    const client = retrying(new acme.Client({ directoryUrl: url, accountKey: stored.key }), () => signal)
    await untilAborted(client.createAccount({ onlyReturnExisting: true }), signal)
    report.add('account', 'ok', `registered: ${client.getAccountUrl()}`)
  } catch (err) {
    report.add('account', 'fail', `the CA does not know the stored account key: ${errorMessage(err).split('\n')[0]}`,
      'check that --directory-url (ACME_DIRECTORY_URL) is the fleet\'s CA; the plugin registers the stored key at its next start otherwise')
  }
}

function checkClock (ca: CaAnswer | undefined, report: Report): void {
  if (ca === undefined) {
    report.add('clock', 'skip', 'the CA directory is not usable')
    return
  }
  if (ca.offset === undefined) {
    report.add('clock', 'warn', 'the CA\'s answer has no usable Date header: the skew is not known', 'check that no proxy strips the CA\'s headers')
    return
  }
  const seconds = Math.round(ca.offset / 1000)
  const detail = seconds === 0 ? 'this machine\'s clock agrees with the CA\'s to the second' : `this machine's clock is ${Math.abs(seconds)} s ${seconds > 0 ? 'behind' : 'ahead of'} the CA's`
  if (Math.abs(ca.offset) > CLOCK_TOLERANCE) {
    report.add('clock', 'fail', `${detail}: past ${CLOCK_TOLERANCE / 1000} s the plugin places no orders (FST_AUTOCERT_CLOCK_SKEW)`, 'fix the machine\'s time (NTP)')
  } else if (Math.abs(ca.offset) > CLOCK_WARNING) {
    report.add('clock', 'warn', `${detail} (the plugin refuses to order past ${CLOCK_TOLERANCE / 1000} s)`, 'check the machine\'s time synchronisation (NTP)')
  } else {
    report.add('clock', 'ok', `${detail} (within ${CLOCK_WARNING / 1000} s)`)
  }
}

// ---- reasons ----

/** A store error in a line: Azure's status, code and reason for an authorization failure. */
function storeReason (err: unknown): string {
  const auth = authFailure(err)
  return auth === undefined ? describeError(err) : `refused: ${auth.status} ${auth.code}: ${auth.reason}`
}

/** The status, Azure's code and reason of FST_AUTOCERT_STORE_AUTH (its message ends with them, see errors.ts). */
function authFailure (err: unknown): { status: number, code: string, reason: string } | undefined {
  if ((err as { code?: unknown } | undefined)?.code !== 'FST_AUTOCERT_STORE_AUTH') return undefined
  const [, status, code, reason] = /\((\d+) ([^:]+): ([\s\S]*)\)$/.exec(errorMessage(err))!
  return { status: Number(status), code: code as string, reason: (reason as string).replace(/\s+/g, ' ').trim() }
}

/** The HTTP status of a store error (403 for FST_AUTOCERT_STORE_AUTH). */
function statusOf (err: unknown): number | undefined {
  return authFailure(err) === undefined ? (err as { statusCode?: number }).statusCode : 403
}

/** Why a request got no answer: the system's message (which names its code: ECONNREFUSED, ENOTFOUND...), or the timeout. */
function networkReason (err: unknown): string {
  // fetch() puts the system's error in `cause`; axios throws it as it is.
  const cause = (err as { cause?: unknown }).cause ?? err
  if ((cause as { name?: unknown }).name === 'TimeoutError') return `no answer within ${REQUEST_TIMEOUT / 1000} s`
  return errorMessage(cause).split('\n')[0] as string
}
