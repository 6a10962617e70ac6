import { randomBytes } from 'node:crypto'
import net from 'node:net'
import { inspect } from 'node:util'
import { BlobServiceClient, ContainerSASPermissions } from '@azure/storage-blob'
import t from 'tap'
import { AzureBlobStore, CHALLENGE_PATH, MemoryStore, type AzureBlobStoreOptions, type CertStore } from '../lib'
import { startApp, eventually, spyStore, type TestApp } from './support/app'
import { sendClientHello, type HelloAnswer } from './helpers/client-hello'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

/*
 * Hostile input from clients and secrets in output (issue 4), against real
 * Pebble, real Azurite and real sockets. Every TLS name is sent either by
 * tls.connect or, when Node will not send it, by a hand-built ClientHello.
 */

const A = 'a.example.test'
const IDN = 'xn--bcher-kva.example.test'
// Keys the plugin may build: listed names, fixed keys, CA tokens. Never client input.
const TOKEN_KEY = /^[A-Za-z0-9_-]{22,128}\+http-01$/
const REFUSED_LINE = 'refused TLS server name'
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))
const show = (name: string | Buffer | null): string => name === null
  ? 'no SNI'
  : `${JSON.stringify((typeof name === 'string' ? name : name.toString('latin1')).slice(0, 40))}${name.length > 40 ? ` (${name.length} bytes)` : ''}`

function summary (ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b)
  const at = (q: number): string => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))].toFixed(2)
  return `n=${sorted.length} min=${at(0)} median=${at(0.5)} p95=${at(0.95)} max=${at(1)} ms`
}

/**
 * Every string reachable from `value` through its own properties, enumerable or
 * not, and Map entries: what a logger, a serializer or a debugger could print.
 */
function reachableText (value: unknown, depth = 6, seen = new Set<unknown>()): string[] {
  if (typeof value === 'string') return [value]
  if (typeof value !== 'object' || value === null || depth === 0 || seen.has(value)) return []
  seen.add(value)
  const children: unknown[] = value instanceof Map ? [...value.entries()].flat() : []
  for (const key of Object.getOwnPropertyNames(value)) {
    try {
      children.push((value as Record<string, unknown>)[key])
    } catch {}
  }
  return children.flatMap((child) => reachableText(child, depth - 1, seen))
}

/**
 * Resolves once no order holds the lock of `names` in `container` (a released
 * lock leaves no blob): an order serves its certificate before it has finished
 * writing it, and renew() joins an order in flight, so a test that counts store
 * calls or orders waits for this.
 */
async function ordersSettled (connectionString: string, container: string, names: string[]): Promise<void> {
  const blobs = BlobServiceClient.fromConnectionString(connectionString).getContainerClient(container)
  await eventually(async () => {
    const states = await Promise.all(names.map((name) =>
      blobs.getBlobClient(`locks/${name}`).getProperties().then((p) => p.leaseState, () => undefined)))
    return states.every((state) => state === undefined || state === 'available')
  })
}

interface Reply { status: number, headers: Record<string, string>, body: string }

/**
 * One raw HTTP/1.1 request, written byte for byte: http.request refuses many of
 * these paths. Status 0: the server closed the connection without an answer.
 */
function rawHttp (port: number, request: string): Promise<Reply> {
  return new Promise((resolve) => {
    // write, not end: Node's HTTP server drops a response still being computed when the client half-closes.
    const socket = net.connect(port, '127.0.0.1', () => socket.write(request))
    const chunks: Buffer[] = []
    socket.on('data', (d: Buffer) => chunks.push(d))
    // A server may close on an oversized request while it is still being written.
    socket.on('error', () => {})
    socket.on('close', () => {
      const text = Buffer.concat(chunks).toString('latin1')
      if (text === '') return resolve({ status: 0, headers: {}, body: '' })
      const split = text.indexOf('\r\n\r\n')
      const [statusLine, ...lines] = text.slice(0, split).split('\r\n')
      const headers = Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()]))
      let body = text.slice(split + 4)
      if (headers['transfer-encoding'] === 'chunked') {
        let decoded = ''
        for (let at = 0; ;) {
          const eol = body.indexOf('\r\n', at)
          const size = parseInt(body.slice(at, eol), 16)
          if (!(size > 0)) break
          decoded += body.slice(eol + 2, eol + 2 + size)
          at = eol + 2 + size + 2
        }
        body = decoded
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body })
    })
  })
}

// Refused: a 4xx, or the connection closed without an answer.
const refusedStatus = (status: number): boolean => status === 0 || (status >= 400 && status < 500)

const get = (port: number, path: string, host = A, method = 'GET'): Promise<Reply> =>
  rawHttp(port, `${method} ${path} HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`)

