import http from 'node:http'
import type { AddressInfo } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { Registry } from 'prom-client'
import t, { type Test } from 'tap'
import { metricsServer, registerAutocertMetrics } from '../example/metrics'
import autocert, { AzureBlobStore, SNICallback, type AutocertOptions } from '../lib'
import { eventually } from './support/app'
import type { Pebble } from './support/pebble'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

const DOMAIN = 'm.example.test'

t.test('Prometheus metrics of example/metrics.ts, scraped over HTTP, on real Pebble, Azurite and TLS', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const store = (container: string): AutocertOptions['store'] => ({ connectionString: azurite.connectionString, container })
  // Answers Pebble's HTTP-01 requests for every app below that shares its container.
  const main = await startMetricsApp(t, pebble, {
    domains: [DOMAIN], store: store('metrics'), http01: { port: httpPort, host: '127.0.0.1' }, instanceId: 'instance-1'
  })

  await t.test('obtained and renewed at 1; expiry of the certificate served, next renewal of status()', async (t) => {
    await eventually(() => main.app.autocert.status()[0].serial !== undefined)
    const first = main.app.autocert.status()[0].serial
    await main.app.autocert.renew(DOMAIN)
    const served = await handshake(main.port, DOMAIN, root)
    t.not(served.serial, first, 'the renewed certificate is served')
    const { renewAt } = main.app.autocert.status()[0]
    t.ok(renewAt, 'a renewal is scheduled')

    const m = await main.scrape()
    t.equal(m.value('autocert_certificates_obtained_total', { domain: DOMAIN }), 1)
    t.equal(m.value('autocert_certificates_renewed_total', { domain: DOMAIN }), 1)
    t.equal(m.value('autocert_certificates_loaded_total', { domain: DOMAIN }), 0, 'counters start at 0: nothing was in the store')
    t.equal(m.value('autocert_failures_total', { domain: DOMAIN }), 0)
    t.equal(m.value('autocert_backoffs_total', { domain: DOMAIN, reason: 'failures' }), 0)
    t.equal(m.value('autocert_backoffs_total', { domain: DOMAIN, reason: 'budget' }), 0)
    t.equal(m.value('autocert_lock_waits_total', { domain: DOMAIN }), 0)
    t.equal(m.value('autocert_certificate_expiry_seconds', { domain: DOMAIN }), served.validTo.getTime() / 1000, 'the served notAfter, Unix seconds')
    t.equal(m.value('autocert_next_renewal_seconds', { domain: DOMAIN }), (renewAt as Date).getTime() / 1000, 'status().renewAt, Unix seconds')
    t.equal(m.value('autocert_backoff_until_seconds', { domain: DOMAIN }), 0)
    t.same(m.series('autocert_lock_held'), [], 'no lock held')
    t.same(Object.fromEntries([...m.types].filter(([name]) => name.startsWith('autocert_'))), {
      autocert_certificates_obtained_total: 'counter',
      autocert_certificates_renewed_total: 'counter',
      autocert_certificates_loaded_total: 'counter',
      autocert_failures_total: 'counter',
      autocert_backoffs_total: 'counter',
      autocert_lock_waits_total: 'counter',
      autocert_certificate_expiry_seconds: 'gauge',
      autocert_next_renewal_seconds: 'gauge',
      autocert_backoff_until_seconds: 'gauge',
      autocert_lock_held: 'gauge'
    }, 'every metric, with its type')
  })

  await t.test('lock waits: the holder while this instance waits, gone once it is released', async (t) => {
    const waits: Array<string | undefined> = []
    const onWait = ({ holder }: { holder?: string }): void => { waits.push(holder) }
    main.app.autocert.on('lock-wait', onWait)
    t.teardown(() => { main.app.autocert.off('lock-wait', onWait) })
    const other = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'metrics' })
    t.teardown(() => other.close())
    const held = await other.lock(DOMAIN, undefined, { holder: 'instance-9' })
    let renewing: Promise<unknown> | undefined
    try {
      renewing = main.app.autocert.renew(DOMAIN)
      await eventually(() => main.app.autocert.status()[0].lockHolder === 'instance-9')
      const m = await main.scrape()
      t.same(m.series('autocert_lock_held'), [{ name: 'autocert_lock_held', labels: { domain: DOMAIN, holder: 'instance-9' }, value: 1 }])
      // The holder's name is written just after its lease is taken: a first wait may not know it yet.
      t.ok(waits.length >= 1 && waits.at(-1) === 'instance-9', 'lock-wait events, the last naming the holder')
      t.equal(m.value('autocert_lock_waits_total', { domain: DOMAIN }), waits.length, 'one per lock-wait event')
      const labelNames = new Set(m.samples.filter((s) => s.name.startsWith('autocert_')).flatMap((s) => Object.keys(s.labels)))
      t.same([...labelNames].sort(), ['domain', 'holder', 'reason'], 'no label but these three')
    } finally {
      await held.release()
      await renewing
    }
    const m = await main.scrape()
    t.same(m.series('autocert_lock_held'), [], 'no lock held once the renewal is done')
    t.equal(m.value('autocert_certificates_renewed_total', { domain: DOMAIN }), 2)
  })

  await t.test('loaded: a second instance takes the certificate from the store at start-up', async (t) => {
    const second = await startMetricsApp(t, pebble, { domains: [DOMAIN], store: store('metrics'), instanceId: 'instance-2' })
    const m = await second.scrape()
    t.equal(m.value('autocert_certificates_loaded_total', { domain: DOMAIN }), 1, 'counted: the metrics were registered before ready()')
    t.equal(m.value('autocert_certificates_obtained_total', { domain: DOMAIN }), 0)
    const { notAfter } = main.app.autocert.status()[0]
    t.equal(m.value('autocert_certificate_expiry_seconds', { domain: DOMAIN }), (notAfter as Date).getTime() / 1000, 'the fleet\'s certificate')
  })

  await t.test('failures and backoff: an order the CA cannot validate', async (t) => {
    // No HTTP-01 listener of its own, and its challenges in a container the first app's listener does not read.
    const failing = await startMetricsApp(t, pebble, { domains: ['fail.example.test'], store: store('metrics-failing'), retryDelays: [3_600_000] })
    await eventually(() => failing.app.autocert.status()[0].retryAfter !== undefined)
    const { retryAfter, renewAt } = failing.app.autocert.status()[0]
    const domain = 'fail.example.test'
    const m = await failing.scrape()
    t.equal(m.value('autocert_failures_total', { domain }), 1)
    t.equal(m.value('autocert_backoffs_total', { domain, reason: 'failures' }), 1)
    t.equal(m.value('autocert_backoffs_total', { domain, reason: 'budget' }), 0)
    t.equal(m.value('autocert_certificates_obtained_total', { domain }), 0)
    const until = m.value('autocert_backoff_until_seconds', { domain }) as number
    t.equal(until, (retryAfter as Date).getTime() / 1000, 'status().retryAfter, Unix seconds')
    t.ok(until > Date.now() / 1000, 'in the future')
    t.equal(m.value('autocert_next_renewal_seconds', { domain }), (renewAt as Date).getTime() / 1000, 'the retry')
    t.equal(m.value('autocert_certificate_expiry_seconds', { domain }), 0, 'no certificate served')
  })

  await t.test('cardinality: the series of an on-demand name go when it is dropped from memory', async (t) => {
    const onDemand = await startMetricsApp(t, pebble, {
      domains: [], store: store('metrics'), onDemand: { allow: (name) => name.endsWith('.od.example.test'), cacheSize: 1 }
    })
    await handshake(onDemand.port, 'one.od.example.test', root)
    // Served before it is stored; a name whose order is still writing is not dropped.
    await eventually(() => onDemand.app.autocert.status().every((s) => s.lockHolder === undefined))
    const before = await onDemand.scrape()
    t.equal(before.value('autocert_certificates_obtained_total', { domain: 'one.od.example.test' }), 1)

    await handshake(onDemand.port, 'two.od.example.test', root)
    t.same(onDemand.app.autocert.status().map((d) => d.domain), ['two.od.example.test'], 'one.od.example.test dropped (cacheSize 1)')
    const after = await onDemand.scrape()
    t.equal(after.value('autocert_certificates_obtained_total', { domain: 'two.od.example.test' }), 1)
    const domains = new Set(after.samples.filter((s) => s.name.startsWith('autocert_')).map((s) => s.labels.domain))
    t.same([...domains], ['two.od.example.test'], 'no series names the dropped name')
  })
})

