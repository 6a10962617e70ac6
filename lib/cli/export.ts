// `fastify-autocert export <domain> --out DIR`: a stored certificate as PEM files, laid out as certbot's live/<name>/.
import { randomBytes } from 'node:crypto'
import { mkdir, open, rename, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import type { KeyType } from '../acme/issuer'
import { CliError, EXIT, STORE_FLAGS, STORE_HELP, type Command, type CommandContext } from './context'
import { chainOf, readDomain } from './inspect'

/** The files export writes, certbot's names: the key, the whole chain, the leaf, the chain without the leaf. */
export const EXPORT_FILES = ['privkey.pem', 'fullchain.pem', 'cert.pem', 'chain.pem'] as const

async function run ({ positionals, values, out, existingStore }: CommandContext): Promise<number> {
  const domain = positionals[0]
  const dir = values.out
  if (typeof dir !== 'string' || dir === '') throw new CliError('--out DIR is required: the directory the PEM files are written to')
  const keyType = values['key-type'] ?? 'ecdsa'
  if (keyType !== 'ecdsa' && keyType !== 'rsa') throw new CliError(`--key-type must be ecdsa or rsa: got ${JSON.stringify(keyType)}`)
  const opened = await existingStore()
  const found = await readDomain(opened, domain)
  if (found === undefined) throw new CliError(`${JSON.stringify(domain)} is not a host name a certificate is issued for`)
  const stored = found.find((s) => s.keyType === keyType)
  if (stored === undefined) {
    const others = found.map((s) => s.keyType)
    throw new CliError(`no ${keyType} certificate for ${domain} in ${opened.describe}${others.length > 0 ? ` (there is: ${others.join(', ')}; pass --key-type)` : ''}`)
  }
  if (stored.cert === undefined) throw new CliError(`${stored.storeKey}: ${stored.problem}`)
  const cert = stored.cert
  const pems = chainOf(cert).map((c) => c.toString().trim())
  const contents: Record<(typeof EXPORT_FILES)[number], string> = {
    'privkey.pem': `${cert.key.trim()}\n`,
    'fullchain.pem': `${pems.join('\n')}\n`,
    'cert.pem': `${pems[0]}\n`,
    'chain.pem': pems.length > 1 ? `${pems.slice(1).join('\n')}\n` : ''
  }
  const target = path.resolve(dir)
  await mkdir(target, { recursive: true, mode: 0o700 })
  const force = values.force === true
  const existing = (await Promise.all(EXPORT_FILES.map(async (file) => await exists(path.join(target, file)) ? file : undefined))).filter((f) => f !== undefined)
  if (existing.length > 0 && !force) throw new CliError(`${existing.join(', ')} exist${existing.length === 1 ? 's' : ''} in ${target}: pass --force to replace them`)
  // Each file is written whole to a new file beside it, with its mode, then renamed over the old one: a failure
  // part-way never leaves a new key beside an old chain, and no symbolic link in DIR is followed.
  const suffix = `.${randomBytes(6).toString('hex')}.tmp`
  const written: string[] = []
  try {
    for (const file of EXPORT_FILES) {
      const temp = path.join(target, file + suffix)
      const mode = file === 'privkey.pem' ? 0o600 : 0o644
      const handle = await open(temp, 'wx', mode)
      written.push(temp)
      try {
        await handle.chmod(mode) // whatever the umask
        await handle.writeFile(contents[file])
      } finally {
        await handle.close()
      }
    }
    for (const file of EXPORT_FILES) await rename(path.join(target, file + suffix), path.join(target, file))
  } finally {
    await Promise.all(written.map((temp) => rm(temp, { force: true })))
  }
  const result = { domain: stored.name, keyType: keyType as KeyType, serial: cert.serial, notAfter: new Date(cert.notAfter).toISOString(), dir: target, files: [...EXPORT_FILES] }
  if (out.json) {
    out.writeJson(result)
  } else {
    out.line(`wrote ${stored.name} (${keyType}, serial ${cert.serial}, not after ${result.notAfter}) to ${target}:`)
    out.line('  privkey.pem (mode 0600), fullchain.pem, cert.pem, chain.pem')
  }
  return EXIT.ok
}

async function exists (file: string): Promise<boolean> {
  return await stat(file).then(() => true, () => false)
}

export const exportCommand: Command = {
  name: 'export',
  summary: 'a domain\'s certificate and key as PEM files (privkey.pem, fullchain.pem, cert.pem, chain.pem)',
  usage: 'export <domain> --out DIR [--key-type ecdsa|rsa] [--force] [store flags]',
  help: `Options:
  --out DIR                 where to write; created with mode 0700 if missing
  --key-type T              ecdsa (the name's key) or rsa (<name>+rsa); default ecdsa
  --force                   replace files that exist; without it, an existing file stops the export
  --json                    what was written, as JSON

privkey.pem is written with mode 0600, the others 0644. The key is never printed.

${STORE_HELP}`,
  options: { ...STORE_FLAGS, out: { type: 'string' }, 'key-type': { type: 'string' }, force: { type: 'boolean' } },
  positionals: { min: 1, max: 1 },
  run
}
