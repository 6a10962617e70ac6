// A flood of challenge requests (CHALLENGE_LOOKUP_LIMITS) on real sockets, real Azurite, real Pebble.
import { randomBytes } from 'node:crypto'
import http from 'node:http'
import http2 from 'node:http2'
import net, { type AddressInfo } from 'node:net'
import { Writable } from 'node:stream'
import Fastify, { LogController } from 'fastify'
import t from 'tap'
import autocert, { AzureBlobStore, CHALLENGE_PATH, createAutocert, type AutocertOptions, type CertStore } from '../lib'
import { CHALLENGE_LOOKUP_LIMITS } from '../lib/acme/challenge-lookups'
import { encodeBundle } from '../lib/certificate'
import { recordingLogger } from './helpers/unit'
import { startServices } from './helpers/services'
import { eventually, startApp } from './support/app'
import { startAzurite } from './support/azurite'
import { createCa } from './support/ca'
import { challengeFlood, startFloodTarget, type FloodResult, type FloodTarget } from './support/flood'
import { handshake, type Served } from './support/tls'

/*
 * The attack: every well-formed token under /.well-known/acme-challenge/ is a
 * store read, so a few connections pipelining thousands of random tokens made
 * thousands of reads at once (2 x 10,000: the server grew from 135 MB to
 * 1.2 GB, handshakes waited seconds). The server runs in a process of its own
 * (support/flood-target.ts) that counts its store reads and reports its peak
 * RSS (VmHWM, reset before each flood).
 */

