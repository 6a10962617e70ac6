// `renew <domain>` and `revoke <domain>`: an order (and a revocation) placed from the command line with the fleet's account, under its lock.
import type { KeyType } from '../acme/issuer'
import { createAutocert, REVOCATION_REASONS, type AutocertServer, type RevocationReason } from '../autocert'
import type { DomainStatus, Logger } from '../events'
import { normalizeListed } from '../names'
import { storeKeys, storeLimits } from '../store/keys'
import { readBounded, type CertStore } from '../store/store'
import { CA_FLAGS, CA_HELP, caDirectories, cliHolder, CliError, EXIT, STORE_FLAGS, STORE_HELP, text, type Command, type CommandContext, type Output, type Values } from './context'

const KEY_TYPES: readonly KeyType[] = ['ecdsa', 'rsa']

/** The flags renew and revoke share: the store, the CA, and the fleet's settings the order must honour. */
const ORDER_FLAGS = {
  ...STORE_FLAGS,
  ...CA_FLAGS,
  profile: { type: 'string' },
  'key-type': { type: 'string', multiple: true },
  'max-orders-per-hour': { type: 'string' },
  verbose: { type: 'boolean' }
} as const

const ORDER_HELP = `${STORE_HELP}

${CA_HELP}
  --profile NAME            ACME_PROFILE         the fleet's certificate profile; default: the CA's
renew and revoke have no default CA: name the fleet's, where its account is registered (a
comma-separated list is the fleet's fallback list, first CA first, as the example server reads it).

Order:
  --key-type T              ecdsa or rsa (repeatable): which of the name's certificates; default: every one stored
  --max-orders-per-hour N   the fleet's maxOrdersPerHour: the order counts against its budget; default: 100
  --verbose                 the plugin's log lines on stderr (JSON, secrets scrubbed)
  --json                    the result as JSON

The order's HTTP-01 answer is written to the store, where the running instances answer
the CA from: this command opens no port. They adopt the new certificate at their next
look at the renewal information (at most the CA's Retry-After, capped at 12 h, plus
5 minutes), or at restart; with a CA that publishes no renewal information, at their
own renewal time or restart.`

/** What the command orders with: the fleet's CA (or fallback list), contact, profile and budget, as the example server reads them. */
interface OrderSettings {
  domain: string
  directoryUrl: string[]
  email: string | undefined
  profile: string | undefined
  maxOrdersPerHour: number | undefined
  keyTypes: KeyType[] | undefined
  verbose: boolean
}

/** The order's settings from the flags over the environment (the example server's variables). Throws CliError for a bad one. */
function orderSettings (values: Values, positionals: string[], env: NodeJS.ProcessEnv): OrderSettings {
  const domain = normalizeListed(positionals[0] as string)
  if (domain === undefined) throw new CliError(`${JSON.stringify(positionals[0])} is not a name a CA issues for (a host name, *.<host name> or an IP address)`)
  // No default: another CA than the fleet's would register the fleet's key there as a new account.
  const urls = caDirectories(values, env)
  if (urls === undefined) throw new CliError('name the fleet\'s CA, where its account is registered: --directory-url or ACME_DIRECTORY_URL')
  const email = text(values, 'email') ?? (env.ACME_EMAIL || undefined)
  const profile = text(values, 'profile') ?? (env.ACME_PROFILE || undefined)
  const budget = text(values, 'max-orders-per-hour')
  let maxOrdersPerHour: number | undefined
  if (budget !== undefined) {
    maxOrdersPerHour = Number(budget)
    if (!Number.isInteger(maxOrdersPerHour) || maxOrdersPerHour < 1) throw new CliError(`--max-orders-per-hour ${JSON.stringify(budget)}: expected a positive whole number, the fleet's maxOrdersPerHour`)
  }
  const given = values['key-type'] as string[] | undefined
  const bad = given?.find((type) => !(KEY_TYPES as readonly string[]).includes(type))
  if (bad !== undefined) throw new CliError(`--key-type ${JSON.stringify(bad)}: expected ecdsa or rsa`)
  return {
    domain,
    directoryUrl: urls,
    email,
    profile,
    maxOrdersPerHour,
    keyTypes: given === undefined ? undefined : [...new Set(given as KeyType[])],
    verbose: values.verbose === true
  }
}

/**
 * The key types of `domain` the command works on: those asked for, each of
 * which must be stored, or else every one stored. A name with none in the
 * store is an error: its first certificate is the fleet's to obtain, and a
 * mistyped name must not cost an order.
 */
async function storedKeyTypes (store: CertStore, describe: string, { domain, keyTypes }: OrderSettings): Promise<KeyType[]> {
  const stored: KeyType[] = []
  for (const type of KEY_TYPES) {
    if (await readBounded(store, storeKeys.certificate(domain, type), storeLimits.certificate) !== undefined) stored.push(type)
  }
  if (stored.length === 0) throw new CliError(`no certificate of ${domain} in ${describe}: the fleet obtains a name's first certificate itself`)
  const missing = keyTypes?.find((type) => !stored.includes(type))
  if (missing !== undefined) throw new CliError(`no ${missing} certificate of ${domain} in ${describe} (stored: ${stored.join(', ')})`)
  return keyTypes ?? stored
}

/** The plugin's log lines as JSON on stderr with --verbose (through Output.note, so scrubbed), else nothing. */
function cliLogger (out: Output, verbose: boolean): Logger {
  const line = (level: string) => (obj: object, msg: string): void => { if (verbose) out.note(JSON.stringify({ level, msg, ...obj })) }
  return { debug: line('debug'), info: line('info'), warn: line('warn'), error: line('error') }
}

