/*
 * Figure 1: full TLS handshakes per second, one new connection per request.
 * Two Fastify apps of the same shape (the plugin registered, GET / -> 'hello',
 * the same https options) that differ only in how the certificate is chosen:
 * the plugin's SNICallback with the certificate already in memory, or the same
 * key and chain passed statically. The client runs in its own process and
 * alternates between the two servers in short slices; the ratio is the median
 * over pairs of adjacent slices. Also reported: this process's CPU time per
 * handshake for each server, which other load on the machine barely moves.
 */
import type { AddressInfo } from 'node:net'
import tls from 'node:tls'
import Fastify, { type FastifyInstance } from 'fastify'
import autocert, { MemoryStore, SNICallback } from '../lib'
import { encodeBundle } from '../lib/certificate'
import { createCa } from '../test/support/ca'
import { fmt, log, median, profileArgs, quantile, startWorker, type Figure } from './common'
import type { ClientSetup, SliceRequest, SliceResult } from './handshake-client'

const NAME = 'tls.bench.test'
// Never contacted: the certificate is in the store, so nothing is ordered.
const UNUSED_DIRECTORY = 'https://127.0.0.1:9/directory'

/*
 * Identical in both servers. Resumption is off on the client side (it never
 * offers a session), so every connection is a full handshake; the servers keep
 * Node's defaults for tickets, and a probe below checks both send the same number.
 */
const HTTPS = { sessionTimeout: 300 }

