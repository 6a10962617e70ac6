// `fastify-autocert import`: certificates from Go autocert's DirCache, certbot's live/ tree or PEM files, into the fleet's store.
import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto'
import { readFile, readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import type { KeyType } from '../acme/issuer'
import { certificateMetadata, decodeBundle, encodeBundle, type Certificate } from '../certificate'
import { systemClock } from '../clock'
import { FST_AUTOCERT_LOCK_LOST } from '../errors'
import { errorMessage } from '../events'
import { FleetLocks } from '../fleet/locks'
import { normalizeListed, normalizeName } from '../names'
import { storeKeys, storeLimits } from '../store/keys'
import { isCorrupt, readBounded, type CertStore } from '../store/store'
import { cliHolder, CliError, EXIT, STORE_FLAGS, STORE_HELP, describeError, type Command, type Output } from './context'
import { chainOf, daysLeft, dnsNames } from './inspect'

/** A certificate that expires sooner than this (days) is imported with a warning: the fleet renews it soon. */
export const IMPORT_WARN_DAYS = 14

/** How long the name's lock is waited for when a running instance holds it (seconds), unless --lock-timeout says otherwise. */
export const IMPORT_LOCK_TIMEOUT = 60

/** What became of one certificate (under one name), or of a file that holds none. */
export type ImportOutcome = 'imported' | 'kept' | 'skipped' | 'ignored'

/** One line of the report (and one element of `--json`'s `results`). */
export interface ImportResult {
  outcome: ImportOutcome
  /** The file (or key and chain files) it came from. */
  source: string
  /** The name it is stored under; absent when the certificate was refused as a whole. */
  name?: string
  /** The store key: `<name>` (ECDSA) or `<name>+rsa` (RSA). */
  storeKey?: string
  keyType?: KeyType
  /** The leaf's serial (upper-case hex). */
  serial?: string
  notAfter?: string
  daysLeft?: number
  /** Why it was kept, skipped or ignored. */
  reason?: string
  /** Imported, but worth an operator's look (expires soon, a chain without intermediates). */
  warning?: string
  /** The certificate the store held under that key: replaced (imported) or kept. */
  stored?: { serial: string, notAfter: string }
}

/** A certificate read from disk, not checked yet: the key and chain as one bundle text. */
interface Candidate {
  source: string
  bundle: string
}

/** What the paths hold: the certificates to check, and the files that are not certificates, with the reason. */
interface Found {
  candidates: Candidate[]
  ignored: ImportResult[]
}

// certbot's files in each live/<name>/ directory (symbolic links into archive/<name>/).
const CERTBOT_KEY = 'privkey.pem'
const CERTBOT_CHAIN = 'fullchain.pem'

/**
 * Why a file of a Go autocert DirCache (or of this plugin's FileStore, the same
 * layout) is not a certificate to import, or undefined when it is one
 * (`<name>` or `<name>+rsa`). The account key is left out on purpose: the fleet
 * registers its own account at its own CA, and a key of the CA autocert used
 * would not be that account.
 */
function notACertificate (file: string): string | undefined {
  if (file.startsWith('.')) return 'a hidden file (a FileStore keeps its locks and temporary files so): not a certificate'
  if (file === storeKeys.account || file.startsWith(`${storeKeys.account}+`)) return 'an ACME account key: not imported (the fleet registers its own account at its CA)'
  if (file.endsWith('+http-01')) return 'a pending HTTP-01 challenge answer: not a certificate'
  if (file.endsWith('+tls-alpn-01') || file.endsWith('+token')) return 'a challenge certificate: not a certificate to serve'
  if (file === storeKeys.orderLog || file.endsWith('+failure') || file.endsWith('+ari')) return 'a fleet record of the plugin: not a certificate'
  const name = file.endsWith('+rsa') ? file.slice(0, -'+rsa'.length) : file
  return normalizeListed(name) === name ? undefined : 'not a certificate key (<name> or <name>+rsa)'
}

async function isCertbotName (dir: string): Promise<boolean> {
  const files = await readdir(dir).catch(() => [] as string[])
  return files.includes(CERTBOT_KEY) && files.includes(CERTBOT_CHAIN)
}

/** A certbot live/<name>/ directory: its key and full chain (read through certbot's symbolic links). */
async function certbotBundle (dir: string): Promise<string> {
  const [key, chain] = await Promise.all([readSmall(path.join(dir, CERTBOT_KEY)), readSmall(path.join(dir, CERTBOT_CHAIN))])
  return encodeBundle({ key, chain })
}

/** A file over storeLimits.certificate bytes: skipped, never read. */
class TooLarge extends Error {}

/** A file of at most storeLimits.certificate bytes (a larger one cannot be stored); TooLarge otherwise. */
async function readSmall (file: string): Promise<string> {
  const info = await stat(file)
  if (info.size > storeLimits.certificate) throw new TooLarge(`${info.size} bytes, over the ${storeLimits.certificate} bytes a stored certificate may have`)
  return await readFile(file, 'utf8')
}

/** Adds the bundle `read` gives to `found`, as from `source`: a file over the limit is skipped here. */
async function addCandidate (found: Found, source: string, read: () => Promise<string>): Promise<void> {
  try {
    found.candidates.push({ source, bundle: await read() })
  } catch (err) {
    if (!(err instanceof TooLarge)) throw err
    found.ignored.push({ outcome: 'skipped', source, reason: err.message })
  }
}

/**
 * What `given` holds: a certbot live/<name>/ directory, a certbot live/
 * directory (every live/<name>/ in it), a Go autocert DirCache, or one PEM
 * file with the key and the chain. A path that does not exist is a CliError.
 */
async function gather (found: Found, given: string): Promise<void> {
  const info = await stat(given).catch((err: NodeJS.ErrnoException) => {
    throw new CliError(`${given}: ${err.code === 'ENOENT' ? 'no such file or directory' : errorMessage(err)}`)
  })
  if (!info.isDirectory()) return await addCandidate(found, given, async () => await readSmall(given))
  if (await isCertbotName(given)) return await addCandidate(found, given, async () => await certbotBundle(given))
  const entries = (await readdir(given, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))
  const dirs = entries.filter((e) => e.isDirectory())
  const certbot = (await Promise.all(dirs.map(async (d) => await isCertbotName(path.join(given, d.name))))).some(Boolean)
  for (const entry of entries) {
    const file = path.join(given, entry.name)
    if (certbot) {
      if (entry.isDirectory() && await isCertbotName(file)) await addCandidate(found, file, async () => await certbotBundle(file))
      else found.ignored.push({ outcome: 'ignored', source: file, reason: entry.name === 'README' ? 'certbot\'s README' : `not a certbot certificate directory (no ${CERTBOT_KEY} and ${CERTBOT_CHAIN})` })
      continue
    }
    const why = entry.isDirectory() ? 'a directory in a DirCache: not a certificate' : notACertificate(entry.name)
    if (why === undefined) await addCandidate(found, file, async () => await readSmall(file))
    else found.ignored.push({ outcome: 'ignored', source: file, reason: why })
  }
}

/** The DNS names of `leaf` (its subjectAltName, or its CN when it has none). */
function namesOf (leaf: X509Certificate): string[] {
  if (leaf.subjectAltName !== undefined) return dnsNames(leaf)
  const cn = /(?:^|\n)CN=([^\n]*)/.exec(leaf.subject)?.[1]
  return cn === undefined ? [] : [cn]
}

function keyTypeOf (key: KeyObject): KeyType | undefined {
  return key.asymmetricKeyType === 'ec' ? 'ecdsa' : key.asymmetricKeyType === 'rsa' ? 'rsa' : undefined
}

/** A certificate that passed every check: where it goes, and what is worth a warning. */
interface Checked {
  source: string
  keyType: KeyType
  /** The leaf's names the plugin can serve, normalised; each becomes one store key. */
  names: string[]
  /** Names of the leaf it cannot serve (wildcards, IP addresses), with the reason. */
  refused: Array<{ name: string, reason: string }>
  cert: Certificate
  warning?: string
}

/**
 * The checks of one certificate, as the plugin would make them before serving
 * it: one private key that matches the leaf, a key type it serves, names it
 * can serve, not expired, small enough to be read back. Returns the reason it
 * is refused, or what it is.
 */
function check (candidate: Candidate, now: number): Checked | string {
  let leaf: X509Certificate
  let key: KeyObject
  try {
    leaf = new X509Certificate(candidate.bundle)
  } catch {
    return 'no certificate that parses'
  }
  try {
    key = createPrivateKey(candidate.bundle)
  } catch {
    return 'no private key that parses'
  }
  if (!leaf.checkPrivateKey(key)) return 'the private key does not match the certificate'
  const keyType = keyTypeOf(key)
  if (keyType === undefined) return `a ${key.asymmetricKeyType ?? 'unknown'} key: the plugin serves ECDSA and RSA keys`
  const names: string[] = []
  const refused: Checked['refused'] = []
  for (const raw of namesOf(leaf)) {
    const name = normalizeName(raw)
    if (raw.startsWith('*.')) refused.push({ name: raw, reason: 'a wildcard name: import takes none (list it in domains, and the plugin orders it through DNS-01)' })
    else if (name === undefined) refused.push({ name: raw, reason: 'not a host name the plugin serves' })
    else if (!names.includes(name)) names.push(name)
  }
  if (names.length === 0) return refused.length === 0 ? 'no DNS name in the certificate' : `no name the plugin can serve (${refused.map((r) => `${r.name}: ${r.reason}`).join('; ')})`
  let cert: Certificate
  try {
    // The plugin's own reading of a bundle: one key, the leaf first, valid for the name.
    cert = decodeBundle(names[0] as string, candidate.source, candidate.bundle)
  } catch (err) {
    return describeError(err)
  }
  const size = Buffer.byteLength(encodeBundle(cert))
  if (size > storeLimits.certificate) return `the bundle takes ${size} bytes, over the ${storeLimits.certificate} bytes a stored certificate may have`
  if (cert.notAfter <= now) return `expired on ${new Date(cert.notAfter).toISOString()}`
  const warnings: string[] = []
  const days = daysLeft(cert.notAfter, now)
  if (days < IMPORT_WARN_DAYS) warnings.push(`expires in ${days} days: the fleet renews it soon`)
  const chain = chainOf(cert)
  if (chain.length === 1 && !leaf.checkIssued(leaf)) warnings.push('the chain holds the leaf only: clients may not verify it without the intermediates')
  else if (chain.some((c, i) => i > 0 && !(chain[i - 1] as X509Certificate).checkIssued(c))) warnings.push('the chain is not in order (each certificate issued by the next)')
  return { source: candidate.source, keyType, names, refused, cert, ...(warnings.length === 0 ? {} : { warning: warnings.join('; ') }) }
}

interface Placing {
  store: CertStore
  locks: FleetLocks
  dryRun: boolean
  now: number
  /** --lock-timeout (s), for the reason given when it runs out. */
  timeout: number
}

/**
 * What the store's certificate under `result.storeKey` makes of the import:
 * undefined to write it, or the result that keeps what is there. A stored
 * value that does not open is kept too: it may be the fleet's certificate
 * sealed with another key, and an operator decides that, not an import.
 */
async function against (store: CertStore, result: ImportResult, notAfter: number): Promise<ImportResult | undefined> {
  const { name, storeKey } = result as Required<ImportResult>
  let stored: Certificate
  try {
    const data = await readBounded(store, storeKey, storeLimits.certificate)
    if (data === undefined) return undefined
    stored = decodeBundle(name, storeKey, data)
  } catch (err) {
    if (!isCorrupt(err)) throw err
    return { ...result, outcome: 'skipped', reason: `${describeError(err)}; not replaced: remove it first if it is garbage` }
  }
  result.stored = { serial: stored.serial, notAfter: new Date(stored.notAfter).toISOString() }
  if (stored.serial === result.serial) return { ...result, outcome: 'kept', reason: 'already stored' }
  if (stored.notAfter >= notAfter) return { ...result, outcome: 'kept', reason: `the store holds serial ${stored.serial}, valid as long or longer (until ${result.stored.notAfter})` }
  return undefined
}

/**
 * Writes `checked` under `name` unless the store holds a certificate there that
 * lasts as long or longer. The write holds the name's lock (the one a running
 * instance takes to order or store it) and looks at the store again under it,
 * so that an import and a renewal never race. A dry run reads and compares,
 * without the lock, and writes nothing.
 */
async function place ({ store, locks, dryRun, now, timeout }: Placing, checked: Checked, name: string): Promise<ImportResult> {
  const { cert, keyType } = checked
  const result: ImportResult = {
    outcome: 'imported',
    source: checked.source,
    name,
    storeKey: storeKeys.certificate(name, keyType),
    keyType,
    serial: cert.serial,
    notAfter: new Date(cert.notAfter).toISOString(),
    daysLeft: daysLeft(cert.notAfter, now),
    ...(checked.warning === undefined ? {} : { warning: checked.warning })
  }
  // A store that does not answer fails here, before any lock is waited for.
  const before = await against(store, result, cert.notAfter)
  if (before !== undefined || dryRun) return before ?? result
  let holder: string | undefined
  let lock
  try {
    lock = await locks.take(storeKeys.nameLock(name), new AbortController().signal, { onWait: (h) => { holder = h } })
  } catch (err) {
    if ((err as { code?: unknown }).code !== 'FST_AUTOCERT_LOCK_TIMEOUT') throw err
    return { ...result, outcome: 'skipped', reason: `its lock is held by ${holder ?? 'an unknown holder'} (a running instance ordering or storing it): gave up after ${timeout} s (--lock-timeout); run the import again` }
  }
  try {
    const after = await against(store, result, cert.notAfter)
    if (after !== undefined) return after
    if (lock.signal.aborted) throw new FST_AUTOCERT_LOCK_LOST(name)
    await store.put(result.storeKey as string, encodeBundle(cert), { metadata: certificateMetadata(cert) })
    return result
  } finally {
    await lock.release()
  }
}

// The lock's own warning is not printed: a name skipped at its deadline says so in its result.
const quiet = (): void => {}
const SILENT = { debug: quiet, info: quiet, warn: quiet, error: quiet }

function describeResult (out: Output, r: ImportResult, dryRun: boolean): string {
  const label = r.outcome === 'imported' && dryRun ? 'would import' : r.outcome
  const painted = out.paint(r.outcome === 'imported' ? 'green' : r.outcome === 'skipped' ? 'red' : 'dim', label.padEnd(dryRun ? 12 : 8))
  const what = r.name === undefined ? r.source : `${r.storeKey as string} (${r.keyType as string}, serial ${r.serial as string}, until ${r.notAfter as string}, ${r.daysLeft as number} days)`
  const replaces = r.outcome === 'imported' && r.stored !== undefined ? `, replacing serial ${r.stored.serial} (until ${r.stored.notAfter})` : ''
  const from = r.name === undefined ? '' : ` from ${r.source}`
  const reason = r.reason === undefined ? '' : `: ${r.reason}`
  const warning = r.warning === undefined ? '' : out.paint('yellow', ` warning: ${r.warning}`)
  return `${painted} ${what}${replaces}${from}${reason}${warning}`
}

export const importCommand: Command = {
  name: 'import',
  summary: 'import certificates from a Go autocert DirCache, certbot\'s live/ tree, or PEM files into the store',
  usage: 'import [<path>...] [--key FILE --chain FILE]... [--dry-run] [--lock-timeout S] [--json]',
  help: `Each <path> is one of:
  a certbot live/ directory     every live/<name>/ in it (privkey.pem + fullchain.pem; README is left alone)
  a certbot live/<name>/        its privkey.pem + fullchain.pem
  a Go autocert DirCache        its <name> and <name>+rsa files (key and chain in one PEM); the account
                                key, challenge answers and anything else are listed as ignored
  a PEM file                    a private key and its chain in one file (one DirCache entry)
A certificate is stored under every DNS name it holds (wildcard names are not served by the plugin:
left out), as <name> (ECDSA) or <name>+rsa (RSA), sealed when an encryption key is set. Checked first:
the key matches the leaf, the key type, the names, not expired (a warning under ${IMPORT_WARN_DAYS} days left).
A stored certificate valid as long or longer is kept. Each write holds the name's lock, as the fleet's.

Options:
  --key FILE --chain FILE   a private key and its chain in two files; repeat for more pairs (paired in order)
  --dry-run                 check and compare with the store, write nothing
  --lock-timeout S          how long a name's lock held by a running instance is waited for; default ${IMPORT_LOCK_TIMEOUT} s
  --json                    the results as JSON

${STORE_HELP}

Exit codes: 0 every certificate imported or kept; 1 some skipped (see their reasons); 2 the command could not run.`,
  options: {
    ...STORE_FLAGS,
    key: { type: 'string', multiple: true },
    chain: { type: 'string', multiple: true },
    'dry-run': { type: 'boolean' },
    'lock-timeout': { type: 'string' }
  },
  positionals: { min: 0, max: Infinity },
  async run ({ values, positionals, out, store: openedStore }) {
    const keys = values.key as string[] | undefined ?? []
    const chains = values.chain as string[] | undefined ?? []
    if (keys.length !== chains.length) throw new CliError(`--key and --chain come in pairs: ${keys.length} --key, ${chains.length} --chain`)
    if (positionals.length === 0 && keys.length === 0) throw new CliError(`nothing to import: usage: fastify-autocert ${importCommand.usage}`)
    const timeoutText = values['lock-timeout'] as string | undefined ?? String(IMPORT_LOCK_TIMEOUT)
    const timeout = Number(timeoutText)
    if (!/^\d+(\.\d+)?$/.test(timeoutText) || !(timeout > 0)) throw new CliError(`--lock-timeout must be a number of seconds above 0, not ${JSON.stringify(timeoutText)}`)
    const dryRun = values['dry-run'] === true

    const found: Found = { candidates: [], ignored: [] }
    for (const given of positionals) await gather(found, given)
    for (const [i, keyFile] of keys.entries()) {
      const chainFile = chains[i] as string
      for (const file of [keyFile, chainFile]) await stat(file).catch(() => { throw new CliError(`${file}: no such file`) })
      const source = `${keyFile} + ${chainFile}`
      try {
        const key = await readSmall(keyFile)
        // Its certificates would come first, and the chain file's after them: the leaf would not be the one meant.
        if (key.includes('-----BEGIN CERTIFICATE-----')) found.ignored.push({ outcome: 'skipped', source, reason: 'the key file holds certificates too: give it as a <path> (a key and its chain in one file)' })
        else found.candidates.push({ source, bundle: encodeBundle({ key, chain: await readSmall(chainFile) }) })
      } catch (err) {
        if (!(err instanceof TooLarge)) throw err
        found.ignored.push({ outcome: 'skipped', source, reason: err.message })
      }
    }

    const opened = openedStore()
    const locks = new FleetLocks({ store: opened.store, holder: cliHolder('import'), timeout: timeout * 1000, clock: systemClock, log: SILENT })
    const now = Date.now()
    const results: ImportResult[] = [...found.ignored]
    const progress = out.progress(found.candidates.length, dryRun ? 'checking' : 'importing')
    // A store that fails part-way stops the import; what it wrote before is reported all the same.
    let stopped: string | undefined
    try {
      for (const candidate of found.candidates) {
        const checked = check(candidate, now)
        if (typeof checked === 'string') {
          results.push({ outcome: 'skipped', source: candidate.source, reason: checked })
        } else {
          for (const name of checked.names) results.push(await place({ store: opened.store, locks, dryRun, now, timeout }, checked, name))
          for (const { name, reason } of checked.refused) results.push({ outcome: 'skipped', source: candidate.source, reason: `${name}: ${reason}` })
        }
        progress.tick()
      }
    } catch (err) {
      if (!results.some((r) => r.outcome === 'imported')) throw err
      stopped = describeError(err)
    } finally {
      progress.stop()
    }

    const count = (outcome: ImportOutcome): number => results.filter((r) => r.outcome === outcome).length
    const summary = { imported: count('imported'), kept: count('kept'), skipped: count('skipped'), ignored: count('ignored') }
    if (out.json) {
      out.writeJson({ store: opened.describe, dryRun, results, summary, ...(stopped === undefined ? {} : { stopped }) })
    } else {
      for (const r of results) out.line(describeResult(out, r, dryRun))
      const imported = dryRun ? `${summary.imported} to import` : `${summary.imported} imported`
      out.line(`${imported}, ${summary.kept} kept, ${summary.skipped} skipped, ${summary.ignored} ignored: ${opened.describe}${dryRun ? ' (dry run: nothing written)' : ''}`)
    }
    if (stopped !== undefined) {
      out.note(`fastify-autocert import: stopped, the rest not imported: ${stopped}`)
      return EXIT.error
    }
    return summary.skipped > 0 ? EXIT.attention : EXIT.ok
  }
}
