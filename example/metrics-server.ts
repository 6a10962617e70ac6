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
import { collectDefaultMetrics, Registry } from 'prom-client'
import { fastifyServer, launch, onSignal, settings } from './common'
import { metricsServer, registerAutocertMetrics } from './metrics'

async function main (): Promise<void> {
  const config = settings()
  const app = await fastifyServer(config)

  const registry = new Registry()
  // Node's own metrics (CPU, memory, event loop lag) beside the plugin's.
  collectDefaultMetrics({ register: registry })
  // Before listen(): the certificates loaded from the store at start-up are counted.
  registerAutocertMetrics(app.autocert, registry)
  const metrics = metricsServer(registry, app.log.child({ listener: 'metrics' }))
  app.addHook('onClose', () => metrics.close())

  onSignal(async () => { await app.close() })
  // Listening first, Prometheus sees the first certificates being obtained.
  await metrics.listen({ host: process.env.METRICS_HOST || '127.0.0.1', port: Number(process.env.METRICS_PORT || 9464) })
  await app.listen({ host: config.host, port: config.httpsPort })
}

/** In the playground (playground.ts) the metrics get a free port, and a scrape is shown once the self-check passed. */
async function inPlayground (run: () => Promise<void>): Promise<void> {
  // Loaded only here: a deployed server never loads the test helpers.
  const { freePort } = await import('../test/support/ports.js')
  const port = await freePort()
  // The playground starts the server with this process's environment plus its own settings.
  process.env.METRICS_PORT = String(port)
  await run()
  // Resolved: the self-check passed and everything keeps running until Ctrl-C.
  const url = `http://127.0.0.1:${port}/metrics`
  const res = await fetch(url)
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`)
  const lines = (await res.text()).split('\n').filter((line) => line.startsWith('autocert_'))
  console.log(`Metrics (curl ${url}), the plugin's:\n${lines.map((line) => `  ${line}`).join('\n')}\n`)
}

launch(__filename, main, inPlayground)
