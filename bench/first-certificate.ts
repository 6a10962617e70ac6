/*
 * Figure 3: time to the first certificate of a new listed domain, on Pebble
 * (no validation sleep). The plugin: an HTTPS app (test/support/app startApp:
 * Azure Blob store, HTTP-01 companion on Pebble's validation port) listing one
 * new domain; the clock starts when listen() resolves (its onListen hook has
 * just started the order: start() orders listed domains at once) and the first
 * handshake is sent at that moment; it stops when that handshake completes with
 * a chain that verifies against Pebble's root for the name. The baseline: the
 * same ACME steps with acme-client directly and the same polling, the HTTP-01
 * answer served from a Map by a bare node:http server on the same port.
 *
 * Two cases: a cold account (empty container: the plugin creates the account
 * key, stores it under the fleet lock and registers it; the baseline creates a
 * key and registers it), and a warm one (the key is in the store: the plugin
 * reads it and looks the account up; the baseline looks the same key up).
 */
import { X509Certificate } from 'node:crypto'
import { createServer, type Server } from 'node:http'
import * as acme from 'acme-client'
import { AzureBlobStore, type CertStore } from '../lib'
import { startApp } from '../test/support/app'
import { handshake } from '../test/support/tls'
import { fmt, log, median, type Figure, type Row } from './common'

// lib/acme/issuer.ts POLLING: the same polling for the baseline.
export const POLLING = { backoffMin: 100, backoffMax: 2000, backoffAttempts: 35 }
const WARM_CONTAINER = 'bench-first-warm'
const CHALLENGE_PATH = '/.well-known/acme-challenge/'

type Account = 'cold' | 'warm'

