// What the import tests share: real certificates from Pebble, laid out as Go autocert and certbot keep them,
// the command run as a child process, and every output it printed kept for the check that no secret is in any.
import { randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, readdir, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import { AzureBlobStore, FileStore, type AutocertOptions } from '../../lib'
import { decodeBundle } from '../../lib/certificate'
import type { ImportResult } from '../../lib/cli/import'
import { eventually, startApp } from '../support/app'
import { runCli, type CliResult } from './cli'
import { startServices, type Services } from './services'

const DAY = 24 * 60 * 60

export interface ImportJson {
  store: string
  dryRun: boolean
  results: ImportResult[]
  summary: Record<'imported' | 'kept' | 'skipped' | 'ignored', number>
}

export interface ImportBench extends Services {
  /** A temporary directory, removed when the test ends. */
  work: string
  /** The Azurite account key and an encryption key: neither may appear in any output. */
  accountKey: string
  encryptionKey: string
  /** The environment that names `container` in Azurite, plus `more`. */
  env: (container: string, more?: NodeJS.ProcessEnv) => NodeJS.ProcessEnv
  /** A store on `container`, closed when the test ends. */
  blobStore: (container: string) => AzureBlobStore
  /** `fastify-autocert import ...args` as a child process; its output is kept in `outputs`. */
  cli: (args: string[], env: NodeJS.ProcessEnv) => Promise<CliResult>
  outputs: CliResult[]
  /** Runs the plugin once on a FileStore in `dir` until it serves `domains` (a FileStore directory is a Go autocert DirCache). */
  obtain: (dir: string, domains: string[], options?: Partial<AutocertOptions>) => Promise<void>
}

/**
 * Azurite and Pebble 2.10 for one test file. Pebble's profiles: `default` (90
 * days), `week` (7 days) and `brief` (3 s); every order names one, since Pebble
 * picks one at random for an order that names none.
 */
export async function startImportBench (t: Test): Promise<ImportBench> {
  const services = await startServices(t, {
    profiles: { default: { validityPeriod: 90 * DAY }, week: { validityPeriod: 7 * DAY }, brief: { validityPeriod: 3 } }
  })
  const { azurite, pebble, httpPort } = services
  const work = await mkdtemp(path.join(os.tmpdir(), 'cli-import-'))
  t.teardown(() => rm(work, { recursive: true, force: true }))
  const outputs: CliResult[] = []
  return {
    ...services,
    work,
    accountKey: /AccountKey=([^;]+)/.exec(azurite.connectionString)?.[1] as string,
    encryptionKey: randomBytes(32).toString('base64'),
    env: (container, more = {}) => ({ AZURE_STORAGE_CONNECTION_STRING: azurite.connectionString, AZURE_STORAGE_CONTAINER: container, ...more }),
    blobStore: (container) => {
      const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
      t.teardown(() => store.close())
      return store
    },
    cli: async (args, env) => {
      const result = await runCli(['import', ...args], { ...env, NODE_EXTRA_CA_CERTS: pebble.caFile })
      outputs.push(result)
      return result
    },
    outputs,
    obtain: async (dir, domains, options = {}) => {
      const store = new FileStore(dir)
      const app = await startApp(pebble, httpPort, store, { domains, profile: 'default', ...options })
      try {
        const keyTypes = Array.isArray(options.keyType) ? options.keyType.length : 1
        await eventually(() => app.app.autocert.status().filter((s) => s.serial !== undefined).length === domains.length * keyTypes, 60_000)
      } finally {
        await app.app.close()
        await store.close()
      }
    }
  }
}

/** The parsed `--json` output of a run. */
export function importJson (result: CliResult): ImportJson {
  return JSON.parse(result.stdout) as ImportJson
}

/** The serial of the bundle in `file` (a DirCache entry) for `name`. */
export async function serialOf (file: string, name: string): Promise<string> {
  return decodeBundle(name, name, await readFile(file)).serial
}

/** Lays out the bundle in `from` as certbot does under `base`: archive/<name>/privkey1.pem and fullchain1.pem, linked from live/<name>/. */
export async function certbotTree (base: string, name: string, from: string): Promise<void> {
  const cert = decodeBundle(name, name, await readFile(from))
  await mkdir(path.join(base, 'archive', name), { recursive: true })
  await mkdir(path.join(base, 'live', name), { recursive: true })
  await writeFile(path.join(base, 'archive', name, 'privkey1.pem'), `${cert.key}\n`, { mode: 0o600 })
  await writeFile(path.join(base, 'archive', name, 'fullchain1.pem'), `${cert.chain}\n`)
  for (const file of ['privkey', 'fullchain']) await symlink(`../../archive/${name}/${file}1.pem`, path.join(base, 'live', name, `${file}.pem`))
}

/** Checks that no run in `outputs` printed a secret: the account key, the encryption key, a private key or any line of the key files in `dirs`, or a stack trace. */
export async function checkNoSecrets (t: Test, bench: ImportBench, dirs: string[]): Promise<void> {
  const files = (await Promise.all(dirs.map(async (dir) => (await readdir(dir)).map((f) => path.join(dir, f))))).flat()
  const bundles = files.filter((f) => { const base = path.basename(f); return !base.startsWith('.') && (!base.includes('+') || base.endsWith('+rsa') || base === 'acme_account+key') })
  const keyLines = (await Promise.all(bundles.map(async (f) => await readFile(f, 'utf8'))))
    .flatMap((pem) => pem.split('\n').filter((l) => l.length > 40 && !l.startsWith('-----')))
  t.ok(keyLines.length > 20, `${keyLines.length} lines of key files looked for`)
  for (const { stdout, stderr } of bench.outputs) {
    const all = stdout + stderr
    t.notOk(all.includes(bench.accountKey), 'no account key')
    t.notOk(all.includes(bench.encryptionKey), 'no encryption key')
    t.notOk(/PRIVATE KEY/.test(all), 'no private key')
    t.notOk(keyLines.some((line) => all.includes(line)), 'no line of any key file')
    t.notMatch(all, /\n {4}at /, 'no stack trace')
  }
}
