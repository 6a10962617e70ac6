import http from 'node:http'
import https from 'node:https'
import type { AddressInfo, Server } from 'node:net'
import express from 'express'
import t from 'tap'
import { AzureBlobStore, createAutocert, type AutocertOptions, type AutocertServer, type CertStore } from '../lib'
import { eventually, spyStore } from './support/app'
import { freePort } from './support/ports'
import { canConnect } from './support/proc'
import { startServices } from './helpers/services'
import { handshake } from './support/tls'

/*
 * createAutocert() without Fastify, behind the two servers people use: an
 * Express app and a bare node:https server, each with its port-80 server on the
 * port Pebble validates HTTP-01 on. Real Pebble, real Azurite, real TLS.
 */

const CONTAINER = 'adapters'
const CHALLENGE = '/.well-known/acme-challenge/'

type Kind = 'express' | 'node:https'

/** A request the port-80 server answered, as it left the server. */
interface Answered { method: string, url: string, status: number }

interface FrontEnd {
  secure: https.Server
  plain: http.Server
  /** Every request `plain` answered. */
  answered: Answered[]
}

/**
 * The servers of each kind, as the README shows them. Express: one app on both
 * servers, the middleware first (anything else goes on to the app). node:https:
 * the middleware alone is port 80's handler (anything else gets 404).
 */
function frontEnd (kind: Kind, autocert: AutocertServer): FrontEnd {
  const answered: Answered[] = []
  const plain = http.createServer()
  // Registered before the handler: it sees every request, and only looks.
  plain.on('request', (req: http.IncomingMessage, res: http.ServerResponse) => {
    res.on('finish', () => answered.push({ method: req.method ?? '', url: req.url ?? '', status: res.statusCode }))
  })
  if (kind === 'express') {
    const app = express()
    app.use(autocert.middleware)
    app.get('/', (_req, res) => { res.type('text/plain').send('hello from express') })
    plain.on('request', app)
    return { secure: https.createServer({ SNICallback: autocert.SNICallback }, app), plain, answered }
  }
  plain.on('request', autocert.middleware)
  const secure = https.createServer({ SNICallback: autocert.SNICallback }, (_req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' }).end('hello from node:https')
  })
  return { secure, plain, answered }
}

function listen (server: Server, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, '127.0.0.1', () => { resolve((server.address() as AddressInfo).port) })
  })
}

function close (server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()))
}

interface Reply { status: number | undefined, headers: http.IncomingHttpHeaders, body: string }

function reply (req: http.ClientRequest): Promise<Reply> {
  return new Promise((resolve, reject) => {
    req.on('response', (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d: string) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }))
    })
    req.on('error', reject)
    req.end()
  })
}

/** Plain HTTP to 127.0.0.1:port with the Host header `host`. */
function plainRequest (port: number, method: string, path: string, host: string): Promise<Reply> {
  return reply(http.request({ host: '127.0.0.1', port, method, path, headers: { host }, agent: false }))
}

/** HTTPS to 127.0.0.1:port for `servername`, trusting `ca` only. */
function secureRequest (port: number, method: string, path: string, servername: string, ca: string): Promise<Reply> {
  return reply(https.request({ host: '127.0.0.1', port, method, path, servername, headers: { host: servername }, ca, agent: false }))
}

/** The kinds of handle and timer that keep this process alive, counted: what a leak would add to. */
function liveResources (): Record<string, number> {
  const count: Record<string, number> = {}
  for (const kind of process.getActiveResourcesInfo()) {
    if (kind === 'TCPServerWrap' || kind === 'TCPSocketWrap' || kind === 'Timeout') count[kind] = (count[kind] ?? 0) + 1
  }
  return count
}

const sameCounts = (a: Record<string, number>, b: Record<string, number>): boolean =>
  JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort())

