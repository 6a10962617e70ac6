// `fastify-autocert list`: every certificate in the store, soonest expiry first, with what the fleet knows of it.
import type { KeyType } from '../acme/issuer'
import { systemClock } from '../clock'
import type { Logger } from '../events'
import { FailureRecords } from '../fleet/failures'
import { RenewalInfoRecords } from '../fleet/renewal-info'
import { renewalTime } from '../renewal'
import { storeKeys } from '../store/keys'
import type { LockState } from '../store/store'
import { CliError, EXIT, STORE_FLAGS, STORE_HELP, type Command, type CommandContext, type OpenedStore, type Output } from './context'
import { certificateKeys, DAY, daysLeft, issuerName, chainOf, readCertificate, storeLine, type StoredCertificate } from './inspect'

/** Default of --warn-days: exit code 1 when a certificate expires within this many days. */
export const DEFAULT_WARN_DAYS = 14
// Certificates read at once: a large store lists in a few round trips, without a burst of thousands of requests.
const PARALLEL = 8

/** One line of the listing (the JSON output's `certificates`): times are ISO 8601. */
export interface ListEntry {
  domain: string
  keyType: KeyType
  /** The store key the certificate is kept under (`<name>` or `<name>+rsa`). */
  storeKey: string
  serial?: string
  issuer?: string
  notBefore?: string
  notAfter?: string
  daysLeft?: number
  /**
   * When the fleet renews it. `ari`: the time the fleet drew in the CA's
   * renewal window (its renewal-information record, about this serial).
   * `lifetime`: the plugin's lifetime rule (lib/renewal.ts, without a fleet's
   * own renewBefore), the latest time: each instance may renew up to a tenth of
   * the renewal period (at most an hour) earlier.
   */
  renewal?: { at: string, source: 'ari' | 'lifetime', window?: { start: string, end: string }, nextCheck?: string }
  /** The fleet's failure record: consecutive failed orders, the last one's time and error, the next try. */
  failure?: { failures: number, at: string, retryAt: string, error: string } | { unusable: string }
  /** The name's order lock; absent when the store cannot tell. */
  lock?: LockState
  /** `ok`; `unusable` (unreadable, sealed with another key, not valid for its name: see `problem`); `missing`: none stored, while its orders fail. */
  certificate: 'ok' | 'unusable' | 'missing'
  /** Why the certificate cannot be used, or that none is stored. */
  problem?: string
  /** True when it needs an operator: it expires within --warn-days, cannot be used, or is missing while its orders fail. */
  attention: boolean
}

/** The failure record and renewal-information record readers, with what they found unusable. */
function recordReaders (opened: OpenedStore): { failures: FailureRecords, renewalInfo: RenewalInfoRecords, unusable: Map<string, string> } {
  const unusable = new Map<string, string>()
  // The readers log an unusable record (CorruptLog: its blob and error) and nothing else.
  const note = (obj: object): void => {
    const { blob, error } = obj as { blob: string, error: { message: string } }
    unusable.set(blob, error.message)
  }
  const log: Logger = { debug: note, info: note, warn: note, error: note }
  return {
    failures: new FailureRecords(opened.store, undefined, systemClock, log),
    renewalInfo: new RenewalInfoRecords(opened.store, systemClock, log),
    unusable
  }
}

