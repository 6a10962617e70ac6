// `fastify-autocert show <domain>`: a stored certificate's chain, whether it verifies, and whether its key matches.
import { createPrivateKey, X509Certificate } from 'node:crypto'
import { rootCertificates } from 'node:tls'
import type { KeyType } from '../acme/issuer'
import { CliError, EXIT, STORE_FLAGS, STORE_HELP, type Command, type CommandContext, type OpenedStore, type Output } from './context'
import { chainOf, daysLeft, fieldsOf, readDomain, storeLine, type CertificateFields } from './inspect'

/** What show reports of one stored certificate (the JSON output's `certificates`): why it cannot be used, or its details. */
export type ShownCertificate = { keyType: KeyType, storeKey: string } & ({ problem: string } | ShownDetails)

export interface ShownDetails {
  /** Leaf first, as stored. */
  chain: CertificateFields[]
  /**
   * Whether each certificate is signed by the next one (and names it as its
   * issuer), up to the last; `error` names the first link that fails.
   */
  verifies: { ok: boolean, error?: string }
  /**
   * Whether the last certificate is, or is issued by, a root of Node's own
   * store (the Mozilla roots: a public CA's chain ends there; a private or
   * test CA's does not, and is trusted only where its root is installed).
   */
  root: { trusted: boolean, issuer: string }
  /** Whether the stored private key is the leaf's. */
  keyMatches: boolean
  /** Whole days until the leaf expires (negative once past). */
  daysLeft: number
}

let roots: X509Certificate[] | undefined

/** The root of Node's store that is `cert` or issued it, if any. */
function trustedRoot (cert: X509Certificate): X509Certificate | undefined {
  roots ??= rootCertificates.map((pem) => new X509Certificate(pem))
  return roots.find((root) => root.fingerprint256 === cert.fingerprint256 || (cert.checkIssued(root) && cert.verify(root.publicKey)))
}

function inspect (chain: X509Certificate[], key: string): Pick<ShownDetails, 'verifies' | 'root' | 'keyMatches'> {
  let verifies: ShownDetails['verifies'] = { ok: true }
  for (let i = 0; i + 1 < chain.length; i++) {
    if (!chain[i].checkIssued(chain[i + 1]) || !chain[i].verify(chain[i + 1].publicKey)) {
      verifies = { ok: false, error: `certificate ${i + 1} is not signed by certificate ${i + 2}` }
      break
    }
  }
  const last = chain[chain.length - 1]
  let keyMatches: boolean
  try {
    keyMatches = chain[0].checkPrivateKey(createPrivateKey(key))
  } catch {
    keyMatches = false
  }
  return { verifies, root: { trusted: trustedRoot(last) !== undefined, issuer: fieldsOf(last).issuer }, keyMatches }
}

async function run ({ positionals, out, existingStore }: CommandContext): Promise<number> {
  const domain = positionals[0]
  const opened = await existingStore()
  const found = await readDomain(opened, domain)
  if (found === undefined) throw new CliError(`${JSON.stringify(domain)} is not a host name a certificate is issued for`)
  if (found.length === 0) throw new CliError(`no certificate for ${domain} in ${opened.describe}`)
  const now = Date.now()
  const shown: ShownCertificate[] = found.map((stored) => {
    if (stored.cert === undefined) return { keyType: stored.keyType, storeKey: stored.storeKey, problem: stored.problem }
    const chain = chainOf(stored.cert)
    return {
      keyType: stored.keyType,
      storeKey: stored.storeKey,
      chain: chain.map(fieldsOf),
      ...inspect(chain, stored.cert.key),
      daysLeft: daysLeft(stored.cert.notAfter, now)
    }
  })
  const name = found[0].name
  if (out.json) out.writeJson({ domain: name, store: opened.describe, certificates: shown })
  else print(out, opened, name, shown)
  const bad = shown.some((s) => 'problem' in s || !s.verifies.ok || !s.keyMatches || s.daysLeft < 0)
  return bad ? EXIT.attention : EXIT.ok
}

function print (out: Output, opened: OpenedStore, name: string, shown: ShownCertificate[]): void {
  out.line(storeLine(opened))
  for (const s of shown) {
    out.line()
    out.line(out.paint('bold', `${name} (${s.keyType}, store key ${s.storeKey})`))
    if ('problem' in s) {
      out.line(out.paint('red', `  ${s.problem}`))
      continue
    }
    for (const [i, c] of s.chain.entries()) {
      out.line(`  ${i + 1}. ${c.subject === '' ? '(empty subject)' : c.subject}`)
      if (c.names.length > 0) out.line(`     names:    ${c.names.join(', ')}`)
      out.line(`     issuer:   ${c.issuer}`)
      out.line(`     serial:   ${c.serial}`)
      out.line(`     validity: ${c.notBefore} to ${c.notAfter}`)
      out.line(`     key:      ${c.key}`)
    }
    const { verifies, root, keyMatches, daysLeft } = s
    out.line(`  chain:    ${verifies.ok ? out.paint('green', 'each certificate is signed by the next') : out.paint('red', `does not verify: ${String(verifies.error)}`)}`)
    out.line(`  root:     ${root.trusted
      ? out.paint('green', `issued by ${root.issuer}, one of Node's trusted roots`)
      : out.paint('yellow', `issued by ${root.issuer}, not one of Node's trusted roots (a private or test CA)`)}`)
    out.line(`  key:      ${keyMatches ? out.paint('green', 'the private key matches the leaf') : out.paint('red', 'the private key does not match the leaf')}`)
    out.line(`  expires:  ${daysLeft < 0 ? out.paint('red', `expired ${-daysLeft} days ago`) : `in ${daysLeft} days`}`)
  }
}

export const show: Command = {
  name: 'show',
  summary: 'a domain\'s certificates: the chain, whether it verifies, whether the key matches',
  usage: 'show <domain> [--json] [store flags]',
  help: `Options:
  --json                    the report as JSON

Every key type stored for the name (ECDSA <name>, RSA <name>+rsa). Exit code 1
when one cannot be used, its chain does not verify, its key does not match or
it has expired; 2 when the name has no certificate.

${STORE_HELP}`,
  options: { ...STORE_FLAGS },
  positionals: { min: 1, max: 1 },
  run
}