const TARGET = 'target.example.test'
const { perConnection, resetAfter, inFlight, retryAfter } = CHALLENGE_LOOKUP_LIMITS
// Peak RSS growth in one flood: far below the 1,082 MB (2 x 10,000) and 576 MB (20 x 500)
// the unbounded lookups took, far above what a Node process moves by itself.
const MAX_GROWTH = 64 * 2 ** 20
// Heap kept after a full collection once a flood is over: nothing of the flood stays
// (a request held per flooding request would be 50 MB); compiled code and the
// collector's own state move it by up to 17 MiB on a loaded machine.
const MAX_RETAINED = 32 * 2 ** 20
const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MiB`
const show = (r: FloodResult): string => `${r.opened} connections, ${r.sent} requests, answers ${JSON.stringify(r.answers)}, ${r.cut} cut off, ${r.stopped} open at the end`

/** Handshakes with `name`, one after another, until `done` settles (and at least `min` of them). */
async function handshakesDuring (done: Promise<unknown>, port: number, name: string, root: string, min = 3): Promise<Array<Served | Error>> {
  const state = { over: false }
  const end = (): void => { state.over = true }
  done.then(end, end)
  const served: Array<Served | Error> = []
  while (!state.over || served.length < min) served.push(await handshake(port, name, root).catch((err: Error) => err))
  return served
}

t.test('a challenge flood is answered at once, costs a few store reads, and the server keeps serving', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const container = 'flood'
  const target: FloodTarget = await startFloodTarget(pebble, { connectionString: azurite.connectionString, container, domains: [TARGET], httpPort })
  t.teardown(() => target.stop())
  await eventually(async () => (await target.stats()).served === 1)
  const serial = (await handshake(target.port, TARGET, root)).serial

  const floods = [
    { connections: 2, requests: 10_000 },
    { connections: 20, requests: 500 }
  ]
  for (const { connections, requests } of floods) {
    await t.test(`${connections} connections pipelining ${requests.toLocaleString('en-US')} unknown tokens each`, async (t) => {
      const before = await target.stats({ resetPeak: true })
      const flood = challengeFlood(httpPort, { connections, requests, host: TARGET })
      const served = await handshakesDuring(flood, target.port, TARGET, root)
      const result = await flood
      const after = await target.stats()
      const reads = after.challengeReads - before.challengeReads
      const growth = after.peakRss - before.rss
      t.comment(`${show(result)}; ${reads} store reads; peak RSS ${mib(before.rss)} -> ${mib(after.peakRss)}; ${served.length} handshakes during the flood`)

      t.equal(result.cut, connections, 'the server closed every flooding connection before answering all it pipelined')
      t.same(Object.keys(result.answers).filter((s) => !['404', '429', '503'].includes(s)), [], 'every answer is 404, 429 or 503')
      const answered = Object.values(result.answers).reduce((a, b) => a + b, 0)
      t.ok(answered <= connections * (perConnection + 1), `${answered} answers: at most the ${perConnection} lookups of each connection and its 429, nothing queued`)
      t.ok(reads <= connections * perConnection * 2, `${reads} store reads for ${(connections * requests).toLocaleString('en-US')} requests (at most ${connections * perConnection * 2})`)
      t.ok(growth < MAX_GROWTH, `peak RSS grew by ${mib(growth)} (less than ${mib(MAX_GROWTH)})`)
      t.ok(after.retained - before.retained < MAX_RETAINED, `${mib(after.retained - before.retained)} more heap kept after the flood`)
      t.ok(served.every((s) => !(s instanceof Error) && s.authorized && s.serial === serial), `all ${served.length} handshakes during the flood served the verified certificate`)
    })
  }

  await t.test('a repeated unknown token costs one store read, and concurrent lookups of a token share one', async (t) => {
    const token = randomBytes(32).toString('base64url')
    const before = await target.stats()
    // Each connection asks once at the same time: one read, shared or remembered.
    const together = await challengeFlood(httpPort, { connections: 20, requests: 1, host: TARGET, token: () => token })
    const between = await target.stats()
    t.same(together.answers, { 404: 20 }, '20 concurrent requests: all 404')
    t.equal(between.challengeReads - before.challengeReads, 1, 'one store read')
    // One after another on one connection: each a 404 from memory.
    let answered = 0
    for (let i = 0; i < 100; i++) {
      const res = await fetch(`http://127.0.0.1:${httpPort}/.well-known/acme-challenge/${token}`, { headers: { host: TARGET } })
      await res.arrayBuffer()
      if (res.status === 404) answered++
    }
    t.equal(answered, 100, '100 requests after it: all 404')
    t.equal((await target.stats()).challengeReads - between.challengeReads, 0, 'no store read')
  })

  await t.test('during a sustained flood, another instance\'s order is validated through the flooded one, from the store', async (t) => {
    // The orderer has no HTTP-01 listener: Pebble's validation reaches the target, which must find the answer in the store.
    const name = 'validated.example.test'
    const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
    const before = await target.stats({ resetPeak: true })
    const stop = new AbortController()
    const flood = challengeFlood(httpPort, { connections: 2, requests: 10_000, host: TARGET, signal: stop.signal })
    const orders = pebble.orderCount()
    try {
      const other = await startApp(pebble, httpPort, store, { domains: [name], http01: undefined })
      t.teardown(() => other.app.close())
      const obtained = eventually(() => other.app.autocert.status()[0].serial !== undefined || other.app.autocert.status()[0].lastError !== undefined, 60_000)
      const during = await handshakesDuring(obtained, target.port, TARGET, root)
      await obtained
      t.match(other.app.autocert.status()[0], { lastError: undefined }, 'the order did not fail')
      t.equal(pebble.orderCount(), orders + 1, 'one order')
      const ordered = await handshake(other.port, name, root)
      t.ok(ordered.authorized && ordered.subject === name, 'the other instance serves its new certificate, verified against Pebble\'s root')
      t.ok(during.every((s) => !(s instanceof Error) && s.authorized), `all ${during.length} handshakes with the flooded instance succeeded meanwhile`)
    } finally {
      stop.abort()
    }
    const result = await flood
    const after = await target.stats()
    const reads = after.challengeReads - before.challengeReads
    t.comment(`${show(result)}; ${reads} store reads; peak RSS ${mib(before.rss)} -> ${mib(after.peakRss)}`)
    t.ok(result.opened > 2 && result.cut + result.stopped === result.opened, `the flood went on (${result.opened} connections, each cut off by the server, or open at the end)`)
    t.ok(reads <= result.opened * perConnection * 2 + 1, `${reads} store reads: at most ${perConnection * 2} per flooding connection, and the CA's`)
    // A flood that goes on makes garbage as fast as the server refuses it: its peak RSS is the
    // collector's choice (in the comment above); what must not grow is what it keeps.
    t.ok(after.retained - before.retained < MAX_RETAINED, `${mib(after.retained - before.retained)} more heap kept after the flood`)
  })
})

interface Answer { status: number, headers: Record<string, string> }

/**
 * Writes a GET for each token on one connection, all at once, and resolves
 * with the answers once the server has closed the connection or answered them
 * all (`closed`: the server closed it first).
 */
