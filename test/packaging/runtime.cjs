'use strict'
// Run by test/packaging.test.ts from a directory where 'fastify-autocert' is the
// packed package: prints what require() gives, for the test to judge.
const Fastify = require('fastify')
const autocert = require('fastify-autocert')
const { fastifyAutocert, SNICallback, MemoryStore } = require('fastify-autocert')

async function main () {
  // Registered at the root, the decorator is visible there only if fastify-plugin wrapped the plugin.
  const app = Fastify()
  await app.register(autocert, { domains: ['example.com'], store: new MemoryStore(), termsOfServiceAgreed: true })
  await app.ready()
  const decorated = typeof app.autocert?.status === 'function' && app.autocert.status().length === 1
  await app.close()
  process.stdout.write(JSON.stringify({
    type: typeof autocert,
    skipOverride: autocert[Symbol.for('skip-override')] === true,
    displayName: autocert[Symbol.for('fastify.display-name')],
    defaultIsPlugin: autocert.default === autocert,
    namedIsPlugin: fastifyAutocert === autocert,
    destructured: SNICallback === autocert.SNICallback && typeof SNICallback === 'function',
    decorated,
    names: Object.keys(autocert).sort()
  }))
}
main().catch((err) => { console.error(err); process.exitCode = 1 })
