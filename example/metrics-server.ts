/*
 * The server of example/server.ts (same environment variables) with Prometheus
 * metrics (example/metrics.ts) on a plain-HTTP port of their own:
 *
 *   METRICS_PORT   default 9464: GET /metrics
 *   METRICS_HOST   default 127.0.0.1. Set 0.0.0.0 for a Prometheus on another host,
 *                  and keep the port off the internet (firewall, network security group).
 *
 * With neither ACME_DIRECTORY_URL nor AZURE_STORAGE_CONNECTION_STRING set,
 * `npm run example:metrics` runs it in the local playground (see playground.ts)
 * and shows a scrape once the self-check has passed.
 */
import Fastify from 'fastify'
import { collectDefaultMetrics, Registry } from 'prom-client'
import autocert, { AzureBlobStore, SNICallback } from '../lib'
import { metricsServer, registerAutocertMetrics } from './metrics'

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

  const registry = new Registry()
  // Node's own metrics (CPU, memory, event loop lag) beside the plugin's.
  collectDefaultMetrics({ register: registry })
  // Before listen(): the certificates loaded from the store at start-up are counted.
  registerAutocertMetrics(app.autocert, registry)
  const metrics = metricsServer(registry, app.log.child({ listener: 'metrics' }))
  app.addHook('onClose', () => metrics.close())

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

  // Listening first, Prometheus sees the first certificates being obtained.
  await metrics.listen({ host: env.METRICS_HOST || '127.0.0.1', port: Number(env.METRICS_PORT || 9464) })
  await app.listen({ host: env.HOST || '0.0.0.0', port: Number(env.HTTPS_PORT || 443) })
}

/** The playground (playground.ts) runs this file as its server, with the metrics on a free port. */
async function runPlayground (): Promise<void> {
  // Loaded only here: a deployed server never loads the playground or its test helpers.
  const [{ playground }, { freePort }] = await Promise.all([import('./playground.js'), import('../test/helpers/ports.js')])
  const port = await freePort()
  // The playground starts the server with this process's environment plus its own settings.
  process.env.METRICS_PORT = String(port)
  await playground(__filename)
  // Resolved: the self-check passed and everything keeps running until Ctrl-C.
  const url = `http://127.0.0.1:${port}/metrics`
  const res = await fetch(url)
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`)
  const lines = (await res.text()).split('\n').filter((line) => line.startsWith('autocert_'))
  console.log(`Metrics (curl ${url}), the plugin's:\n${lines.map((line) => `  ${line}`).join('\n')}\n`)
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
  runPlayground().catch(fail)
} else {
  main().catch(fail)
}