interface MetricsApp {
  app: FastifyInstance
  /** HTTPS port (127.0.0.1). */
  port: number
  /** GET /metrics from the metrics server, parsed. */
  scrape (): Promise<Exposition>
}

/** An HTTPS app with the plugin and its metrics server, set up as example/metrics-server.ts does; closed when `t` ends. */
async function startMetricsApp (t: Test, pebble: Pebble, options: Partial<AutocertOptions> & Pick<AutocertOptions, 'domains' | 'store'>): Promise<MetricsApp> {
  const app = Fastify({ https: { SNICallback } })
  t.teardown(() => app.close())
  await app.register(autocert, { directoryUrl: pebble.directoryUrl, termsOfServiceAgreed: true, email: 'ops@example.test', ...options })
  const registry = new Registry()
  registerAutocertMetrics(app.autocert, registry)
  const metrics = metricsServer(registry, app.log)
  app.addHook('onClose', () => metrics.close())
  await metrics.listen({ port: 0, host: '127.0.0.1' })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const metricsPort = (metrics.server.address() as AddressInfo).port
  return {
    app,
    port: (app.server.address() as AddressInfo).port,
    scrape: async () => {
      const { status, type, body } = await get(metricsPort, '/metrics')
      if (status !== 200 || type !== registry.contentType) throw new Error(`GET /metrics: ${status} ${type}\n${body}`)
      return parseExposition(body)
    }
  }
}