/**
 * Runs `work` on an AutocertServer for `domain` alone, on the fleet's store
 * with the fleet's account: loaded from the store (ready), never started, so
 * it orders nothing of its own, arms no timer and opens no port; closed after.
 * Resolves with the name's certificates as they were before and after.
 */
async function withFleetAccount (ctx: CommandContext, command: string, work: (autocert: AutocertServer) => Promise<unknown>): Promise<{ settings: OrderSettings, before: DomainStatus[], after: DomainStatus[] }> {
  const settings = orderSettings(ctx.values, ctx.positionals, ctx.io.env)
  const opened = await ctx.existingStore()
  const keyType = await storedKeyTypes(opened.store, opened.describe, settings)
  // Never a new account: the one the fleet registered is the one that orders, and the only one that may revoke.
  if (await readBounded(opened.store, storeKeys.account, storeLimits.account) === undefined) {
    throw new CliError(`no ACME account in ${opened.describe}: the fleet registers it with its first order`)
  }
  const autocert = createAutocert({
    domains: [settings.domain],
    store: opened.store,
    directoryUrl: settings.directoryUrl,
    termsOfServiceAgreed: true,
    keyType,
    // Named in the fleet's lock while the order holds it (status().lockHolder, the list command).
    instanceId: cliHolder(command),
    logger: cliLogger(ctx.out, settings.verbose),
    email: settings.email,
    profile: settings.profile,
    maxOrdersPerHour: settings.maxOrdersPerHour
  })
  try {
    await autocert.ready()
    const before = autocert.status()
    await work(autocert)
    return { settings, before, after: autocert.status() }
  } finally {
    await autocert.close()
  }
}

function iso (date: Date | undefined): string | undefined {
  return date?.toISOString()
}

const ADOPTION = 'The running instances adopt it at their next look at the renewal information, or at restart.'

export const renew: Command = {
  name: 'renew',
  summary: 'order a new certificate for a name now, with the fleet\'s account and under its lock',
  usage: 'renew <domain> [options]',
  help: ORDER_HELP,
  options: ORDER_FLAGS,
  positionals: { min: 1, max: 1 },
  async run (ctx) {
    const { settings, before, after } = await withFleetAccount(ctx, 'renew', async (autocert) => await autocert.renew(ctx.positionals[0] as string))
    const certificates = after.map((now) => {
      const was = before.find((b) => b.keyType === now.keyType)?.serial
      return { keyType: now.keyType, serial: now.serial as string, notAfter: iso(now.notAfter) as string, ...(was === undefined ? {} : { previousSerial: was }) }
    })
    const { out } = ctx
    if (out.json) {
      out.writeJson({ domain: settings.domain, certificates })
      return EXIT.ok
    }
    for (const c of certificates) {
      out.line(`renewed ${settings.domain} (${c.keyType}): serial ${out.paint('bold', c.serial)}, not after ${c.notAfter}${c.previousSerial === undefined ? '' : `, replacing ${c.previousSerial}`}`)
    }
    out.line(out.paint('dim', ADOPTION))
    return EXIT.ok
  }
}

export const revoke: Command = {
  name: 'revoke',
  summary: 'replace a name\'s certificates, then revoke the old ones at the CA with the fleet\'s account',
  usage: 'revoke <domain> [--reason R] [options]',
  help: `Revocation:
  --reason R                ${Object.keys(REVOCATION_REASONS).join(', ')}; default: none given

Each certificate is replaced first (one order each), so the name is never left without one.

${ORDER_HELP}`,
  options: { ...ORDER_FLAGS, reason: { type: 'string' } },
  positionals: { min: 1, max: 1 },
  async run (ctx) {
    const reason = ctx.values.reason as string | undefined
    // Checked before anything is read or asked of the CA.
    if (reason !== undefined && !Object.hasOwn(REVOCATION_REASONS, reason)) {
      throw new CliError(`--reason ${JSON.stringify(reason)} is not a revocation reason: one of ${Object.keys(REVOCATION_REASONS).join(', ')}`)
    }
    const revoked: Array<{ keyType: KeyType, serial: string, replacement: string }> = []
    let done
    try {
      done = await withFleetAccount(ctx, 'revoke', async (autocert) => {
        autocert.on('revoked', ({ keyType, serial, replacement }) => { revoked.push({ keyType, serial, replacement }) })
        return await autocert.revoke(ctx.positionals[0] as string, reason as Exclude<RevocationReason, number> | undefined)
      })
    } catch (err) {
      // One key type revoked, the next failed: the operator must know which is gone.
      for (const r of revoked) ctx.out.note(`fastify-autocert revoke: revoked before the failure: ${r.keyType} serial ${r.serial}, replaced by ${r.replacement}`)
      throw err
    }
    const { settings, after } = done
    const certificates = revoked.map(({ keyType, serial, replacement }) => ({
      keyType,
      revokedSerial: serial,
      replacement: { serial: replacement, notAfter: iso(after.find((now) => now.keyType === keyType)?.notAfter) as string }
    }))
    const { out } = ctx
    if (out.json) {
      out.writeJson({ domain: settings.domain, reason: reason ?? null, certificates })
      return EXIT.ok
    }
    for (const c of certificates) {
      out.line(`revoked ${settings.domain} (${c.keyType}): serial ${out.paint('bold', c.revokedSerial)}${reason === undefined ? '' : `, reason ${reason}`}; replaced by ${c.replacement.serial}, not after ${c.replacement.notAfter}`)
    }
    out.line(out.paint('dim', ADOPTION))
    return EXIT.ok
  }
}
