// What every command of the command line shares: its settings (environment and flags), the store they name, its output and its errors.
import { stat } from 'node:fs/promises'
import { hostname } from 'node:os'
import type { ParseArgsConfig } from 'node:util'
import { styleText } from 'node:util'
import { SingleBar } from 'cli-progress'
import Table from 'cli-table3'
import { errorMessage } from '../events'
import { printableHolder } from '../fleet/locks'
import { AzureBlobStore, containerClientOf, storeError, type AzureBlobStoreOptions } from '../store/azure-blob'
import { buildStore } from '../store/build'
import type { EncryptedStore, EncryptionOptions } from '../store/encrypted'
import { FileStore } from '../store/file'
import type { CertStore } from '../store/store'

/** Exit codes: done; done, and something needs an operator (a certificate expiring, a failed check); the command could not run. */
export const EXIT = { ok: 0, attention: 1, error: 2 } as const

/** A command that cannot run as asked: its message is printed as one line, exit code 2. */
export class CliError extends Error {}

/** What a command reads and writes: the process's streams and environment, or a test's. */
export interface Io {
  stdout: NodeJS.WritableStream & { isTTY?: boolean, columns?: number }
  stderr: NodeJS.WritableStream & { isTTY?: boolean }
  env: NodeJS.ProcessEnv
}

type Options = NonNullable<ParseArgsConfig['options']>

/**
 * The flags that name the store, each with the environment variable it
 * overrides (those of example/server.ts, plus the prefix and the encryption
 * keys). A secret passed as a flag is visible to other users in `ps`: prefer the
 * variable.
 */
export const STORE_FLAGS = {
  'connection-string': { type: 'string' },
  'container-url': { type: 'string' },
  container: { type: 'string' },
  prefix: { type: 'string' },
  'encryption-key': { type: 'string' },
  'previous-encryption-key': { type: 'string', multiple: true },
  dir: { type: 'string' }
} as const satisfies Options

/** The flags that name the CA and the fleet's account there (renew, revoke, doctor). */
export const CA_FLAGS = {
  'directory-url': { type: 'string' },
  email: { type: 'string' }
} as const satisfies Options

/** `--json` and `--help`, on every command. */
export const COMMON_FLAGS = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' }
} as const satisfies Options

export const STORE_HELP = `Store (flag, or the environment variable it overrides):
  --connection-string S     AZURE_STORAGE_CONNECTION_STRING   account key or account SAS
  --container-url URL       AZURE_STORAGE_CONTAINER_URL       a container URL with a SAS token
  --container NAME          AZURE_STORAGE_CONTAINER           default: autocertcache
  --prefix P                AUTOCERT_STORE_PREFIX             prepended to blob names; default: none
  --encryption-key K        AUTOCERT_ENCRYPTION_KEY           32 bytes, base64: the plugin's encryption.key
  --previous-encryption-key K  AUTOCERT_PREVIOUS_ENCRYPTION_KEYS (comma-separated): encryption.previousKeys
  --dir DIR                 a FileStore directory instead of Blob Storage
Secrets given as flags show in \`ps\`: prefer the variables.`

export const CA_HELP = `CA (flag, or the environment variable it overrides):
  --directory-url URL       ACME_DIRECTORY_URL   production, staging or an https:// ACME directory (each command says its default)
  --email ADDRESS           ACME_EMAIL           the account's contact, when the account is created`

export type Values = Record<string, string | boolean | string[] | undefined>

/** A flag's text, `undefined` when not given or empty. */
export function text (values: Values, flag: string): string | undefined {
  const value = values[flag]
  return typeof value === 'string' && value !== '' ? value : undefined
}

/**
 * The CA directories `--directory-url` (over ACME_DIRECTORY_URL) names, as the
 * example server reads them: one, or a comma-separated fallback list, first CA
 * first. `undefined` when neither is set.
 */
export function caDirectories (values: Values, env: NodeJS.ProcessEnv): string[] | undefined {
  const named = text(values, 'directory-url') ?? (env.ACME_DIRECTORY_URL || undefined)
  const urls = named?.split(',').map((url) => url.trim()).filter((url) => url !== '')
  return urls === undefined || urls.length === 0 ? undefined : urls
}

/** How `command` names itself in the fleet's locks (the list command's LOCK column): printable, as an instanceId. */
export function cliHolder (command: string): string {
  return printableHolder(`fastify-autocert ${command} on ${hostname()}/${process.pid}`)
}