function pipelined (port: number, tokens: string[], host: string): Promise<{ answers: Answer[], closed: boolean }> {
  return new Promise((resolve) => {
    const answers: Answer[] = []
    let input = Buffer.alloc(0)
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(tokens.map((token) => `GET ${CHALLENGE_PATH}${token} HTTP/1.1\r\nHost: ${host}\r\n\r\n`).join(''))
    })
    socket.on('data', (chunk: Buffer) => {
      input = Buffer.concat([input, chunk])
      for (let end = input.indexOf('\r\n\r\n'); end !== -1; end = input.indexOf('\r\n\r\n')) {
        const [statusLine, ...lines] = input.subarray(0, end).toString('latin1').split('\r\n')
        const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]))
        // The bodies are short text: a chunked one ends at its first zero-length chunk.
        const last = input.indexOf('\r\n0\r\n\r\n', end)
        const length = headers['transfer-encoding'] === 'chunked' ? (last === -1 ? Infinity : last + 3 - end) : Number(headers['content-length'] ?? 0)
        if (input.length < end + 4 + length) break
        answers.push({ status: Number(statusLine.split(' ')[1]), headers })
        input = input.subarray(end + 4 + length)
      }
      if (answers.length === tokens.length) socket.destroy()
    })
    socket.on('error', () => {})
    socket.on('close', () => resolve({ answers, closed: answers.length < tokens.length }))
  })
}

/**
 * A spy around the real store: counts the reads of HTTP-01 answers and, while
 * held, keeps them waiting before they go on to the store, so that the test
 * decides when they end. Every call still reaches `inner`.
 */
function gatedStore (inner: CertStore): CertStore & { reads: number, waiting: number, active: number, hold (): void, release (): void } {
  let held: Array<() => void> | undefined
  const spy = {
    reads: 0,
    /** Reads held at the gate. */
    waiting: 0,
    /** Reads not ended yet, held or not. */
    active: 0,
    hold: () => { held ??= [] },
    release: () => {
      const waiting = held ?? []
      held = undefined
      for (const go of waiting) go()
    },
    get: async (key: string) => {
      if (!key.endsWith('+http-01')) return await inner.get(key)
      spy.reads++
      spy.active++
      try {
        const gate = held
        if (gate !== undefined) {
          spy.waiting++
          await new Promise<void>((resolve) => gate.push(resolve))
          spy.waiting--
        }
        return await inner.get(key)
      } finally {
        spy.active--
      }
    },
    put: (key: string, value: string | Buffer) => inner.put(key, value),
    delete: (key: string) => inner.delete(key),
    list: (prefix?: string) => inner.list(prefix),
    lock: (...args: Parameters<CertStore['lock']>) => inner.lock(...args)
  }
  return spy
}

const token = (): string => randomBytes(32).toString('base64url')