export const handshakes: Figure = async (_services, settings, notes) => {
  // Connections in flight: enough to keep the server busy while the client waits on it.
  const concurrency = 32
  // Short slices, alternating A B B A ..., so that load from other processes on
  // the machine falls on both servers alike; each server gets `slices` of them.
  const slices = settings.quick ? 2 : 24
  const sliceMs = 500
  const ca = createCa()
  const { key, chain } = ca.issue(NAME)
  const store = new MemoryStore()
  await store.put(NAME, encodeBundle({ key, chain }))

  const opened: FastifyInstance[] = []
  const client = startWorker<SliceRequest, SliceResult>('handshake-client.ts',
    { servername: NAME, concurrency } satisfies ClientSetup, profileArgs(settings, 'fig1-client'))
  try {
    const build = async (https: object): Promise<{ app: FastifyInstance, port: number }> => {
      const app = Fastify({ https: { ...HTTPS, ...https } })
      opened.push(app)
      await app.register(autocert, { domains: [NAME], store, termsOfServiceAgreed: true, directoryUrl: UNUSED_DIRECTORY })
      app.get('/', async () => 'hello')
      await app.listen({ port: 0, host: '127.0.0.1' })
      return { app, port: (app.server.address() as AddressInfo).port }
    }
    const servers = {
      plugin: await build({ SNICallback }),
      static: await build({ key, cert: chain })
    }
    const pluginSerial = servers.plugin.app.autocert.status()[0].serial
    for (const [which, { port }] of Object.entries(servers)) {
      const probe = await probeTickets(port, ca.cert)
      if (probe.serial !== pluginSerial) throw new Error(`${which} server served serial ${probe.serial}, expected ${String(pluginSerial)}`)
      notes.push(`figure 1: ${which} server: chain verified against the test CA, serial ${probe.serial}, ${probe.tickets} TLS session ticket(s) per connection (${probe.protocol}); the client never offers one back`)
    }

    type Which = keyof typeof servers
    const total: Record<Which, { count: number, ms: number, cpuUs: number, clientCpuUs: number, rates: number[] }> = {
      plugin: { count: 0, ms: 0, cpuUs: 0, clientCpuUs: 0, rates: [] },
      static: { count: 0, ms: 0, cpuUs: 0, clientCpuUs: 0, rates: [] }
    }
    const run = async (which: Which, durationMs: number): Promise<SliceResult & { serverCpuUs: number }> => {
      // Both servers live in this process and only one is loaded at a time: this
      // process's CPU time during a slice is that server's cost.
      const cpu0 = process.cpuUsage()
      const out = await client.ask({ port: servers[which].port, durationMs })
      const cpu = process.cpuUsage(cpu0)
      if (out.errors > 0) throw new Error(`figure 1 (${which}): ${out.errors} failed requests, first: ${String(out.firstError)}`)
      if (out.resumed > 0) throw new Error(`figure 1 (${which}): ${out.resumed} resumed sessions: not full handshakes`)
      return { ...out, serverCpuUs: cpu.user + cpu.system }
    }
    // Warm-up (JIT, first SecureContext use), not counted.
    await run('plugin', 500)
    await run('static', 500)
    for (let i = 0; i < slices * 2; i++) {
      const which: Which = [0, 3].includes(i % 4) ? 'plugin' : 'static'
      const out = await run(which, sliceMs)
      total[which].count += out.count
      total[which].ms += sliceMs
      total[which].cpuUs += out.serverCpuUs
      total[which].clientCpuUs += out.cpuUs
      total[which].rates.push(out.count * 1000 / sliceMs)
    }
    const rate = (w: Which): number => total[w].count * 1000 / total[w].ms
    const cpuPer = (w: Which): number => total[w].cpuUs / total[w].count
    // Slices 2k and 2k+1 ran back to back (A B, then B A): the median of their
    // ratios ignores the slices a burst of outside load happened to hit.
    const pairs = total.plugin.rates.map((r, i) => r / total.static.rates[i])
    const ratio = median(pairs)
    const ours = rate('plugin')
    const base = rate('static')
    log(`figure 1: plugin ${fmt.int(ours)}/s, static ${fmt.int(base)}/s, median ratio of adjacent slices ${ratio.toFixed(3)}`)
    notes.push(`figure 1: ${concurrency} client connections in flight, ${slices} slices of ${sliceMs} ms per server (A B B A ...); ` +
      `handshakes/s per slice: plugin [${total.plugin.rates.map(fmt.int).join(', ')}], static [${total.static.rates.map(fmt.int).join(', ')}]; ` +
      `ratio of the totals ${(ours / base).toFixed(3)}, median of adjacent pairs ${ratio.toFixed(3)} ` +
      `(quartiles ${quantile(pairs, 0.25).toFixed(3)} to ${quantile(pairs, 0.75).toFixed(3)})`)
    notes.push(`figure 1: server process CPU per handshake (TLS + HTTP + Fastify): plugin ${cpuPer('plugin').toFixed(0)} us, ` +
      `static ${cpuPer('static').toFixed(0)} us (ratio ${(cpuPer('plugin') / cpuPer('static')).toFixed(3)}); ` +
      `server CPU busy: plugin ${pct(total.plugin.cpuUs / 1000 / total.plugin.ms)}, static ${pct(total.static.cpuUs / 1000 / total.static.ms)} of one core; ` +
      `client CPU per handshake: plugin ${(total.plugin.clientCpuUs / total.plugin.count).toFixed(0)} us, static ${(total.static.clientCpuUs / total.static.count).toFixed(0)} us, ` +
      `client busy: plugin ${pct(total.plugin.clientCpuUs / 1000 / total.plugin.ms)}, static ${pct(total.static.clientCpuUs / 1000 / total.static.ms)} of one core`)
    return [{
      figure: '1 TLS handshakes/s (new conn per request, ECDSA)',
      ours: `${fmt.int(ours)}/s`,
      baseline: `${fmt.int(base)}/s`,
      ratio,
      target: '>= 0.97',
      met: ratio >= 0.97
    }, {
      figure: '1 server CPU per handshake',
      ours: `${cpuPer('plugin').toFixed(0)} us`,
      baseline: `${cpuPer('static').toFixed(0)} us`,
      ratio: cpuPer('plugin') / cpuPer('static'),
      target: 'info',
      met: undefined
    }]
  } finally {
    await client.close()
    await Promise.all(opened.map((app) => app.close()))
  }
}

const pct = (share: number): string => `${(share * 100).toFixed(0)}%`

/** One connection that records the served serial and how many session tickets arrive. */
function probeTickets (port: number, ca: string): Promise<{ serial: string, tickets: number, protocol: string }> {
  return new Promise((resolve, reject) => {
    let tickets = 0
    let serial = ''
    const socket = tls.connect({ host: '127.0.0.1', port, servername: NAME, ca }, () => {
      serial = socket.getPeerCertificate().serialNumber.toUpperCase()
      socket.write(`GET / HTTP/1.1\r\nHost: ${NAME}\r\nConnection: close\r\n\r\n`)
    })
    socket.on('session', () => { tickets++ })
    socket.resume()
    socket.once('end', () => {
      resolve({ serial, tickets, protocol: String(socket.getProtocol()) })
      socket.destroy()
    })
    socket.once('error', reject)
  })
}