/** The store a command works on, what it is called in output (never with a secret), and how to close it. */
export interface OpenedStore {
  store: CertStore
  /** The EncryptedStore when an encryption key is configured. */
  sealed?: EncryptedStore
  /** `container autocertcache at https://account.blob.core.windows.net` or `directory /var/lib/autocert`. */
  describe: string
  /** How the store was named, for doctor: which kind, and the raw settings (secrets among them: never print). */
  settings: StoreSettings
  close: () => Promise<void>
}

export type StoreSettings =
  | { kind: 'file', dir: string, encryption?: EncryptionOptions }
  | { kind: 'azure', options: AzureBlobStoreOptions, container: string, encryption?: EncryptionOptions }

/** The store settings of `values` (flags) over `env`; CliError when none is named, or two by flags. */
export function storeSettings (values: Values, env: NodeJS.ProcessEnv): StoreSettings {
  const key = text(values, 'encryption-key') ?? (env.AUTOCERT_ENCRYPTION_KEY || undefined)
  const previous = [
    ...(values['previous-encryption-key'] as string[] | undefined ?? []),
    ...(env.AUTOCERT_PREVIOUS_ENCRYPTION_KEYS ?? '').split(',')
  ].map((k) => k.trim()).filter((k) => k !== '')
  if (key === undefined && previous.length > 0) throw new CliError('a previous encryption key needs the current one: set AUTOCERT_ENCRYPTION_KEY or --encryption-key')
  const encryption = key === undefined ? undefined : { key, ...(previous.length > 0 ? { previousKeys: previous } : {}) }
  const prefix = text(values, 'prefix') ?? (env.AUTOCERT_STORE_PREFIX || undefined)
  const dir = text(values, 'dir')
  const named = ['dir', 'connection-string', 'container-url'].filter((flag) => text(values, flag) !== undefined)
  if (named.length > 1) throw new CliError(`--${named.join(' and --')} each name a store: give one`)
  if (dir !== undefined) {
    if (prefix !== undefined) throw new CliError('a prefix (--prefix or AUTOCERT_STORE_PREFIX) is for Blob Storage: a FileStore directory has none')
    return { kind: 'file', dir, ...(encryption === undefined ? {} : { encryption }) }
  }
  const containerUrl = text(values, 'container-url') ?? (text(values, 'connection-string') === undefined ? env.AZURE_STORAGE_CONTAINER_URL || undefined : undefined)
  const connectionString = containerUrl === undefined ? text(values, 'connection-string') ?? (env.AZURE_STORAGE_CONNECTION_STRING || undefined) : undefined
  const container = text(values, 'container') ?? (env.AZURE_STORAGE_CONTAINER || 'autocertcache')
  const common = prefix === undefined ? {} : { prefix }
  if (containerUrl !== undefined) {
    if (text(values, 'container') !== undefined) throw new CliError('the container URL (--container-url or AZURE_STORAGE_CONTAINER_URL) names its container: leave out --container')
    return { kind: 'azure', options: { containerUrl, ...common }, container: containerNameOf(containerUrl), ...(encryption === undefined ? {} : { encryption }) }
  }
  if (connectionString === undefined) {
    throw new CliError('no store: set AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_CONTAINER_URL), or pass --dir DIR for a FileStore')
  }
  return { kind: 'azure', options: { connectionString, container, ...common }, container, ...(encryption === undefined ? {} : { encryption }) }
}

function containerNameOf (url: string): string {
  try {
    const parts = new URL(url).pathname.split('/').filter((p) => p !== '')
    // Azurite's URLs carry the account first: http://127.0.0.1:10000/devstoreaccount1/<container>.
    const name = parts.at(-1)
    if (name !== undefined) return name
  } catch {}
  throw new CliError('--container-url is not a container URL: expected https://<account>.blob.core.windows.net/<container>?<SAS>')
}

/** Where `settings` point, for output: the endpoint and container, never a key or SAS. */
export function describeStore (settings: StoreSettings): string {
  if (settings.kind === 'file') return `directory ${settings.dir}`
  const { options } = settings
  const prefix = options.prefix === undefined ? '' : `, prefix ${options.prefix}`
  return `container ${settings.container}${prefix} at ${endpointOf(settings)}`
}