export const firstCertificate: Figure = async (services, settings, notes) => {
  const { pebble, httpPort } = await services.pebble()
  // Its own Azurite: the store calls it times must not pay for figure 2's 11,000 blobs.
  const azurite = await services.freshAzurite()
  const root = await pebble.root()
  const rounds = settings.quick ? 1 : 41
  let serial = 0
  const domain = (what: string): string => `${what}-${++serial}.first.bench.test`

  const acmeTrace = traceAcme()
  const plugin = async (account: Account, round: number): Promise<{ ms: number, setupMs: number, store: StoreTime, acme: string }> => {
    const container = account === 'cold' ? `bench-first-cold-${round}` : WARM_CONTAINER
    const store = timedStore(new AzureBlobStore({ connectionString: azurite.connectionString, container }))
    const name = domain(`plugin-${account}`)
    const orders = pebble.orderCount()
    const t0 = performance.now()
    const started = await startApp(pebble, httpPort, store, { domains: [name] })
    try {
      const t1 = performance.now()
      store.since(t1)
      acmeTrace.since(t1)
      const served = await handshake(started.port, name, root)
      const t2 = performance.now()
      if (!served.authorized || served.subject !== name) throw new Error(`figure 3: ${name} served ${served.subject}, authorized ${String(served.authorized)}`)
      if (pebble.orderCount() !== orders + 1) throw new Error(`figure 3: ${pebble.orderCount() - orders} orders for ${name}, expected 1`)
      return { ms: t2 - t1, setupMs: t1 - t0, store: store.time(t2), acme: acmeTrace.timeline() }
    } finally {
      await started.app.close()
    }
  }

  let warmKey: Buffer | undefined
  const baseline = async (account: Account): Promise<{ ms: number, acme: string }> => {
    const answers = new Map<string, string>()
    const server = await answerHttp01(httpPort, answers)
    try {
      const name = domain(`baseline-${account}`)
      const t0 = performance.now()
      acmeTrace.since(t0)
      const known = account === 'warm' ? warmKey : undefined
      const accountKey = known ?? await acme.crypto.createPrivateEcdsaKey('P-256')
      const client = new acme.Client({ directoryUrl: pebble.directoryUrl, accountKey, ...POLLING })
      if (known !== undefined) await client.createAccount({ onlyReturnExisting: true })
      else await client.createAccount({ termsOfServiceAgreed: true, contact: ['mailto:ops@example.test'] })
      if (account === 'warm') warmKey = accountKey
      const chain = await issue(client, name, answers)
      const ms = performance.now() - t0
      if (new X509Certificate(chain).checkHost(name) === undefined) throw new Error(`figure 3 baseline: certificate not valid for ${name}`)
      return { ms, acme: acmeTrace.timeline() }
    } finally {
      await new Promise((resolve) => server.close(resolve))
    }
  }

  try {
    // Untimed: the warm container's account key and the baseline's registered key.
    await plugin('warm', -1)
    await baseline('warm')
    return await compare()
  } finally {
    acmeTrace.stop()
  }

  async function compare (): Promise<Row[]> {
    const rows: Row[] = []
    for (const account of ['cold', 'warm'] as const) {
      const ours: number[] = []
      const setup: number[] = []
      const base: number[] = []
      const storeTimes: StoreTime[] = []
      const pluginAcme: string[] = []
      const baseAcme: string[] = []
      for (let round = 0; round < rounds; round++) {
        const runPlugin = async (): Promise<void> => {
          const r = await plugin(account, round)
          ours.push(r.ms)
          setup.push(r.setupMs)
          storeTimes.push(r.store)
          pluginAcme.push(r.acme)
        }
        const runBaseline = async (): Promise<void> => {
          const r = await baseline(account)
          base.push(r.ms)
          baseAcme.push(r.acme)
        }
        if (round % 2 === 0) { await runPlugin(); await runBaseline() } else { await runBaseline(); await runPlugin() }
        log(`figure 3 ${account} account round ${round + 1}/${rounds}: plugin ${fmt.ms(ours[round])}, acme-client ${fmt.ms(base[round])}`)
      }
      const o = median(ours)
      const b = median(base)
      // Each round runs the plugin and the baseline back to back: the median of the
      // rounds' own ratios leaves out most of what the machine's load did meanwhile.
      const ratio = median(ours.map((ms, i) => ms / base[i]))
      rows.push({
        figure: `3 first certificate, ${account} account`,
        ours: fmt.ms(o),
        baseline: fmt.ms(b),
        ratio,
        target: '<= 1.2',
        met: ratio <= 1.2
      })
      notes.push(`figure 3 (${account} account): listen -> verified handshake [${ours.map(fmt.ms).join(', ')}]; ` +
        `acme-client alone [${base.map(fmt.ms).join(', ')}]; the app's register + ready + listen before it took a median ${fmt.ms(median(setup))}`)
      const typical = storeTimes[nearest(ours, o)]
      notes.push(`figure 3 (${account} account): store calls between listen and the served certificate: median ${median(storeTimes.map((t) => t.calls))} calls, ` +
        `${fmt.ms(median(storeTimes.map((t) => t.waitedMs)))} spent waiting on them (they run one after another); in the median round: ${typical.timeline}`)
      notes.push(`figure 3 (${account} account): ACME requests (from listen), plugin's median round: ${pluginAcme[nearest(ours, o)]}`)
      notes.push(`figure 3 (${account} account): ACME requests (from start), acme-client's median round: ${baseAcme[nearest(base, b)]}`)
    }
    return rows
  }
}

/** Index of the value closest to `target` (the median round, or one next to it). */
function nearest (values: number[], target: number): number {
  return values.reduce((best, v, i) => Math.abs(v - target) < Math.abs(values[best] - target) ? i : best, 0)
}

/**
 * Every request acme-client sends (its shared axios instance, used by the plugin
 * and the baseline alike), as `+start METHOD resource (duration)`.
 */
