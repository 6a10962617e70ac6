// The companion HTTP-01 listener's own connection limits (HTTP01_LIMITS), on real sockets.
import net from 'node:net'
import t from 'tap'
import { MemoryStore } from '../lib'
import { HTTP01_LIMITS } from '../lib/autocert'
import { startServices } from './helpers/services'
import { eventually, startApp } from './support/app'

const A = 'limits.example.test'

/** Connects to 127.0.0.1:`port`; resolves once connected. */
async function connect (port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1')
  socket.on('error', () => {})
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject))
  return socket
}

/** Milliseconds until `socket` is closed by the other side, or 'open' after `ms`. */
async function closedWithin (socket: net.Socket, ms: number): Promise<number | 'open'> {
  const started = performance.now()
  // Read what comes (a 408, say): a socket nobody reads never sees the other side's end.
  socket.resume()
  return await new Promise((resolve) => {
    if (socket.destroyed) return resolve(0)
    const timer = setTimeout(() => resolve('open'), ms)
    socket.once('close', () => { clearTimeout(timer); resolve(performance.now() - started) })
  })
}

async function status (port: number, path: string): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { host: A } })
  await res.arrayBuffer()
  return res.status
}

t.test('the HTTP-01 listener cuts off slow clients and caps its connections; the CA is still answered', async (t) => {
  const { pebble, httpPort } = await startServices(t)
  const app = await startApp(pebble, httpPort, new MemoryStore(), { domains: [A] })
  t.teardown(() => app.app.close())
  await eventually(() => app.app.autocert.status()[0].serial !== undefined)
  t.pass('the first certificate was validated through the listener')

  await t.test('a client that never finishes its headers is cut off (Node alone waits 60 s, and checks every 30 s)', async (t) => {
    const slow = await connect(httpPort)
    slow.write(`GET /.well-known/acme-challenge/abc HTTP/1.1\r\nHost: ${A}\r\n`)
    const closing = closedWithin(slow, 30_000)
    t.equal(await status(httpPort, '/.well-known/acme-challenge/unknown-token-0123456789abcdef'), 404, 'others are answered meanwhile')
    const after = await closing
    t.not(after, 'open', `closed after ${typeof after === 'number' ? (after / 1000).toFixed(1) : after} s (headersTimeout ${HTTP01_LIMITS.headersTimeout} ms)`)
    slow.destroy()
  })

  await t.test(`beyond ${HTTP01_LIMITS.maxConnections} connections a new one is refused at once; the listener serves again once they are gone`, async (t) => {
    const held: net.Socket[] = []
    t.teardown(() => { for (const s of held) s.destroy() })
    for (let i = 0; i < HTTP01_LIMITS.maxConnections; i++) held.push(await connect(httpPort))
    const extra = await connect(httpPort)
    held.push(extra)
    t.not(await closedWithin(extra, 5_000), 'open', 'the connection over the cap is closed by the server')
    t.ok(held.slice(0, 10).every((s) => !s.destroyed), 'the ones within the cap are not')
    for (const s of held) s.destroy()
    await eventually(async () => await status(httpPort, '/.well-known/acme-challenge/unknown-token-0123456789abcdef').then((code) => code === 404, () => false), 10_000)
    t.pass('answered again')
  })
})