function endpointOf (settings: Extract<StoreSettings, { kind: 'azure' }>): string {
  const options = settings.options as { connectionString?: string, containerUrl?: string }
  if (options.containerUrl !== undefined) return originOf(options.containerUrl, true)
  const fields = new Map((options.connectionString ?? '').split(';').map((part) => {
    const at = part.indexOf('=')
    return [part.slice(0, at).trim().toLowerCase(), part.slice(at + 1).trim()] as const
  }))
  const blob = fields.get('blobendpoint')
  if (blob !== undefined) return originOf(blob)
  if (fields.get('usedevelopmentstorage') === 'true') return 'http://127.0.0.1:10000'
  const account = fields.get('accountname')
  return account === undefined ? 'Blob Storage' : `https://${account}.blob.${fields.get('endpointsuffix') ?? 'core.windows.net'}`
}

/** `url` without its query (a SAS token) and, for a container's URL, without the container. */
function originOf (url: string, container = false): string {
  try {
    const u = new URL(url)
    return `${u.origin}${container ? u.pathname.replace(/\/[^/]*$/, '') : u.pathname.replace(/\/$/, '')}`
  } catch {
    return 'Blob Storage'
  }
}

/** Opens the store `settings` name, coded and sealed as the plugin's own (buildStore). */
export function openStore (settings: StoreSettings): OpenedStore {
  const base = settings.kind === 'file' ? new FileStore(settings.dir) : new AzureBlobStore(settings.options)
  const built = buildStore({ store: base, encryption: settings.encryption })
  return {
    store: built.store,
    ...(built.sealed === undefined ? {} : { sealed: built.sealed }),
    describe: describeStore(settings),
    settings,
    close: async () => { await base.close?.() }
  }
}

/**
 * CliError when the store `opened` names does not exist. The stores create
 * theirs at their first call, as a fleet's first start needs; a command that
 * only reads must not, and a misspelt container or directory must not look
 * like an empty store.
 */
export async function requireExisting (opened: OpenedStore): Promise<void> {
  const { settings } = opened
  if (settings.kind === 'file') {
    const found = await stat(settings.dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined
      throw err
    })
    if (found === undefined) throw new CliError(`no directory ${settings.dir}: check --dir`)
    if (!found.isDirectory()) throw new CliError(`${settings.dir} is not a directory: check --dir`)
    return
  }
  let exists: boolean
  try {
    exists = await containerClientOf(settings.options).exists()
  } catch (err) {
    // A container SAS may not read its container's properties (nor create one): the command goes on.
    if (/PermissionMismatch$/.test(String((err as { code?: unknown }).code))) return
    throw storeError(err)
  }
  if (!exists) throw new CliError(`no container ${settings.container} at ${endpointOf(settings)}: check --container (AZURE_STORAGE_CONTAINER) or the container URL`)
}

/** Every secret `settings` hold: scrubbed from anything printed. */
export function secretsOf (settings: StoreSettings | undefined): string[] {
  if (settings === undefined) return []
  const found: string[] = []
  const options = settings.kind === 'azure' ? settings.options as { connectionString?: string, containerUrl?: string } : {}
  if (options.connectionString !== undefined) {
    found.push(options.connectionString)
    for (const part of options.connectionString.split(';')) {
      const [name, ...rest] = part.split('=')
      if (/^(accountkey|sharedaccesssignature)$/i.test(name?.trim() ?? '')) found.push(rest.join('='))
    }
  }
  if (options.containerUrl !== undefined) {
    const query = options.containerUrl.indexOf('?')
    if (query >= 0) found.push(options.containerUrl.slice(query + 1))
  }
  const encryption = settings.encryption
  if (encryption !== undefined) {
    for (const key of [encryption.key, ...(encryption.previousKeys ?? [])]) found.push(typeof key === 'string' ? key : key.toString('base64'))
  }
  return found.filter((s) => s.length >= 8)
}

/**
 * `message` with every secret replaced by `***`: the ones configured, and any
 * account key, SAS signature or PEM private key it happens to quote.
 */