t.test('hostile clients: SNI names, a refusal flood, the challenge route', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const inner = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'hostile' })
  const store = spyStore(inner)
  // Listed in Unicode: the plugin keeps it as punycode.
  const { app, port, logs } = await startApp(pebble, httpPort, store, { domains: [A, 'bücher.example.test'] })
  t.teardown(() => app.close())
  await eventually(() => app.autocert.status().every((s) => s.serial !== undefined))
  await ordersSettled(azurite.connectionString, 'hostile', [A, IDN, 'acme_orders+log'])
  const serials = Object.fromEntries(app.autocert.status().map((s) => [s.domain, s.serial as string]))
  const refusalTimes: number[] = []
  // Refusals that reach the plugin's name check (OpenSSL stops NUL, > 255 bytes and
  // malformed lists first; no or an empty SNI never calls SNICallback).
  let reachedManager = 0
  const reaches = (name: string | Buffer | null): boolean => {
    const bytes = typeof name === 'string' ? Buffer.from(name) : name
    return bytes !== null && bytes.length > 0 && bytes.length <= 255 && !bytes.includes(0)
  }

  await t.test('the store only ever sees keys the plugin built: listed names, fixed keys, CA tokens', async (t) => {
    t.same(Object.keys(serials).sort(), [A, IDN], 'the Unicode name is listed as punycode')
    const allowed = (k: string): boolean => [A, IDN].some((d) => k === d || k === `${d}+failure` || k === `${d}+ari`) ||
      k === 'acme_account+key' || k === 'acme_orders+log' || TOKEN_KEY.test(k)
    t.same(store.keys.filter((k) => !allowed(k)), [], 'no other key')
    t.ok(store.keys.some((k) => TOKEN_KEY.test(k)), 'the HTTP-01 answers went through the store under <token>+http-01')
    const info = await app.autocert.certificate('BÜCHER.Example.Test.')
    t.equal(info.domain, IDN, 'the decorator maps a Unicode name to its punycode certificate')
  })

  await t.test('every SNI name either maps to a listed domain or fails the handshake fast, reaching neither CA nor store', async (t) => {
    const orders = pebble.orderCount()
    const before = store.keys.length
    const linesBefore = logs.length

    // Variants of listed names: served the listed certificate (TLS 1.2 shows it in clear).
    const mapped: Array<[string, string]> = [
      ['A.EXAMPLE.TEST', A], ['A.Example.Test', A], [`${A}.`, A], ['A.EXAMPLE.TEST.', A],
      [IDN, IDN], ['XN--BCHER-KVA.EXAMPLE.TEST', IDN], [`${IDN}.`, IDN], ['Xn--Bcher-Kva.Example.Test.', IDN]
    ]
    // Node decodes SNI bytes as Latin-1 and UTS #46 maps these to a listed name;
    // serving the listed certificate is the rule's "maps", refusing it is fine too.
    const latin1 = [
      Buffer.from('b\xfccher.example.test', 'latin1'), // ü as one Latin-1 byte: 'bücher'
      Buffer.from('\xaa.example.test', 'latin1'), // ª maps to 'a'
      Buffer.from('a.exa\xadmple.test', 'latin1') // a soft hyphen is dropped
    ]
    const long63 = 'a'.repeat(63)
    const refused: Array<string | Buffer | null> = [
      // none, empty
      null, '',
      // IP literals
      '127.0.0.1', '127.0.0.1.', '10.0.0.1', '0.0.0.0', '255.255.255.255', '127.1', '0x7f.0.0.1', '2130706433', '017700000001',
      '::1', '[::1]', '::ffff:127.0.0.1', 'fe80::1%eth0', '2001:db8::1', '[2001:db8::1]:443',
      // internationalised, but not as RFC 6066 asks (A-labels): UTF-8 bytes on the wire, or an unlisted punycode
      'bücher.example.test', 'BÜCHER.EXAMPLE.TEST', 'xn--bcher-kvb.example.test', 'xn--.example.test', 'bucher.example.test',
      Buffer.from([0xc3, 0x28, 0x2e, 0x74, 0x65, 0x73, 0x74]), Buffer.from([0xff, 0xfe, 0xfd]),
      // over-long names (> 253; OpenSSL itself refuses > 255) and labels (> 63)
      `${long63}.${long63}.${long63}.${'a'.repeat(61)}`, `${long63}.${long63}.${long63}.${'a'.repeat(62)}`,
      'a'.repeat(256), `${long63}.`.repeat(5) + 'test', 'x'.repeat(4096), 'x'.repeat(60_000),
      `${'a'.repeat(64)}.example.test`, `${'a'.repeat(1000)}.example.test`,
      // empty labels
      'a..example.test', '.a.example.test', '.', '..', `${A}..`, '.example.test',
      // wildcards
      '*', '*.example.test', `*.${A}`, 'a.*.test', '*a.example.test', '%2a.example.test',
      // path and URL syntax
      `${A}/`, `${A}/../acme_account+key`, `../${A}`, 'a/b.example.test', 'a\\b.example.test', '..\\acme_account+key',
      `locks/${A}`, '..', '../..', `${A}%00`, '%2e%2e', 'a%2eexample.test', `${A}%2f..`, `${A}:443`, `user@${A}`, `${A}?x`, `${A}#x`,
      // store keys as names
      'acme_account+key', 'acme_orders+log', `${A}+failure`, `${A}+http-01`, 'locks',
      // spaces, control characters, NUL
      'a example.test', ` ${A}`, `${A} `, `${A}\t`, `${A}\r\nX-Injected: 1`, `${A}\x7f`, '\x01\x02\x03', `${A}\x1b[31m`,
      `${A}\0`, '\0', 'a\0.example.test', `${A}\0.evil.test`,
      // other non-hostnames
      'a_b.example.test', 'example.123', '-a.example.test', 'a-.example.test', 'localhost', 'evil.example.test', `${A}.evil.test`
    ]
    // server_name extensions that are not one host_name entry
    const malformed: Array<[string, Buffer]> = [
      ['an empty server_name_list', Buffer.from([0, 0])],
      ['name_type 1', Buffer.concat([Buffer.from([0, 6, 1, 0, 3]), Buffer.from('a.b')])],
      ['two host_name entries', Buffer.concat([Buffer.from([0, 12, 0, 0, 3]), Buffer.from('a.b'), Buffer.from([0, 0, 3]), Buffer.from('c.d')])],
      ['a list length past its end', Buffer.concat([Buffer.from([0, 40, 0, 0, 3]), Buffer.from('a.b')])],
      ['a name length past its end', Buffer.concat([Buffer.from([0, 6, 0, 0, 40]), Buffer.from('a.b')])]
    ]

    let inputs = 0
    const served = async (name: string | Buffer, domain: string): Promise<void> => {
      for (const version of ['1.2', '1.3'] as const) {
        const answer = await sendClientHello(port, { serverName: name, version })
        inputs++
        t.equal(answer.outcome, 'served', `TLS ${version} ${show(name)} is served`)
        if (version === '1.2') t.equal(answer.certificate?.serialNumber, serials[domain], `${show(name)} gets the certificate of ${domain}`)
      }
    }
    for (const [name, domain] of mapped) await served(name, domain)
    for (const name of latin1) {
      for (const version of ['1.2', '1.3'] as const) {
        const answer = await sendClientHello(port, { serverName: name, version })
        inputs++
        const listed = answer.outcome === 'served' && (version === '1.3' || Object.values(serials).includes(answer.certificate?.serialNumber ?? ''))
        if (answer.outcome !== 'served') reachedManager++
        t.ok(listed || answer.outcome !== 'served', `TLS ${version} ${show(name)}: ${answer.outcome === 'served' ? 'mapped to a listed certificate' : 'refused'}`)
      }
    }
    const refuse = (answer: HelloAnswer, what: string): void => {
      inputs++
      refusalTimes.push(answer.ms)
      t.ok(answer.outcome === 'alert' || answer.outcome === 'closed', `${what} fails the handshake (${answer.outcome}${answer.alert === undefined ? '' : ` ${answer.alert}`}, ${answer.ms.toFixed(1)} ms)`)
    }
    for (const name of refused) {
      for (const version of ['1.2', '1.3'] as const) {
        refuse(await sendClientHello(port, { serverName: name, version }), `TLS ${version} ${show(name)}`)
        if (reaches(name)) reachedManager++
      }
    }
    for (const [what, extension] of malformed) {
      for (const version of ['1.2', '1.3'] as const) refuse(await sendClientHello(port, { serverName: null, serverNameExtension: extension, version }), `TLS ${version} ${what}`)
    }

    // What tls.connect itself will send (UTF-8, no NUL, 1..255 bytes, no IP literal):
    // a real client, verifying against Pebble's root.
    for (const [name, domain] of mapped) {
      const cert = await handshake(port, name, root)
      inputs++
      t.ok(cert.authorized && cert.serial === serials[domain], `tls.connect ${show(name)}: ${domain}'s certificate, verified`)
    }
    const sendable = refused.filter((n): n is string => typeof n === 'string' && n !== '' && !n.includes('\0') &&
      Buffer.byteLength(n) <= 255 && net.isIP(n.replace(/^\[|\]$/g, '')) === 0)
    for (const name of sendable) {
      const started = performance.now()
      const failed = await handshake(port, name, root).then(() => false, () => true)
      const ms = performance.now() - started
      inputs++
      reachedManager++
      refusalTimes.push(ms)
      t.ok(failed, `tls.connect ${show(name)} fails (${ms.toFixed(1)} ms)`)
    }

    t.equal(pebble.orderCount(), orders, 'no order reached the CA')
    t.same(store.keys.slice(before), [], 'no store call at all: listed names come from memory, others stop at the name check')
    for (const line of logs.slice(linesBefore).filter((l) => l.msg === REFUSED_LINE)) {
      t.ok(JSON.parse(line.servername as string).length <= 100, 'the logged name is quoted and cut to 100 characters')
    }
    const after = await handshake(port, A, root)
    t.equal(after.serial, serials[A], 'the process is up and still serves a listed name')
    t.equal((await app.inject({ url: '/' })).body, 'hello')
    t.comment(`SNI: ${inputs} hostile handshakes; refusals: ${summary(refusalTimes)}`)
  })

  let floodLines = 0
  await t.test('1,000 refused handshakes write a handful of log lines at most, each with a count', async (t) => {
    floodLines = logs.length
    const orders = pebble.orderCount()
    const before = store.keys.length
    const linesBefore = logs.length
    const names = ['*.example.test', '127.0.0.1', 'a..example.test', 'acme_account+key', `${A}/x`, 'evil.example.test']
    const times: number[] = []
    let next = 0
    const started = performance.now()
    const worker = async (): Promise<void> => {
      for (let i = next++; i < 1000; i = next++) {
        const name = i % 7 === 0 ? `flood-${i}.example.test` : names[i % names.length]
        const answer = await sendClientHello(port, { serverName: name, version: i % 2 === 0 ? '1.3' : '1.2' })
        times.push(answer.ms)
        if (answer.outcome === 'served' || answer.outcome === 'timeout') throw new Error(`${name}: ${answer.outcome}`)
      }
    }
    await Promise.all(Array.from({ length: 20 }, worker))
    const seconds = (performance.now() - started) / 1000
    t.equal(times.length, 1000, 'all 1,000 refused')
    const written = logs.slice(linesBefore)
    const refusedLines = written.filter((l) => l.msg === REFUSED_LINE)
    t.ok(refusedLines.length <= 3, `${refusedLines.length} "${REFUSED_LINE}" lines`)
    t.ok(written.length <= 3, `${written.length} log lines of any kind`)
    t.ok(refusedLines.every((l) => typeof l.refused === 'number' && l.refused >= 1), 'each line carries a count')
    reachedManager += 1000
    t.equal(pebble.orderCount(), orders, 'no order')
    t.same(store.keys.slice(before), [], 'no store call')
    t.equal((await handshake(port, A, root)).serial, serials[A], 'still serving')
    t.comment(`flood: 1000 refusals in ${seconds.toFixed(2)} s (${Math.round(1000 / seconds)}/s, 20 at a time); ${summary(times)}`)
  })

  const token = randomBytes(32).toString('base64url')
  const keyAuthorization = `${token}.${randomBytes(32).toString('base64url')}`
  const tokenKey = `${token}+http-01`
  // Written by "another instance": straight to the store, not through the spy.
  await inner.put(tokenKey, JSON.stringify({ domain: A, keyAuthorization }))
  const short = 'S'.repeat(22)
  const long = 'L'.repeat(128)
  await inner.put(`${short}+http-01`, JSON.stringify({ domain: A, keyAuthorization: 'short.answer' }))
  await inner.put(`${long}+http-01`, JSON.stringify({ domain: A, keyAuthorization: 'long.answer' }))

  // Tokens that are not 22..128 base64url characters, after the router's decoding too.
  const badTokens = [
    '', 'short', 'A'.repeat(21), 'A'.repeat(129), `${token.slice(0, 42)}=`, `${token.slice(0, 42)}%2B`, `${token.slice(0, 42)}%2F`,
    `${token}%2b`, `${token}%20`, `%20${token}`, `${token}.`, `${token}%2e`, `${token};x`, `${token}%00`, `%00${token}`,
    `${token}%2bhttp-01`, `${token}+http-01`, encodeURIComponent('é'.repeat(30)), '%zz', '%',
    '..%2f..%2facme_account+key', '..%2F..%2Facme_account%2Bkey', '%2e%2e%2f%2e%2e%2facme_account+key', `${token}%2f..%2f..%2facme_account+key`,
    '..%5c..%5cacme_account+key', `${token}%5c..%5cacme_account+key`, 'acme_account+key', 'acme_orders+log', A, `${A}+failure`,
    `locks%2f${A}`, `${token}%00+http-01`
  ]
  // Paths the router or the HTTP parser refuses before the handler: never 200, never a lookup.
  const badPaths = [
    `${CHALLENGE_PATH}../../acme_account+key`, `${CHALLENGE_PATH}${token}/../../acme_account+key`, `${CHALLENGE_PATH}${token}/`,
    `${CHALLENGE_PATH}${token}/x`, `${CHALLENGE_PATH}`, `${CHALLENGE_PATH}${'A'.repeat(10_000)}`, `${CHALLENGE_PATH}${'A'.repeat(70_000)}`,
    `/.well-known/acme-challenge%2f${token}`, '/.well-known/../acme_account+key', `/${tokenKey}`, '/acme_account+key'
  ]
  let challengeInputs = 0

  await t.test('challenge route of the app (inject)', async (t) => {
    const request = async (url: string, host = A, method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'DELETE' | 'PATCH' | 'OPTIONS' = 'GET', headers: Record<string, string> = {}): Promise<{ status: number, body: string, type: string, keys: string[] }> => {
      const before = store.keys.length
      const res = await app.inject({ method, url, headers: { ...headers, host } })
      challengeInputs++
      return { status: res.statusCode, body: res.body, type: String(res.headers['content-type']), keys: store.keys.slice(before) }
    }
    const path = `${CHALLENGE_PATH}${token}`
    const hit = await request(path)
    t.equal(hit.status, 200)
    t.equal(hit.body, keyAuthorization, 'exactly the key authorization')
    t.match(hit.type, /^text\/plain(;|$)/)
    t.same(hit.keys, [tokenKey], 'one lookup, of <token>+http-01')
    const head = await request(path, A, 'HEAD')
    t.equal(head.status, 200, 'HEAD answers')
    t.equal(head.body, '')
    t.match(head.type, /^text\/plain(;|$)/)
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const) {
      const res = await request(path, A, method)
      t.ok([404, 405].includes(res.status) && res.keys.length === 0 && !res.body.includes(keyAuthorization), `${method} -> ${res.status}, no lookup`)
    }
    for (const host of ['A.EXAMPLE.TEST', `${A}:80`, `${A}.`, `${A}.:8080`]) {
      const res = await request(path, host)
      t.ok(res.status === 200 && res.body === keyAuthorization, `Host ${host} is the issued host`)
    }
    for (const host of [IDN, 'evil.example.test', `${A}.evil.test`, `evil.${A}`]) {
      const res = await request(path, host)
      t.ok(res.status === 404 && !res.body.includes(keyAuthorization), `Host ${host}: 404`)
    }
    const forwarded = await request(path, 'evil.example.test', 'GET', { 'x-forwarded-host': A, forwarded: `host=${A}`, 'x-original-url': path })
    t.equal(forwarded.status, 404, 'X-Forwarded-Host, Forwarded and X-Original-URL do not stand in for Host')
    // A five-digit "port" past 65535 is stripped like a port: lenient, and it still reads only this token's key.
    const lenient = await request(path, `${A}:99999`)
    t.ok(lenient.keys.every((k) => k === tokenKey) && [200, 404].includes(lenient.status), `Host ${A}:99999 -> ${lenient.status}, only the token's key read`)
    for (const host of ['', 'localhost', '[::1', '::1', `${A}/x`, `${A}\\x`, `${A}%00`, '*.example.test', `${A}:123456`, 'a..example.test']) {
      const res = await request(path, host)
      t.ok(res.status === 404 && res.keys.length === 0, `Host ${JSON.stringify(host)}: 404 with no lookup`)
    }
    // An address may be validated with HTTP-01: its Host is looked up like a name's, and is not the token's host.
    for (const host of ['127.0.0.1', '[::1]:80']) {
      const res = await request(path, host)
      t.ok(res.status === 404 && res.keys.every((k) => k === tokenKey), `Host ${JSON.stringify(host)}: 404, only the token's key read`)
    }
    for (const bad of badTokens) {
      const res = await request(`${CHALLENGE_PATH}${bad}`)
      t.ok(res.status >= 400 && res.status < 500 && res.keys.length === 0, `token ${show(bad)} -> ${res.status}, no lookup`)
    }
    for (const bad of badPaths) {
      const res = await request(bad)
      t.ok(res.status >= 400 && res.status < 500 && res.keys.length === 0, `path ${show(bad)} -> ${res.status}, no lookup`)
    }
    // The router decodes before the handler: these still name only a token key.
    for (const odd of [`${path}?x=../acme_account+key`, `${path}?${'q'.repeat(5000)}`, `${path}#../acme_account+key`, `${CHALLENGE_PATH}${'%41'.repeat(43)}`]) {
      const res = await request(odd)
      t.ok(res.keys.every((k) => TOKEN_KEY.test(k)), `${show(odd)} -> ${res.status}: only <token>+http-01 keys read ${JSON.stringify(res.keys).slice(0, 60)}`)
      if (res.status === 200) t.equal(res.body, keyAuthorization, `${show(odd)}: a 200 carries that token's key authorization`)
    }
    const valid22 = await request(`${CHALLENGE_PATH}${short}`)
    t.equal(valid22.body, 'short.answer', 'a 22-character token answers')
    const valid128 = await request(`${CHALLENGE_PATH}${long}`)
    t.equal(valid128.status, 200, 'a 128-character token answers')
  })

  await t.test('challenge route of the companion HTTP listener (raw sockets)', async (t) => {
    const request = async (path: string, host = A, method = 'GET'): Promise<Reply & { keys: string[] }> => {
      const before = store.keys.length
      const reply = await get(httpPort, path, host, method)
      challengeInputs++
      return { ...reply, keys: store.keys.slice(before) }
    }
    const path = `${CHALLENGE_PATH}${token}`
    const hit = await request(path)
    t.equal(hit.status, 200)
    t.equal(hit.body, keyAuthorization, 'exactly the key authorization')
    t.match(hit.headers['content-type'], /^text\/plain(;|$)/)
    t.same(hit.keys, [tokenKey], 'one lookup, of <token>+http-01')
    const head = await request(path, A, 'HEAD')
    t.equal(head.status, 200, 'HEAD answers')
    t.equal(head.body, '')
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'TRACE', 'PROPFIND']) {
      const res = await request(path, A, method)
      // 400 "Use HTTPS" is Go autocert's answer to anything but GET/HEAD; the brief allows 404/405.
      t.ok([400, 404, 405].includes(res.status) && res.keys.length === 0 && !res.body.includes(keyAuthorization), `${method} -> ${res.status}, no lookup`)
    }
    for (const host of ['A.EXAMPLE.TEST', `${A}:80`, `${A}.`]) {
      const res = await request(path, host)
      t.ok(res.status === 200 && res.body === keyAuthorization, `Host ${host} is the issued host`)
    }
    for (const host of [IDN, 'evil.example.test', `evil.${A}`]) {
      const res = await request(path, host)
      t.ok(res.status === 404 && res.keys.length <= 1, `Host ${host}: 404`)
    }
    for (const host of ['', 'localhost', '[::1', `${A}/x`, `${A}%00`, '*.example.test', `${A}:123456`]) {
      const res = await request(path, host)
      t.ok(refusedStatus(res.status) && res.keys.length === 0, `Host ${JSON.stringify(host)}: ${res.status} with no lookup`)
    }
    const before = store.keys.length
    const twoHosts = await rawHttp(httpPort, `GET ${path} HTTP/1.1\r\nHost: evil.example.test\r\nHost: ${A}\r\nConnection: close\r\n\r\n`)
    challengeInputs++
    t.ok(twoHosts.body !== keyAuthorization && store.keys.slice(before).every((k) => k === tokenKey), `two Host headers: ${twoHosts.status}, not answered`)
    for (const bad of [...badTokens, '%41'.repeat(43)]) {
      const res = await request(`${CHALLENGE_PATH}${bad}`)
      t.ok(refusedStatus(res.status) && res.keys.length === 0, `token ${show(bad)} -> ${res.status}, no lookup`)
    }
    // As on the app route, a query or fragment is not part of the token.
    for (const odd of [`${token}?x=../acme_account+key`, `${token}#x`]) {
      const res = await request(`${CHALLENGE_PATH}${odd}`)
      t.ok(res.status === 200 && res.body === keyAuthorization && res.keys.every((k) => k === tokenKey), `token ${show(odd)} -> ${res.status}: that token's answer, only its key read`)
    }
    for (const bad of badPaths.filter((p) => p.startsWith(CHALLENGE_PATH))) {
      const res = await request(bad)
      t.ok(refusedStatus(res.status) && res.keys.length === 0, `path ${show(bad)} -> ${res.status}, no lookup`)
    }
    for (const other of ['/acme_account+key', `/${tokenKey}`, `/.well-known/../${tokenKey}`]) {
      const res = await request(other)
      t.ok(res.status === 302 && res.keys.length === 0, `${other}: redirected to https, no lookup`)
    }
    t.equal((await request(`${CHALLENGE_PATH}${short}`)).body, 'short.answer', 'a 22-character token answers')
    t.equal((await request(`${CHALLENGE_PATH}${long}`)).body, 'long.answer', 'a 128-character token answers')
    t.comment(`challenge route: ${challengeInputs} hostile or edge requests over both listeners`)
  })

  await t.test('the flood\'s count is reported by the first refusal after the quiet interval', async (t) => {
    const last = logs.filter((l) => l.msg === REFUSED_LINE).at(-1)
    const wait = (last === undefined ? 0 : (last.time as number) + 10_000 + 100) - Date.now()
    if (wait > 0) await sleep(wait)
    const linesBefore = logs.length
    const answer = await sendClientHello(port, { serverName: 'after.example.test', version: '1.3' })
    t.not(answer.outcome, 'served')
    await eventually(() => logs.slice(linesBefore).some((l) => l.msg === REFUSED_LINE), 2000)
    reachedManager++
    const count = (lines: Array<Record<string, unknown>>): number =>
      lines.filter((l) => l.msg === REFUSED_LINE).reduce((n, l) => n + (l.refused as number), 0)
    t.ok(count(logs.slice(floodLines)) >= 1000, `the lines since the flood count ${count(logs.slice(floodLines))} refusals`)
    t.equal(count(logs), reachedManager, `the counts of all ${logs.filter((l) => l.msg === REFUSED_LINE).length} lines add up to every refusal that reached the plugin`)
  })
})

