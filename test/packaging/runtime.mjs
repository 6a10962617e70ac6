// Run by test/packaging.test.ts from a directory where 'fastify-autocert' is the
// packed package: prints what import gives, for the test to judge. Every named
// import below fails at link time if Node does not find it in the CommonJS module.
import Fastify from 'fastify'
import autocert, {
  ALPNCallback, AzureBlobStore, CHALLENGE_PATH, createAutocert, EncryptedStore, errors, fastifyAutocert, FileStore, MemoryStore, rfc2136, SNICallback
} from 'fastify-autocert'
import * as namespace from 'fastify-autocert'

const app = Fastify()
await app.register(autocert, { domains: ['example.com'], store: new MemoryStore(), termsOfServiceAgreed: true })
await app.ready()
const decorated = typeof app.autocert?.status === 'function' && app.autocert.status().length === 1
await app.close()

const named = { ALPNCallback, AzureBlobStore, CHALLENGE_PATH, createAutocert, EncryptedStore, errors, fastifyAutocert, FileStore, MemoryStore, rfc2136, SNICallback }
process.stdout.write(JSON.stringify({
  type: typeof autocert,
  skipOverride: autocert[Symbol.for('skip-override')] === true,
  displayName: autocert[Symbol.for('fastify.display-name')],
  defaultIsPlugin: autocert.default === autocert && namespace.default === autocert,
  namedIsPlugin: fastifyAutocert === autocert,
  namedAreProperties: Object.entries(named).every(([name, value]) => value !== undefined && value === autocert[name]),
  decorated,
  names: Object.keys(namespace).filter((name) => name !== 'module.exports').sort()
}))
