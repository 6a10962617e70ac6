/*
 * fastify-autocert's events and status() as Prometheus metrics, with prom-client.
 * Copy this file into your project (import from 'fastify-autocert' instead of
 * '../lib'); example/metrics-server.ts runs it (`npm run example:metrics`). The
 * metrics and their meaning: README.md, "Metrics (Prometheus)".
 *
 * Cardinality: every series names a domain that status() lists, that is one in
 * memory: the listed `domains` plus at most `onDemand.cacheSize` on-demand names.
 * The series of an on-demand name dropped from memory are removed at the next
 * scrape (its counters start from 0 if it comes back). `reason` has two values;
 * `holder` is an instanceId, shown only while a lock is held or waited for.
 * Label values are only these: never an error message (free text, unbounded),
 * a key, a certificate or a store setting.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import { Counter, Gauge, type Registry } from 'prom-client'
import type { Autocert, AutocertEvents, DomainStatus } from '../lib'

type Labels = Record<string, string>

// Every reason a backoff event can give: the compiler checks the list is complete.
const BACKOFF_REASONS = Object.keys({ failures: true, budget: true, clock: true } satisfies Record<AutocertEvents['backoff'][0]['reason'], true>)

/**
 * Adds the `autocert_` metrics to `registry`, fed by `autocert`'s events (counters)
 * and read from its status() at each scrape (gauges). `autocert` is
 * `fastify.autocert` or a createAutocert() server. Call it right after
 * registering the plugin, before `ready()` or `listen()`: the certificates
 * loaded from the store at start-up are `loaded` events.
 */
export function registerAutocertMetrics (autocert: Pick<Autocert, 'on' | 'status'>, registry: Registry): void {
  const inMemory = (): Set<string> => new Set(autocert.status().map((d) => d.domain))

  // A counter has a series from 0 for every domain in memory, not only from its
  // first event: Prometheus's increase() cannot see the event that creates a series.
  const counter = (name: string, help: string, reasons?: readonly string[]): (labels: Labels) => void => {
    const series = (domain: string): Labels[] => reasons === undefined ? [{ domain }] : reasons.map((reason) => ({ domain, reason }))
    // The domains this counter has series for, however they were created: what to remove once gone from memory.
    const labelled = new Set<string>()
    const metric = new Counter({
      name,
      help,
      labelNames: reasons === undefined ? ['domain'] : ['domain', 'reason'],
      registers: [registry],
      collect () {
        const now = inMemory()
        for (const domain of labelled) {
          if (now.has(domain)) continue
          for (const labels of series(domain)) this.remove(labels)
          labelled.delete(domain)
        }
        // Adding 0 creates a missing series and leaves the others as they are.
        for (const domain of now) {
          for (const labels of series(domain)) this.inc(labels, 0)
          labelled.add(domain)
        }
      }
    })
    return (labels) => {
      labelled.add(labels.domain)
      metric.inc(labels)
    }
  }

  // A gauge is rebuilt from status() at each scrape: names dropped from memory disappear.
  const gauge = (name: string, help: string, labelNames: string[], sample: (d: DomainStatus, set: (labels: Labels, value: number) => void) => void): void => {
    // eslint-disable-next-line no-new -- a prom-client metric registers itself with `registers`
    new Gauge({
      name,
      help,
      labelNames,
      registers: [registry],
      collect () {
        this.reset()
        for (const d of autocert.status()) sample(d, (labels, value) => this.set(labels, value))
      }
    })
  }
  const seconds = (date: Date | undefined): number => date === undefined ? 0 : date.getTime() / 1000

  const obtained = counter('autocert_certificates_obtained_total', 'Certificates this instance ordered for a domain it served none for.')
  const renewed = counter('autocert_certificates_renewed_total', 'Certificates this instance ordered to replace the one it served.')
  const loaded = counter('autocert_certificates_loaded_total', 'Certificates taken from the store: at start-up, or obtained by another instance.')
  const failures = counter('autocert_failures_total', 'Orders that failed and store reads that failed (see the log or status() for the error).')
  const backoffs = counter('autocert_backoffs_total', 'Times orders for the domain were held back until a retry time: after failures (shared by the fleet) or with the fleet\'s hourly order budget spent.', BACKOFF_REASONS)
  const lockWaits = counter('autocert_lock_waits_total', 'Times this instance waited for the domain\'s lock, held by another instance.')
  autocert.on('obtained', ({ domain }) => obtained({ domain }))
  autocert.on('renewed', ({ domain }) => renewed({ domain }))
  autocert.on('loaded', ({ domain }) => loaded({ domain }))
  autocert.on('failed', ({ domain }) => failures({ domain }))
  autocert.on('backoff', ({ domain, reason }) => backoffs({ domain, reason }))
  autocert.on('lock-wait', ({ domain }) => lockWaits({ domain }))

  // 0 rather than absent when no certificate is served: an expiry alert then fires for it too.
  gauge('autocert_certificate_expiry_seconds', 'Expiry (notAfter) of the certificate served, Unix seconds; 0 when none is served.', ['domain'],
    (d, set) => set({ domain: d.domain }, seconds(d.notAfter)))
  gauge('autocert_next_renewal_seconds', 'When this instance next tries to renew the certificate (or to obtain it, after a failure), Unix seconds.', ['domain'],
    (d, set) => { if (d.renewAt !== undefined) set({ domain: d.domain }, seconds(d.renewAt)) })
  gauge('autocert_backoff_until_seconds', 'Until when no order is placed for the domain (failure backoff or order budget), Unix seconds; 0 when none.', ['domain'],
    (d, set) => set({ domain: d.domain }, seconds(d.retryAfter)))
  gauge('autocert_lock_held', '1 while `holder` holds the domain\'s lock: this instance while it orders, another while this instance waits for it.', ['domain', 'holder'],
    (d, set) => { if (d.lockHolder !== undefined) set({ domain: d.domain, holder: d.lockHolder }, 1) })
}

/**
 * A plain-HTTP server answering `GET /metrics` from `registry`, on a port of
 * its own rather than a route of the HTTPS app: Prometheus scrapes an address
 * (no SNI name the plugin serves, so the handshake would be refused), a domain
 * whose certificate cannot be obtained is exactly when the metrics are needed,
 * and the metrics stay off the public port. It logs to `log` (the app's, say).
 */
export function metricsServer (registry: Registry, log: FastifyBaseLogger): FastifyInstance {
  const server = Fastify({ loggerInstance: log })
  // Errors only: a scrape every few seconds would fill the log with request lines.
  server.get('/metrics', { logLevel: 'warn' }, async (_request, reply) => reply.type(registry.contentType).send(await registry.metrics()))
  return server
}