function traceAcme (): { since: (t: number) => void, timeline: () => string, stop: () => void } {
  const started = new WeakMap<object, number>()
  let origin = Number.POSITIVE_INFINITY
  let entries: string[] = []
  const record = (config: { method?: string, url?: string } | undefined, status: number | undefined): void => {
    const start = config === undefined ? undefined : started.get(config)
    if (config === undefined || start === undefined || start < origin) return
    const resource = new URL(config.url ?? '/', 'https://x').pathname.split('/')[1] ?? ''
    entries.push(`+${Math.round(start - origin)} ${(config.method ?? '?').toUpperCase()} ${resource} ${String(status)} (${Math.round(performance.now() - start)})`)
  }
  const onRequest = acme.axios.interceptors.request.use((config) => {
    started.set(config, performance.now())
    return config
  })
  const onResponse = acme.axios.interceptors.response.use((res) => {
    record(res.config, res.status)
    return res
  }, (err: { config?: { method?: string, url?: string }, response?: { status?: number } }) => {
    record(err.config, err.response?.status)
    throw err
  })
  return {
    since: (t) => { origin = t; entries = [] },
    timeline: () => entries.join(', '),
    stop: () => {
      acme.axios.interceptors.request.eject(onRequest)
      acme.axios.interceptors.response.eject(onResponse)
    }
  }
}

interface StoreTime {
  calls: number
  /** Wall time during which at least one store call was pending. */
  waitedMs: number
  /** `+start ms op key (duration ms)`, from listen. */
  timeline: string
}

/**
 * The store, timed: every call reaches the real one. Shows where the plugin's
 * time beyond the ACME steps goes (store round trips before and after them).
 */
function timedStore (inner: CertStore): CertStore & { since: (t: number) => void, time: (until: number) => StoreTime } {
  let origin = Number.POSITIVE_INFINITY
  const calls: Array<{ op: string, key: string, start: number, end: number }> = []
  const timed = <A extends unknown[], R>(op: string, fn: (key: string, ...rest: A) => Promise<R>) => async (key: string, ...rest: A): Promise<R> => {
    const start = performance.now()
    try {
      return await fn(key, ...rest)
    } finally {
      if (start >= origin) calls.push({ op, key, start, end: performance.now() })
    }
  }
  return {
    get: timed('get', (key) => inner.get(key)),
    put: timed('put', (key, value: Buffer | string) => inner.put(key, value)),
    delete: timed('delete', (key) => inner.delete(key)),
    list: async (prefix) => inner.list(prefix),
    lock: timed('lock', (key, signal?: AbortSignal) => inner.lock(key, signal)),
    since: (t) => { origin = t },
    time: (until) => {
      const done = calls.filter((c) => c.end <= until).sort((a, b) => a.start - b.start)
      let waited = 0
      let reach = origin
      for (const c of done) {
        waited += Math.max(0, c.end - Math.max(c.start, reach))
        reach = Math.max(reach, c.end)
      }
      const short = (key: string): string => key.length > 30 ? `${key.slice(0, 8)}...${key.slice(-8)}` : key
      return {
        calls: done.length,
        waitedMs: waited,
        timeline: done.map((c) => `+${Math.round(c.start - origin)} ${c.op} ${short(c.key)} (${Math.round(c.end - c.start)})`).join(', ')
      }
    }
  }
}

/** createOrder ... getCertificate, as lib/acme/issuer.ts does them. */
export async function issue (client: acme.Client, name: string, answers: Map<string, string>): Promise<string> {
  const [, csr] = await acme.crypto.createCsr({ commonName: name, altNames: [name] }, await acme.crypto.createPrivateEcdsaKey('P-256'))
  let order = await client.createOrder({ identifiers: [{ type: 'dns', value: name }] })
  const authorizations = await client.getAuthorizations(order)
  await Promise.all(authorizations.map(async (authz) => {
    if (authz.status === 'valid') return
    const challenge = authz.challenges.find((c) => c.type === 'http-01')
    if (challenge === undefined) throw new Error('no http-01 challenge')
    answers.set(challenge.token, await client.getChallengeKeyAuthorization(challenge))
    await client.completeChallenge(challenge)
    await client.waitForValidStatus(challenge)
  }))
  order = await client.finalizeOrder(order, csr)
  return client.getCertificate(order)
}

export function answerHttp01 (port: number, answers: Map<string, string>): Promise<Server> {
  const server = createServer((req, res) => {
    const url = req.url ?? ''
    const answer = url.startsWith(CHALLENGE_PATH) ? answers.get(url.slice(CHALLENGE_PATH.length)) : undefined
    if (answer === undefined) res.writeHead(404).end()
    else res.writeHead(200, { 'content-type': 'text/plain' }).end(answer)
  })
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => resolve(server))
  })
}