export function scrub (message: string, secrets: readonly string[] = []): string {
  let out = message
  for (const secret of [...secrets].sort((a, b) => b.length - a.length)) out = out.split(secret).join('***')
  return out
    .replace(/-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z ]*PRIVATE KEY-----|$)/g, '[private key]')
    .replace(/(AccountKey|SharedAccessSignature)=[^;\s]+/gi, '$1=***')
    .replace(/([?&]sig=)[^&\s"']+/gi, '$1***')
}

/** What a command prints: lines, JSON, tables, colours (on a terminal only) and progress. */
export class Output {
  readonly #io: Io
  readonly #secrets: string[] = []
  readonly json: boolean

  constructor (io: Io, json: boolean) {
    this.#io = io
    this.json = json
  }

  /** Secrets to scrub from everything printed from now on. */
  hide (secrets: readonly string[]): void {
    this.#secrets.push(...secrets)
  }

  /** True when colours are wanted: stdout is a terminal and NO_COLOR is not set (FORCE_COLOR forces them). */
  get colours (): boolean {
    const env = this.#io.env
    if (env.FORCE_COLOR !== undefined && env.FORCE_COLOR !== '0') return true
    return this.#io.stdout.isTTY === true && (env.NO_COLOR === undefined || env.NO_COLOR === '') && env.TERM !== 'dumb'
  }

  /** `text` in `style` when colours are wanted. */
  paint (style: 'red' | 'yellow' | 'green' | 'dim' | 'bold', text: string): string {
    // styleText came with Node 20.12: on an older 20, no colours. validateStream off: whether to
    // colour is decided here, for this Io's stdout (styleText would look at process.stdout's).
    return this.colours && typeof styleText === 'function' ? styleText(style, text, { validateStream: false }) : text
  }

  line (text = ''): void {
    this.#io.stdout.write(`${scrub(text, this.#secrets)}\n`)
  }

  /** `value` as indented JSON on stdout (Dates as ISO strings). */
  writeJson (value: unknown): void {
    this.line(JSON.stringify(value, null, 2))
  }

  /** A table with `head`, borderless as `lego list` and `kubectl get` print theirs. */
  table (head: string[], rows: string[][]): void {
    const table = new Table({
      head: head.map((h) => this.paint('bold', h)),
      chars: { top: '', 'top-mid': '', 'top-left': '', 'top-right': '', bottom: '', 'bottom-mid': '', 'bottom-left': '', 'bottom-right': '', left: '', 'left-mid': '', mid: '', 'mid-mid': '', right: '', 'right-mid': '', middle: '  ' },
      style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0 }
    })
    table.push(...rows)
    this.line(table.toString().split('\n').map((l) => l.trimEnd()).join('\n'))
  }

  /** A warning or note on stderr. */
  note (text: string): void {
    this.#io.stderr.write(`${scrub(text, this.#secrets)}\n`)
  }

  /**
   * A progress bar on stderr for `total` steps, drawn only on a terminal and
   * only for more than `threshold` steps; otherwise its calls do nothing.
   */
  progress (total: number, label: string, threshold = 20): { tick: () => void, stop: () => void } {
    if (this.#io.stderr.isTTY !== true || total <= threshold || this.json) return { tick () {}, stop () {} }
    const bar = new SingleBar({ format: `${label} [{bar}] {value}/{total}`, stream: this.#io.stderr, hideCursor: true }, undefined)
    bar.start(total, 0)
    return { tick: () => bar.increment(), stop: () => bar.stop() }
  }
}

/** What a command's run() is given. */
export interface CommandContext {
  values: Values
  positionals: string[]
  io: Io
  out: Output
  /** The store the flags and environment name, opened once (its secrets are scrubbed from all output). */
  store: () => OpenedStore
  /** The same store, once known to exist (requireExisting): for the commands that only read. */
  existingStore: () => Promise<OpenedStore>
}

/** One command of `fastify-autocert <command>`. */
export interface Command {
  name: string
  /** One line for the command list. */
  summary: string
  /** `list [--warn-days N]`: the synopsis after `fastify-autocert`. */
  usage: string
  /** The command's own help text below the synopsis (its flags). */
  help: string
  /** Its flags; COMMON_FLAGS are added to every command. */
  options: Options
  /** How many positionals it takes. */
  positionals: { min: number, max: number }
  /** The exit code (EXIT). Throws CliError for a command that cannot run. */
  run: (ctx: CommandContext) => Promise<number>
}

/** The message of `err` for a one-line error: its code first when it has one. */
export function describeError (err: unknown): string {
  const code = (err as { code?: unknown } | undefined)?.code
  const message = errorMessage(err).split('\n')[0] as string
  return typeof code === 'string' && code.startsWith('FST_') && !message.startsWith(code) ? `${code}: ${message}` : message
}