function get (port: number, path: string): Promise<{ status?: number, type?: string, body: string }> {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { body += chunk })
      res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'], body }))
    }).on('error', reject)
  })
}

interface Sample { name: string, labels: Record<string, string>, value: number }

class Exposition {
  constructor (readonly types: Map<string, string>, readonly samples: Sample[]) {}

  series (name: string): Sample[] {
    return this.samples.filter((s) => s.name === name)
  }

  /** The value of the series with exactly these labels; undefined when there is none. */
  value (name: string, labels: Record<string, string>): number | undefined {
    const key = JSON.stringify(Object.entries(labels).sort())
    const found = this.series(name).filter((s) => JSON.stringify(Object.entries(s.labels).sort()) === key)
    if (found.length > 1) throw new Error(`${name}${key}: ${found.length} series`)
    return found[0]?.value
  }
}

const METRIC_NAME = /[a-zA-Z_:][a-zA-Z0-9_:]*/y
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"([,}])/y
const VALUE = /^ (\S+)(?: -?\d+)?$/

/**
 * The Prometheus text format (0.0.4), as prom-client writes it: `# HELP`,
 * `# TYPE`, and `name{label="value",...} value [timestamp]` lines. A line it
 * cannot read throws: a malformed exposition fails the test.
 */
function parseExposition (text: string): Exposition {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  for (const [i, line] of text.split('\n').entries()) {
    const bad = (): Error => new Error(`exposition line ${i + 1} unreadable: ${JSON.stringify(line)}`)
    if (line === '') continue
    if (line.startsWith('#')) {
      const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line)
      if (type !== null) types.set(type[1], type[2])
      else if (!line.startsWith('# HELP ')) throw bad()
      continue
    }
    METRIC_NAME.lastIndex = 0
    const name = METRIC_NAME.exec(line)?.[0]
    if (name === undefined) throw bad()
    let pos = name.length
    const labels: Record<string, string> = {}
    if (line[pos] === '{') {
      pos++
      for (let end = false; !end;) {
        LABEL.lastIndex = pos
        const label = LABEL.exec(line)
        if (label === null || label[1] in labels) throw bad()
        labels[label[1]] = label[2].replace(/\\([\\"n])/g, (_, c: string) => c === 'n' ? '\n' : c)
        pos = LABEL.lastIndex
        end = label[3] === '}'
      }
    }
    const value = VALUE.exec(line.slice(pos))?.[1]
    const number = value === '+Inf' ? Infinity : value === '-Inf' ? -Infinity : Number(value)
    if (value === undefined || (Number.isNaN(number) && value !== 'NaN')) throw bad()
    samples.push({ name, labels, value: number })
  }
  return new Exposition(types, samples)
}