t.test('the fleet-wide order budget', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: 'budget' })
  const domains = ['b1.example.test', 'b2.example.test', 'b3.example.test']
  const first = await startApp(pebble, httpPort, newStore(), { domains, maxOrdersPerHour: 2 })
  t.teardown(() => first.app.close())
  await eventually(() => first.app.autocert.status().filter((s) => s.serial !== undefined || s.retryAfter !== undefined).length === 3)
  await ordersSettled(azurite.connectionString, 'budget', [...domains, 'acme_orders+log'])

  const status = first.app.autocert.status()
  t.equal(pebble.orderCount(), 2, 'exactly 2 orders at Pebble')
  const limited = status.filter((s) => s.serial === undefined)
  t.equal(limited.length, 1, 'one domain is left without a certificate')
  const third = limited[0]
  t.ok(third.retryAfter !== undefined && third.retryAfter.getTime() > Date.now() + 59 * 60_000, 'status() shows retryAfter: when the hour frees a slot')
  t.match(third.lastError?.message, /maxOrdersPerHour/, 'status() shows lastError')
  t.ok(first.logs.some((l) => l.msg === 'order budget used up: order postponed' && l.domain === third.domain), 'the postponed order is logged')
  const log = JSON.parse((await newStore().get('acme_orders+log'))?.toString() ?? '[]') as number[]
  t.equal(log.length, 2, 'the store\'s acme_orders+log holds the two orders')

  const started = performance.now()
  const refused = await handshake(first.port, third.domain, root).then(() => false, () => true)
  const ms = performance.now() - started
  t.ok(refused, `the third domain's handshake fails (${ms.toFixed(1)} ms)`)
  const renew = await first.app.autocert.renew(domains.find((d) => d !== third.domain) as string).catch((err: { code?: string }) => err)
  t.equal((renew as { code?: string }).code, 'FST_AUTOCERT_RATE_LIMITED', 'a forced renewal is held by the budget too')
  t.equal(pebble.orderCount(), 2, 'still 2 orders')

  await t.test('a second app on the same container cannot order either', async (t) => {
    // No HTTP-01 listener of its own: an order would be validated through the first app's.
    const second = await startApp(pebble, httpPort, newStore(), { domains: [third.domain, 'b4.example.test'], maxOrdersPerHour: 2, http01: undefined })
    t.teardown(() => second.app.close())
    await eventually(() => second.app.autocert.status().every((s) => s.retryAfter !== undefined))
    t.equal(pebble.orderCount(), 2, 'no order from the second app')
    for (const domain of [third.domain, 'b4.example.test']) {
      // Waiting for the budget, not backing off after a failure: the refusal says which.
      const err = await second.app.autocert.certificate(domain).catch((err: { code?: string }) => err)
      t.match(err, { code: 'FST_AUTOCERT_RATE_LIMITED', message: /next slot at/ }, `${domain}: refused for the budget`)
      const started = performance.now()
      const failed = await handshake(second.port, domain, root).then(() => false, () => true)
      t.ok(failed, `${domain}: handshake fails (${(performance.now() - started).toFixed(1)} ms)`)
    }
    t.equal(pebble.orderCount(), 2, 'still 2 orders at Pebble')
  })

  await t.test('the count is the fleet\'s: an app allowed 3 an hour places exactly one more', async (t) => {
    const third3 = await startApp(pebble, httpPort, newStore(), { domains: ['b5.example.test', 'b6.example.test'], maxOrdersPerHour: 3, http01: undefined })
    t.teardown(() => third3.app.close())
    await eventually(() => third3.app.autocert.status().every((s) => s.serial !== undefined || s.retryAfter !== undefined))
    t.equal(pebble.orderCount(), 3, 'one more order')
    t.equal(third3.app.autocert.status().filter((s) => s.serial !== undefined).length, 1)
    const log = JSON.parse((await newStore().get('acme_orders+log'))?.toString() ?? '[]') as number[]
    t.equal(log.length, 3)
  })
})

