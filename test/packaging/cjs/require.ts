// CommonJS forms: `import x = require()`, and the plugin's properties.
import autocert = require('fastify-autocert')
import Fastify = require('fastify')

export async function commonjs (): Promise<void> {
  const app = Fastify({ https: { SNICallback: autocert.SNICallback } })
  await app.register(autocert, { domains: ['example.com'], store: new autocert.MemoryStore(), termsOfServiceAgreed: true })
  await app.register(autocert.fastifyAutocert, { domains: ['example.com'], store: new autocert.FileStore('certs'), termsOfServiceAgreed: true })
  const { fastifyAutocert, createAutocert, errors } = autocert
  const same: typeof autocert = fastifyAutocert
  const store: autocert.CertStore = new autocert.MemoryStore()
  const lockOptions: autocert.LockOptions = { holder: 'web-1' }
  void same
  void createAutocert
  void errors
  void store.lock('k', undefined, lockOptions)
}
