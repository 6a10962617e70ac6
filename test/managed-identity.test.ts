import { X509Certificate } from 'node:crypto'
import { inspect } from 'node:util'
import t from 'tap'
import { AzureBlobStore } from '../lib'
import { startApp, eventually } from './support/app'
import { entraCredential, startAzurite, trustAzurite, type Azurite, type TokenClaims } from './support/azurite'
import { startPebble, trustPebble, type Pebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

// The README's recommended store, { accountUrl, credential } (managed identity), on
// an Azurite that checks bearer tokens (--oauth basic, over HTTPS): the SDK's real
// bearer path, with tokens shaped like Microsoft Entra ID's.

const AUTH_FAILED = 'store authentication failed: check the credential or its role assignment'

const rejection = (p: Promise<unknown>): Promise<unknown> => p.then(
  () => { throw new Error('expected a rejection') },
  (err: unknown) => err
)

// Everything an error can show: message, stack, every property and its cause, hidden ones too.
const everything = (err: unknown): string => [
  String((err as Error).message), String((err as Error).stack), inspect(err, { depth: Infinity, showHidden: true }), JSON.stringify(err)
].join('\n')

// A token must not appear whole, nor its signature (the part that is unique to it).
const leaks = (text: string, tokens: string[]): string[] =>
  tokens.filter((token) => text.includes(token) || text.includes(token.split('.')[2]))

let azurite: Azurite
t.before(async () => {
  azurite = await startAzurite({ oauth: true })
  t.teardown(trustAzurite(azurite))
})
t.teardown(() => azurite.stop())

let n = 0
const container = (): string => `mi-${process.pid}-${++n}`

t.test('a certificate from Pebble, stored with a TokenCredential, served and read back', async (t) => {
  const httpPort = await freePort()
  const pebble: Pebble = await startPebble({ httpPort })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const root = await pebble.root()

  const name = container()
  const credential = entraCredential()
  const store = new AzureBlobStore({ accountUrl: azurite.blobEndpoint, credential, container: name })
  const app = await startApp(pebble, httpPort, store, { domains: ['mi.example.test'] })
  t.teardown(() => app.app.close())
  await eventually(() => app.app.autocert.status().every((s) => s.serial !== undefined))
  const serial = app.app.autocert.status()[0].serial

  const served = await handshake(app.port, 'mi.example.test', root)
  t.ok(served.authorized, 'the served chain verifies against Pebble\'s root')
  t.equal(served.subject, 'mi.example.test')
  t.equal(served.serial, serial)
  t.equal(pebble.orderCount(), 1, 'one order')
  t.ok(credential.issued.length > 0, 'the store asked its credential for tokens')

  // Another instance, with a credential of its own, reads what the first one wrote.
  const other = new AzureBlobStore({ accountUrl: azurite.blobEndpoint, credential: entraCredential(), container: name })
  t.teardown(() => other.close())
  const pem = (await other.get('mi.example.test'))?.toString() ?? ''
  t.match(pem, /^-----BEGIN (EC )?PRIVATE KEY-----/, 'key first (autocert format)')
  const leaf = new X509Certificate(pem.slice(pem.indexOf('-----BEGIN CERTIFICATE-----')))
  t.equal(leaf.serialNumber.toUpperCase(), serial, 'the served certificate is the stored one')
  t.ok((await other.list()).includes('acme_account+key'), 'the account key is in the store too')
  t.same(leaks(JSON.stringify(app.logs), credential.issued), [], 'no token in the app\'s logs')
})

// What Azurite answers for each bad token, in error.details.authenticationErrorDetail.
// A missing role (Azure's 403 AuthorizationPermissionMismatch) cannot be shown:
// Azurite has no role assignments and lets any valid token do anything.
const now = (): number => Math.floor(Date.now() / 1000)
const BAD_TOKENS: Array<[string, () => TokenClaims, string]> = [
  ['an expired token', () => ({ nbf: now() - 7200, iat: now() - 7200, exp: now() - 3600 }), 'Lifetime validation failed. The token is expired.'],
  ['a token for another audience', () => ({ aud: 'https://vault.azure.net' }), 'Invalid token audience.'],
  ['a token from another issuer', () => ({ iss: 'https://login.example.test/tenant/' }), 'Invalid token issuer.']
]

t.test('a token Azure Storage refuses: the reason, the fix, never the token', async (t) => {
  for (const [what, claims, reason] of BAD_TOKENS) {
    await t.test(what, async (t) => {
      const credential = entraCredential(claims())
      const store = new AzureBlobStore({ accountUrl: azurite.blobEndpoint, credential, container: container() })
      t.teardown(() => store.close())
      for (const [call, run] of [
        ['get', () => store.get('a.example.test')],
        ['put', () => store.put('a.example.test', 'x')],
        ['list', () => store.list()],
        ['lock', () => store.lock('a.example.test')]
      ] as const) {
        const err = await rejection(run())
        t.match(err, { code: 'FST_AUTOCERT_STORE_AUTH' }, `${call}: coded`)
        t.ok((err as Error).message.includes(AUTH_FAILED), `${call}: the message says what to check`)
        t.ok((err as Error).message.includes(`403 AuthenticationFailed: ${reason}`), `${call}: the message gives Azurite's reason`)
        t.match((err as Error).cause, { statusCode: 403, code: 'AuthenticationFailed', details: { authenticationErrorDetail: reason } },
          `${call}: the cause is the service's answer`)
        t.ok(credential.issued.length > 0, `${call}: the token was sent`)
        t.same(leaks(everything(err), credential.issued), [], `${call}: the token appears nowhere in the error`)
      }
    })
  }
})

t.test('through the plugin, the log line says so, without the token', async (t) => {
  const httpPort = await freePort()
  const pebble = await startPebble({ httpPort })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  const [, claims, reason] = BAD_TOKENS[0]
  const credential = entraCredential(claims())
  const store = new AzureBlobStore({ accountUrl: azurite.blobEndpoint, credential, container: container() })
  const app = await startApp(pebble, httpPort, store, { domains: ['expired.example.test'] })
  t.teardown(() => app.app.close())
  const failed = (): Array<Record<string, unknown>> => app.logs.filter((l) => l.msg === 'certificate store read failed')
  await eventually(() => failed().length > 0)
  const message = String((failed()[0].error as { message?: unknown }).message)
  t.ok(message.includes(AUTH_FAILED), 'the log line says what to check')
  t.ok(message.includes(reason), 'and why Azurite refused')
  t.match(failed()[0].error, { code: 'FST_AUTOCERT_STORE_AUTH' })
  t.equal(pebble.orderCount(), 0, 'no order while the store cannot be read')
  t.same(leaks(JSON.stringify(app.logs), credential.issued), [], 'the token is in no log line')
})

t.test('a getToken() that throws or returns nothing names the store\'s credential', async (t) => {
  const cause = new Error('ManagedIdentityCredential: no managed identity endpoint found')
  const cases: Array<[string, () => Promise<null>, string]> = [
    ['throws', async () => { throw cause }, 'AzureBlobStore: options.credential.getToken() failed: ManagedIdentityCredential: no managed identity endpoint found'],
    ['returns null', async () => null, 'AzureBlobStore: options.credential.getToken() returned no token']
  ]
  for (const [what, getToken, message] of cases) {
    const store = new AzureBlobStore({ accountUrl: azurite.blobEndpoint, credential: { getToken }, container: container() })
    t.teardown(() => store.close())
    for (const [call, run] of [['get', () => store.get('a.example.test')], ['lock', () => store.lock('a.example.test')]] as const) {
      const err = await rejection(run())
      t.match(err, { code: 'FST_AUTOCERT_STORE_CREDENTIAL', message }, `${what}, ${call}: coded, and names options.credential`)
      if (what === 'throws') t.equal((err as Error).cause, cause, `${what}, ${call}: the credential's own error is the cause`)
    }
  }
})