t.test('the Fastify route and the middleware keep the same limits as the http01 listener', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const name = 'paths.example.test'
  // One try: with Azurite stopped (the last subtest), a read fails at once.
  const inner = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'paths', retryOptions: { maxTries: 1 }, timeout: 3000 })
  t.teardown(() => inner.close())
  // A certificate in the store already: nothing is ordered, so no CA is needed.
  await inner.put(name, encodeBundle(createCa().issue(name)))
  const store = gatedStore(inner)
  const options: AutocertOptions = { domains: [name], store, termsOfServiceAgreed: true, directoryUrl: 'https://127.0.0.1:9/directory' }

  const routeLogs: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') routeLogs.push(JSON.parse(line))
      done()
    }
  })
  // Plain HTTP, as behind a TLS-terminating proxy: the route is the plugin's own.
  const app = Fastify({ logger: { level: 'info', stream }, logController: new LogController({ disableRequestLogging: true }) })
  await app.register(autocert, options)
  let reached = 0
  app.addHook('onRequest', async () => { reached++ })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())

  const middlewareLog = recordingLogger()
  const core = createAutocert({ ...options, logger: middlewareLog })
  await core.ready()
  t.teardown(() => core.close())
  const plain = http.createServer(core.middleware)
  plain.on('request', () => { reached++ })
  await new Promise<void>((resolve) => plain.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise((resolve) => plain.close(resolve)))

  const ports = { 'the Fastify route': (app.server.address() as AddressInfo).port, middleware: (plain.address() as AddressInfo).port }
  for (const [path, port] of Object.entries(ports)) {
    await t.test(`${path}: ${perConnection} lookups waiting per connection, ${inFlight} in the instance; a flood is cut off`, async (t) => {
      // A few pipelined past the limit: the answers, then a 429 that closes the connection.
      const few = perConnection + resetAfter
      store.hold()
      const reads = store.reads
      const some = pipelined(port, Array.from({ length: few }, token), name)
      await eventually(() => store.waiting === perConnection)
      store.release()
      const { answers, closed } = await some
      t.same(answers.map((a) => a.status), [404, 404, 429], `${few} pipelined: ${perConnection} looked up, then 429`)
      t.equal(answers[2].headers.connection, 'close', 'the 429 closes the connection')
      t.ok(closed, 'and the server closed it: the rest was never answered')
      t.equal(store.reads - reads, perConnection, `${perConnection} store reads`)

      // Far past it: reset at once, its lookups end unanswered.
      store.hold()
      const before1000 = store.reads
      reached = 0
      const many = pipelined(port, Array.from({ length: 1000 }, token), name)
      await eventually(() => store.waiting === perConnection)
      const reset = await many
      t.same(reset, { answers: [], closed: true }, `1,000 pipelined: reset before any answer (${resetAfter} refused requests at most)`)
      store.release()
      // Its lookups end unanswered, and leave the instance's reads free for the next step.
      await eventually(() => store.active === 0)
      t.equal(store.reads - before1000, perConnection, `${perConnection} store reads`)
      t.ok(reached < 1000, `${reached} of the 1,000 pipelined requests reached the handler: the connection was read no further once refused`)

      store.hold()
      const before = store.reads
      const clients = Array.from({ length: inFlight + 8 }, () => pipelined(port, [token()], name))
      let refused = 0
      for (const client of clients) void client.then(() => { refused++ })
      await eventually(() => store.waiting === inFlight && refused === 8)
      store.release()
      const results = (await Promise.all(clients)).map((r) => r.answers[0])
      t.equal(store.reads - before, inFlight, `${inFlight} reads in flight at most`)
      t.equal(results.filter((a) => a.status === 404).length, inFlight, `${inFlight} answered 404`)
      const busy = results.filter((a) => a.status === 503)
      t.equal(busy.length, 8, 'the 8 others 503 at once')
      t.ok(busy.every((a) => a.headers['retry-after'] === String(retryAfter) && a.headers.connection === 'close'), `with Retry-After: ${retryAfter} and Connection: close`)

      const floodReads = store.reads
      const flood = await challengeFlood(port, { connections: 2, requests: 2000, host: name })
      t.equal(flood.cut, 2, `a flood of 2 x 2,000 is cut off (${JSON.stringify(flood.answers)})`)
      t.ok(store.reads - floodReads <= 2 * perConnection * 2, `${store.reads - floodReads} store reads`)
      await eventually(() => store.active === 0)
    })
  }

  t.same([...routeLogs, ...middlewareLog.lines.map((l) => ({ level: l.level, msg: l.msg }))].filter((l) => ['warn', 'error', 40, 50, 60].includes(l.level as string | number)), [],
    'the refusals and resets wrote no warning or error')

  await t.test('over HTTP/2 the limit is per session: its streams share it, and no Connection header is sent', async (t) => {
    const h2 = Fastify({ http2: true })
    await h2.register(autocert, options)
    await h2.listen({ port: 0, host: '127.0.0.1' })
    t.teardown(() => h2.close())
    const session = http2.connect(`http://127.0.0.1:${(h2.server.address() as AddressInfo).port}`)
    t.teardown(() => session.close())
    const get = (path: string): Promise<http2.IncomingHttpHeaders> => new Promise((resolve, reject) => {
      const stream = session.request({ ':path': path, ':authority': name })
      stream.on('response', (headers) => { stream.resume(); stream.on('end', () => resolve(headers)) })
      stream.on('error', reject)
    })
    store.hold()
    const streams = [get(`${CHALLENGE_PATH}${token()}`), get(`${CHALLENGE_PATH}${token()}`)]
    await eventually(() => store.waiting === perConnection)
    const third = await get(`${CHALLENGE_PATH}${token()}`)
    t.equal(third[':status'], 429, `a third stream of the session while ${perConnection} wait: 429 at once`)
    t.equal(third.connection, undefined, 'without a Connection header (HTTP/2 has none)')
    store.release()
    t.same((await Promise.all(streams)).map((h) => h[':status']), [404, 404])
  })

  await t.test('a store outage: every lookup is a 503, logged once for the burst with its count', async (t) => {
    await azurite.stop()
    const failedLines = (): number => routeLogs.filter((l) => l.msg === 'ACME challenge lookup failed').length +
      middlewareLog.lines.filter((l) => l.msg === 'ACME challenge lookup failed').length
    for (const port of Object.values(ports)) {
      const results = await Promise.all(Array.from({ length: 50 }, () => pipelined(port, [token()], name)))
      t.ok(results.every((r) => r.answers[0]?.status === 503), '50 lookups: all 503')
    }
    t.equal(failedLines(), 2, 'one line per server for its 50 failures')
    t.match(routeLogs.find((l) => l.msg === 'ACME challenge lookup failed'), { failures: 1, error: { message: String } }, 'the first failure is logged at once, with the error')
  })
})