t.test('a poisoned order log (far-future, huge and malformed entries) does not stop the fleet from ordering', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container: 'poisoned' })
  t.teardown(() => store.close())
  const yearAhead = Array.from({ length: 100 }, (_, i) => Date.now() + 365 * 86_400_000 + i)
  await store.put('acme_orders+log', JSON.stringify([...yearAhead, 1e300, Number.MAX_VALUE, -1, 'x', null]))
  const app = await startApp(pebble, httpPort, store, { domains: ['p1.example.test'], maxOrdersPerHour: 2 })
  t.teardown(() => app.app.close())
  await eventually(() => app.app.autocert.status()[0].serial !== undefined)
  t.equal(pebble.orderCount(), 1, 'ordered at once')
  t.ok((await handshake(app.port, 'p1.example.test', root)).authorized, 'and served')
  await ordersSettled(azurite.connectionString, 'poisoned', ['p1.example.test', 'acme_orders+log'])
  const log = JSON.parse(String(await store.get('acme_orders+log'))) as unknown[]
  t.equal(log.length, 1, 'the log now holds the one real order, and none of the poison')
  t.notOk(app.logs.some((l) => (l.level as number) >= 50), 'no error logged')
})

t.test('no secret in any log line or error of a whole lifecycle, with a connection string and with a SAS URL', async (t) => {
  const { azurite, pebble, httpPort } = await startServices(t)
  const service = BlobServiceClient.fromConnectionString(azurite.connectionString)
  const sasContainer = service.getContainerClient('secrets-sas')
  // A container SAS cannot create its container: it exists already, as in production.
  await sasContainer.createIfNotExists()
  const sasUrl = await sasContainer.generateSasUrl({ permissions: ContainerSASPermissions.parse('racwdl'), expiresOn: new Date(Date.now() + 3_600_000) })
  const sig = new URL(sasUrl).searchParams.get('sig') as string
  // One try and a short deadline: the outage below fails fast instead of retrying for a minute.
  const fast = { retryOptions: { maxTries: 1 }, timeout: 3000 }
  const kinds: Array<{ tag: string, options: AzureBlobStoreOptions, container: string }> = [
    { tag: 'cs', options: { connectionString: azurite.connectionString, container: 'secrets-cs', ...fast }, container: 'secrets-cs' },
    { tag: 'sas', options: { containerUrl: sasUrl, ...fast }, container: 'secrets-sas' }
  ]

  // Everything the run writes: app logs, errors, status(), stderr and warnings.
  const output: string[] = []
  const errors: unknown[] = []
  const stderrWrite = process.stderr.write.bind(process.stderr)
  process.stderr.write = ((chunk: string | Uint8Array, ...rest: unknown[]) => {
    output.push(Buffer.from(chunk).toString())
    return (stderrWrite as (...args: unknown[]) => boolean)(chunk, ...rest)
  }) as typeof process.stderr.write
  const onWarning = (w: Error): void => { errors.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => {
    process.stderr.write = stderrWrite
    process.off('warning', onWarning)
  })
  const apps: TestApp[] = []
  const start = async (options: AzureBlobStoreOptions, domains: string[], extra: { http01?: undefined } = {}): Promise<TestApp> => {
    // startApp's store argument is replaced by options.store: the plugin builds and closes that AzureBlobStore.
    const started = await startApp(pebble, httpPort, new MemoryStore(), { domains, store: options, ...extra })
    apps.push(started)
    return started
  }
  const stop = async (a: TestApp): Promise<void> => { await a.app.close() }
  t.teardown(() => Promise.all(apps.map(stop)))
  const fails = async (what: string, work: () => Promise<unknown>): Promise<void> => {
    const err = await work().then(() => undefined, (err: unknown) => err)
    t.ok(err !== undefined, `${what} fails`)
    errors.push(err)
  }
  let faults = 0

  const pems: string[] = []
  for (const { tag, options, container } of kinds) {
    const domain = `${tag}.example.test`
    const first = await start(options, [domain])
    await eventually(() => first.app.autocert.status()[0].serial !== undefined)
    await ordersSettled(azurite.connectionString, container, [domain])
    const issued = first.app.autocert.status()[0].serial
    const renewed = await first.app.autocert.renew(domain)
    t.not(renewed.serial, issued, `${tag}: issued, then renewed`)
    await stop(first)
    const orders = pebble.orderCount()
    const again = await start(options, [domain])
    t.ok(again.logs.some((l) => l.msg === 'certificate loaded'), `${tag}: restarted from the store`)
    t.equal(pebble.orderCount(), orders, `${tag}: no order on restart`)
    await stop(again)
    const blobs = service.getContainerClient(container)
    for (const key of ['acme_account+key', domain]) pems.push((await blobs.getBlockBlobClient(key).downloadToBuffer()).toString())
    // A stored bundle whose key does not match its certificate (the account key with the domain's chain).
    const chain = pems.at(-1)?.slice(pems.at(-1)?.indexOf('-----BEGIN CERTIFICATE-----')) ?? ''
    const bundle = Buffer.from(`${pems.at(-2) ?? ''}\n${chain}`)
    await blobs.getBlockBlobClient(`mismatch-${tag}.example.test`).upload(bundle, bundle.length)
  }

  // Failing apps: no HTTP-01 listener anywhere, so Pebble's validation is refused.
  const failing: TestApp[] = []
  for (const { tag, options } of kinds) {
    const app = await start(options, [`${tag}.example.test`, `fail-${tag}.example.test`, `mismatch-${tag}.example.test`], { http01: undefined })
    failing.push(app)
    await eventually(() => app.logs.filter((l) => l.msg === 'certificate order failed').length >= 2, 30_000)
    faults += 2
    t.ok(app.logs.some((l) => l.msg === 'ignoring unusable stored certificate'), `${tag}: the mismatched bundle is logged`)
    faults++
    await fails(`${tag}: a forced order the CA cannot validate`, () => app.app.autocert.renew(`fail-${tag}.example.test`))
    await fails(`${tag}: an order in backoff`, () => app.app.autocert.certificate(`fail-${tag}.example.test`))
    faults += 2
  }

  // Storage goes away under both apps, and under stores used directly.
  await azurite.stop()
  for (const [i, { tag, options }] of kinds.entries()) {
    const { app, logs } = failing[i]
    await fails(`${tag}: a renewal with the store down`, () => app.autocert.renew(`${tag}.example.test`))
    await fails(`${tag}: a load with the store down`, () => app.autocert.certificate(`fail-${tag}.example.test`))
    // A domain in backoff is refused from memory; an app starting now reads the store and fails.
    const late = await start(options, [`late-${tag}.example.test`], { http01: undefined })
    t.ok(late.logs.some((l) => l.msg === 'certificate store read failed'), `${tag}: the failed read is logged`)
    logs.push(...late.logs)
    faults++
    const token = randomBytes(32).toString('base64url')
    const res = await app.inject({ url: `${CHALLENGE_PATH}${token}`, headers: { host: `${tag}.example.test` } })
    t.equal(res.statusCode, 503, `${tag}: a challenge lookup with the store down is a 503`)
    t.ok(logs.some((l) => l.msg === 'ACME challenge lookup failed'), `${tag}: and is logged`)
    const direct: CertStore = new AzureBlobStore(options)
    for (const [op, work] of Object.entries({
      get: () => direct.get('k'), put: () => direct.put('k', 'v'), delete: () => direct.delete('k'), list: () => direct.list(), lock: () => direct.lock('k')
    })) await fails(`${tag}: store.${op} with Azurite down`, work)
    faults += 8
  }
  // Option mistakes around secrets: messages name options, never values.
  const misuse: Array<[string, unknown]> = [
    ['a malformed connection string holding the key', { connectionString: `AccountKey=${azurite.accountKey};garbage` }],
    ['a connection string and a SAS URL at once', { connectionString: azurite.connectionString, containerUrl: sasUrl }],
    ['a SAS URL with a container name', { containerUrl: sasUrl, container: 'secrets-sas' }],
    ['a SAS URL and an account key at once', { containerUrl: sasUrl.replace(/sig=[^&]*/, 'sog=x'), accountKey: azurite.accountKey }],
    ['an account key with an endpoint that is no URL', { accountName: 'devstoreaccount1', accountKey: azurite.accountKey, endpoint: `not a url ${sig}` }],
    ['a token credential over http', { accountUrl: `http://127.0.0.1/?sig=${sig}`, credential: { getToken: async () => null } }]
  ]
  for (const [what, options] of misuse) {
    await fails(`a store with ${what}`, async () => new AzureBlobStore(options as AzureBlobStoreOptions))
    faults++
  }
  for (const app of failing) output.push(JSON.stringify(app.app.autocert.status()))
  await Promise.all(apps.map(stop))

  for (const app of apps) output.push(...app.logs.map((l) => JSON.stringify(l)))
  for (const err of errors) {
    const e = err as Error
    let json = ''
    try { json = JSON.stringify(err) } catch {}
    output.push(String(err), e?.message, e?.stack ?? '', inspect(err, { showHidden: true, depth: 8 }), json, ...reachableText(err))
  }
  const text = output.join('\n')
  t.ok(apps.length >= 6 && errors.length >= 20, `${apps.length} apps, ${errors.length} errors, ${text.length} characters of output checked`)
  const bodies = pems.flatMap((pem) => [...pem.matchAll(/-----BEGIN [A-Z ]*PRIVATE KEY-----([\s\S]*?)-----END/g)].map((m) => m[1]))
  t.equal(bodies.length, 4, 'the account keys and certificate keys of both containers were read back')
  const forbidden: Array<[string, string]> = [
    ['PRIVATE KEY', 'PEM private key header'],
    [azurite.accountKey, 'account key'],
    [azurite.accountKey.slice(0, 24), 'prefix of the account key'],
    [sig, 'SAS signature'],
    [encodeURIComponent(sig), 'URL-encoded SAS signature'],
    [new URL(sasUrl).search.slice(1), 'SAS query string'],
    ...bodies.flatMap((body): Array<[string, string]> => [
      [body.replace(/\s/g, ''), 'stored private key'],
      ...body.split(/\r?\n/).filter((line) => line.length >= 40).map((line): [string, string] => [line, 'line of a stored private key'])
    ])
  ]
  for (const [secret, what] of forbidden) t.notOk(text.includes(secret), `the output holds no ${what}`)
  // Option errors show the expected shape with '...' placeholders; a real value is anything else.
  t.notOk(/AccountKey=(?!\.\.\.)[^;\s"'`]/i.test(text), 'the output holds no AccountKey= value')
  t.notOk(/sig=(?!REDACTED|\.\.\.)[^&\s"'`]/i.test(text), 'the output holds no sig= value')
  t.comment(`secrets: ${faults} faults, ${errors.length} errors and ${apps.length} app lifecycles checked against ${forbidden.length} secrets`)
})