async function run ({ values, out, existingStore }: CommandContext): Promise<number> {
  const warnDays = parseWarnDays(values['warn-days'])
  const opened = await existingStore()
  const now = Date.now()
  const keys = await opened.store.list()
  const present = new Set(keys)
  const certificates = certificateKeys(keys)
  // Names whose orders fail and that have no certificate (yet): the ones an operator most needs to see.
  const failing = certificateKeys(keys.filter((k) => k.endsWith('+failure')).map((k) => k.slice(0, -'+failure'.length)))
    .filter((c) => !present.has(c.storeKey))
  const readers = recordReaders(opened)
  const locks = new Map<string, Promise<LockState | undefined>>()
  const lockOf = (name: string): Promise<LockState | undefined> => {
    const key = storeKeys.nameLock(name)
    let state = locks.get(key)
    if (state === undefined) {
      state = opened.store.lockState?.(key) ?? Promise.resolve(undefined)
      locks.set(key, state)
    }
    return state
  }

  const todo = [...certificates.map((c) => ({ ...c, missing: false })), ...failing.map((c) => ({ ...c, missing: true }))]
  const progress = out.progress(todo.length, 'reading certificates')
  const entries: ListEntry[] = []
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < todo.length) {
      const item = todo[next++]
      const stored = item.missing ? undefined : await readCertificate(opened, item.storeKey, item.name, item.keyType)
      entries.push(await entryOf(item, stored, readers, await lockOf(item.name), now, warnDays))
      progress.tick()
    }
  }
  try {
    await Promise.all(Array.from({ length: Math.min(PARALLEL, todo.length) }, worker))
  } finally {
    progress.stop()
  }
  // Soonest expiry first; what has no usable certificate before everything else.
  entries.sort((a, b) => (a.notAfter === undefined ? -Infinity : Date.parse(a.notAfter)) - (b.notAfter === undefined ? -Infinity : Date.parse(b.notAfter)) ||
    a.domain.localeCompare(b.domain) || a.keyType.localeCompare(b.keyType))

  const attention = entries.filter((e) => e.attention).length
  if (out.json) {
    out.writeJson({ store: opened.describe, sealed: opened.sealed !== undefined, warnDays, certificates: entries })
  } else {
    print(out, opened, entries, warnDays, attention)
  }
  return attention > 0 ? EXIT.attention : EXIT.ok
}

async function entryOf (
  item: { storeKey: string, name: string, keyType: KeyType },
  stored: StoredCertificate | undefined,
  readers: ReturnType<typeof recordReaders>,
  lock: LockState | undefined,
  now: number,
  warnDays: number
): Promise<ListEntry> {
  const [failure, renewalInfo] = await Promise.all([
    readers.failures.read(item.storeKey),
    stored?.cert === undefined ? undefined : readers.renewalInfo.read(item.storeKey)
  ])
  const unusableFailure = readers.unusable.get(storeKeys.failure(item.storeKey))
  const entry: ListEntry = {
    domain: item.name,
    keyType: item.keyType,
    storeKey: item.storeKey,
    certificate: 'ok',
    attention: false,
    ...(failure !== undefined
      ? { failure: { failures: failure.failures, at: iso(failure.at), retryAt: iso(failure.retryAt), error: failure.error } }
      : unusableFailure !== undefined ? { failure: { unusable: unusableFailure } } : {}),
    ...(lock === undefined ? {} : { lock })
  }
  if (stored === undefined) return { ...entry, certificate: 'missing', problem: 'no certificate stored, and its orders fail', attention: true }
  if (stored.cert === undefined) return { ...entry, certificate: 'unusable', problem: stored.problem, attention: true }
  const cert = stored.cert
  const leaf = chainOf(cert)[0]
  const ari = renewalInfo?.serial === cert.serial ? renewalInfo : undefined
  const windowAt = ari?.renewAt ?? ari?.window?.start
  const renewal: NonNullable<ListEntry['renewal']> = windowAt !== undefined && ari?.window !== undefined
    ? { at: iso(windowAt), source: 'ari', window: { start: iso(ari.window.start), end: iso(ari.window.end) }, nextCheck: iso(ari.nextCheck) }
    : { at: iso(renewalTime(cert.notBefore, cert.notAfter, undefined, () => 0)), source: 'lifetime' }
  return {
    ...entry,
    serial: cert.serial,
    issuer: issuerName(leaf),
    notBefore: iso(cert.notBefore),
    notAfter: iso(cert.notAfter),
    daysLeft: daysLeft(cert.notAfter, now),
    renewal,
    attention: cert.notAfter - now < warnDays * DAY
  }
}