t.test('createAutocert() behind Express and node:https, on real Pebble and Azurite', async (t) => {
  const { azurite, pebble, httpPort, root } = await startServices(t)
  const newStore = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: CONTAINER })
  const options = (store: CertStore, domains: string[], logs: string[]): AutocertOptions => ({
    domains,
    store,
    directoryUrl: pebble.directoryUrl,
    termsOfServiceAgreed: true,
    logger: {
      debug () {},
      info (obj, msg) { logs.push(`${msg} ${JSON.stringify(obj)}`) },
      warn (obj, msg) { logs.push(`${msg} ${JSON.stringify(obj)}`) },
      error (obj, msg) { logs.push(`${msg} ${JSON.stringify(obj)}`) }
    }
  })

  for (const kind of ['express', 'node:https'] as const) {
    await t.test(kind, async (t) => {
      const before = liveResources()
      const domain = `${kind === 'express' ? 'express' : 'node'}.example.test`
      const inner = newStore()
      const store = spyStore(inner)
      const logs: string[] = []
      // The http01 companion too, on a port of its own: close() must release it.
      const companionPort = await freePort()
      const autocert = createAutocert({ ...options(store, [domain], logs), http01: { port: companionPort, host: '127.0.0.1' } })
      const { secure, plain, answered } = frontEnd(kind, autocert)
      let closed: Promise<void> | undefined
      const shutdown = (): Promise<void> => {
        closed ??= Promise.all([close(secure), close(plain), autocert.close()]).then(() => inner.close())
        return closed
      }
      t.teardown(shutdown)

      await autocert.ready()
      const port = await listen(secure, 0)
      await listen(plain, httpPort)
      const orders = pebble.orderCount()
      autocert.start(secure)

      await t.test('the first handshake gets a certificate validated through the middleware', async (t) => {
        const served = await handshake(port, domain, root)
        t.ok(served.authorized, 'the chain verifies against Pebble\'s root')
        t.equal(served.subject, domain, 'and names the domain')
        t.equal(pebble.orderCount(), orders + 1, 'one order')
        t.equal(autocert.status()[0].serial, served.serial, 'status() shows the served certificate')
        t.ok(logs.some((l) => l.startsWith(`certificate obtained {"domain":"${domain}","keyType":"ecdsa","serial":"${served.serial}"`)), 'logged as obtained')
        const validations = answered.filter((a) => a.url.startsWith(CHALLENGE))
        t.ok(validations.length > 0, 'Pebble\'s HTTP-01 requests reached the port-80 server')
        t.ok(validations.every((a) => a.method === 'GET' && a.status === 200), 'and the middleware answered them 200')
        const page = await secureRequest(port, 'GET', '/', domain, root)
        t.equal(page.body, `hello from ${kind}`, 'the app answers over HTTPS')
      })

      await t.test('challenge answers, HEAD, and what is not a challenge', async (t) => {
        const token = 'k'.repeat(43)
        const keyAuthorization = `${token}.thumbprint`
        await inner.put(`${token}+http-01`, JSON.stringify({ domain, keyAuthorization }))
        const path = `${CHALLENGE}${token}`
        const get = await plainRequest(httpPort, 'GET', path, `${domain}:${httpPort}`)
        t.equal(get.status, 200, 'a stored token is answered')
        t.equal(get.body, keyAuthorization, 'with exactly the key authorization')
        t.match(get.headers['content-type'], /^text\/plain/, 'as text')
        const head = await plainRequest(httpPort, 'HEAD', path, domain)
        t.equal(head.status, 200, 'HEAD is answered')
        t.equal(head.body, '', 'with no body')
        t.equal(head.headers['content-type'], get.headers['content-type'], 'and the type GET has')
        t.equal((await plainRequest(httpPort, 'GET', path, 'other.example.test')).status, 404, 'not for another host')
        t.equal((await plainRequest(httpPort, 'GET', `${CHALLENGE}${'u'.repeat(43)}`, domain)).status, 404, 'unknown token: 404, never passed on')

        const post = await plainRequest(httpPort, 'POST', path, domain)
        t.equal(post.status, 404, 'POST is not a challenge request')
        t.not(post.body, keyAuthorization, 'and gets no answer')
        const other = await plainRequest(httpPort, 'GET', '/', domain)
        const headOther = await plainRequest(httpPort, 'HEAD', '/', domain)
        if (kind === 'express') {
          t.equal(other.body, 'hello from express', 'anything else goes on to the app (next)')
          t.equal(headOther.status, 200, 'HEAD too')
        } else {
          t.equal(other.status, 404, 'anything else gets 404 (no next)')
          t.equal(headOther.status, 404, 'HEAD too')
        }
        const headPage = await secureRequest(port, 'HEAD', '/', domain, root)
        t.equal(headPage.status, 200, 'HEAD over HTTPS reaches the app')
        t.equal(headPage.body, '', 'with no body')
      })

      await t.test('an unlisted name fails the handshake, with no store or CA traffic', async (t) => {
        const keys = store.keys.length
        const ordersNow = pebble.orderCount()
        for (const name of ['unlisted.example.test', `${domain}.evil.test`, 'localhost']) {
          await t.rejects(handshake(port, name, root), `${name} is refused`)
        }
        t.same(store.keys.slice(keys), [], 'no store call')
        t.equal(pebble.orderCount(), ordersNow, 'no order')
      })

      await t.test('close() releases everything', async (t) => {
        const redirect = await plainRequest(companionPort, 'GET', '/page', domain)
        t.equal(redirect.headers.location, `https://${domain}:${port}/page`, 'the http01 listener was up, redirecting to the server start() was given')
        await shutdown()
        t.notOk(await canConnect(companionPort), 'the http01 listener is closed')
        t.notOk(await canConnect(httpPort), 'so is the port-80 server')
        const again = http.createServer()
        await listen(again, companionPort)
        await close(again)
        t.pass('the http01 port can be bound again')
        // Closed handles leave the list a loop turn or two after their close callbacks.
        await eventually(() => sameCounts(liveResources(), before), 5000).catch(() => {})
        t.same(liveResources(), before, 'no server, socket or timer left keeping the process alive')
      })
    })
  }

  await t.test('an Express and a node:https AutocertServer sharing one store obtain one certificate', async (t) => {
    const store = newStore()
    t.teardown(() => store.close())
    const domain = 'shared.example.test'
    const logs: string[] = []
    const first = createAutocert(options(store, [domain], logs))
    const second = createAutocert(options(store, [domain], logs))
    // Only the first has a port-80 server: a validation of the second's order
    // finds its answer in the shared store.
    const a = frontEnd('express', first)
    const b = frontEnd('node:https', second)
    t.teardown(() => Promise.all([close(a.secure), close(a.plain), first.close(), close(b.secure), second.close()]))
    await Promise.all([first.ready(), second.ready()])
    const [portA, portB] = await Promise.all([listen(a.secure, 0), listen(b.secure, 0), listen(a.plain, httpPort)])
    const orders = pebble.orderCount()
    first.start(a.secure)
    second.start(b.secure)
    const served = await Promise.all([handshake(portA, domain, root), handshake(portB, domain, root), handshake(portB, domain, root)])
    t.ok(served.every((s) => s.authorized && s.subject === domain), 'both serve a verified certificate for the domain')
    t.equal(new Set(served.map((s) => s.serial)).size, 1, 'the same certificate')
    t.equal(pebble.orderCount(), orders + 1, 'one Pebble order')
    t.equal(logs.filter((l) => l.startsWith('certificate obtained')).length, 1, 'obtained once')
  })
})
