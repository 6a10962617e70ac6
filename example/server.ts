/*
 * A deployable HTTPS server whose certificates come from an ACME CA (Let's
 * Encrypt) and are shared by every instance through Azure Blob Storage.
 * Configured by environment variables:
 *
 *   DOMAINS                          host names to serve, comma-separated (required)
 *   AZURE_STORAGE_CONNECTION_STRING  where certificates and the ACME account live (required)
 *   AZURE_STORAGE_CONTAINER          default autocertcache (created if missing)
 *   ACME_DIRECTORY_URL               'staging' (default), 'production' or an https:// directory URL
 *   ACME_EMAIL                       contact for the ACME account (expiry notices), optional
 *   HOST                             default 0.0.0.0
 *   HTTPS_PORT                       default 443
 *   HTTP_PORT                        default 80: answers HTTP-01 challenges, redirects the rest to https
 *
 * A private CA's own TLS certificate is trusted through Node's NODE_EXTRA_CA_CERTS.
 * Running this accepts the CA's terms of service (termsOfServiceAgreed below).
 *
 * With neither ACME_DIRECTORY_URL nor AZURE_STORAGE_CONNECTION_STRING set,
 * `npm run example` starts a local playground instead: see playground.ts.
 * In your own project, import from 'fastify-autocert' instead of '../lib'.
 */
import Fastify from 'fastify'
import autocert, { AzureBlobStore, SNICallback } from '../lib'

async function main (): Promise<void> {
  const env = process.env
  const domains = required('DOMAINS', 'the host names to serve, e.g. DOMAINS=example.com,www.example.com')
    .split(',').map((name) => name.trim()).filter((name) => name !== '')
  const connectionString = required('AZURE_STORAGE_CONNECTION_STRING', 'copy it from the storage account\'s "Access keys" page')

  const store = new AzureBlobStore({ connectionString, container: env.AZURE_STORAGE_CONTAINER || 'autocertcache' })
  const app = Fastify({ https: { SNICallback }, logger: true })
  app.addHook('onClose', () => store.close())
  await app.register(autocert, {
    domains,
    email: env.ACME_EMAIL || undefined,
    directoryUrl: env.ACME_DIRECTORY_URL || 'staging',
    termsOfServiceAgreed: true,
    store,
    http01: { port: Number(env.HTTP_PORT || 80), host: env.HOST || '0.0.0.0' }
  })

  app.get('/', async (request) => `Hello from ${request.hostname}, served over HTTPS by fastify-autocert.\n`)
  app.get('/status', async () => app.autocert.status())

  // Repeated signals (a terminal's Ctrl-C and a supervisor's SIGTERM) close once.
  let closing = false
  const shutdown = (signal: NodeJS.Signals): void => {
    if (closing) return
    closing = true
    app.log.info({ signal }, 'shutting down')
    app.close().catch((err: unknown) => {
      app.log.error({ err }, 'shutdown failed')
      process.exitCode = 1
    })
  }
  process.on('SIGINT', shutdown)
  process.on('SIGTERM', shutdown)

  await app.listen({ host: env.HOST || '0.0.0.0', port: Number(env.HTTPS_PORT || 443) })
}

function required (name: string, hint: string): string {
  const value = process.env[name]
  if (!value) throw new Error(`${name} is not set: ${hint}`)
  return value
}

function fail (err: unknown): void {
  console.error(err instanceof Error ? err.message : err)
  process.exit(1)
}

if (!process.env.ACME_DIRECTORY_URL && !process.env.AZURE_STORAGE_CONNECTION_STRING) {
  // Loaded only here: a deployed server never loads the playground or its test helpers.
  import('./playground.js').then(({ playground }) => playground(__filename)).catch(fail)
} else {
  main().catch(fail)
}