function print (out: Output, opened: OpenedStore, entries: ListEntry[], warnDays: number, attention: number): void {
  out.line(storeLine(opened))
  if (entries.length === 0) {
    out.line('no certificates')
    return
  }
  out.table(
    ['DOMAIN', 'KEY', 'SERIAL', 'ISSUER', 'NOT AFTER', 'DAYS', 'NEXT RENEWAL', 'FAILURES', 'LOCK'],
    entries.map((e) => [
      e.domain,
      e.keyType,
      e.serial ?? out.paint('red', e.certificate),
      e.issuer ?? '',
      e.notAfter === undefined ? '' : minute(e.notAfter),
      e.daysLeft === undefined ? '' : out.paint(e.attention ? 'red' : e.daysLeft < 2 * warnDays ? 'yellow' : 'green', String(e.daysLeft)),
      e.renewal === undefined ? '' : `${minute(e.renewal.at)} (${e.renewal.source === 'ari' ? 'ARI' : 'lifetime'})`,
      e.failure === undefined ? '' : 'unusable' in e.failure ? out.paint('red', 'unusable') : out.paint('yellow', String(e.failure.failures)),
      lockText(e.lock)
    ])
  )
  for (const e of entries) {
    const label = e.keyType === 'rsa' ? `${e.domain} (rsa)` : e.domain
    if (e.problem !== undefined) out.line(out.paint('red', `${label}: ${e.problem}`))
    if (e.failure !== undefined) {
      out.line('unusable' in e.failure
        ? `${label}: failure record unusable: ${e.failure.unusable}`
        : `${label}: ${e.failure.failures} failed order${e.failure.failures === 1 ? '' : 's'}, last at ${minute(e.failure.at)}, next try ${minute(e.failure.retryAt)}: ${e.failure.error}`)
    }
  }
  const count = entries.filter((e) => e.serial !== undefined).length
  out.line(`${count} certificate${count === 1 ? '' : 's'}; ${attention === 0 ? 'none needs' : `${attention} need${attention === 1 ? 's' : ''}`} attention (expiring within ${warnDays} days, unusable, or missing while orders fail)`)
}

function lockText (lock: LockState | undefined): string {
  if (lock === undefined) return '?'
  if (lock.state === 'free') return '-'
  return `${lock.state}${lock.holder === undefined ? '' : ` by ${lock.holder}`}`
}

/** --warn-days: a number of days, 0 or more; CliError otherwise. */
function parseWarnDays (value: unknown): number {
  if (value === undefined) return DEFAULT_WARN_DAYS
  const days = typeof value === 'string' && /^\d+(\.\d+)?$/.test(value.trim()) ? Number(value) : NaN
  if (!Number.isFinite(days)) throw new CliError(`--warn-days must be a number of days, 0 or more (default ${DEFAULT_WARN_DAYS}): got ${JSON.stringify(value)}`)
  return days
}

function iso (time: number): string {
  return new Date(time).toISOString()
}

/** `2027-03-01 12:34Z`: the minute, in UTC. */
function minute (time: string): string {
  return `${time.slice(0, 10)} ${time.slice(11, 16)}Z`
}

export const list: Command = {
  name: 'list',
  summary: 'every certificate in the store, soonest expiry first: expiry, next renewal, failures, locks',
  usage: 'list [--warn-days N] [--json] [store flags]',
  help: `Options:
  --warn-days N             exit code 1 when a certificate expires within N days; default ${DEFAULT_WARN_DAYS}
  --json                    the listing as JSON (times in ISO 8601, UTC)

Exit code 1 also when a certificate cannot be used (unreadable, sealed with a
key that is not configured) or a name has no certificate while its orders fail.

${STORE_HELP}`,
  options: { ...STORE_FLAGS, 'warn-days': { type: 'string' } },
  positionals: { min: 0, max: 0 },
  run
}
