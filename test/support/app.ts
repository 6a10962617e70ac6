import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import autocert, { SNICallback, type AutocertOptions, type CertStore, type DomainStatus } from '../../lib'
import type { Pebble } from './pebble'

export interface TestApp {
  app: FastifyInstance
  /** The HTTPS port the app listens on (127.0.0.1). */
  port: number
  /** Every log line the app wrote, parsed. */
  logs: Array<Record<string, unknown>>
}

/**
 * An HTTPS Fastify app with the plugin, ordering from `pebble`, answering
 * HTTP-01 on `httpPort` (Pebble's validation port) through the companion listener.
 */
export async function startApp (pebble: Pebble, httpPort: number, store: CertStore, options: Partial<AutocertOptions> & { domains: string[] }): Promise<TestApp> {
  const logs: Array<Record<string, unknown>> = []
  const stream = new Writable({
    write (chunk: Buffer, _enc, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line))
      done()
    }
  })
  const app = Fastify({ https: { SNICallback }, logger: { level: 'debug', stream } })
  await app.register(autocert, {
    directoryUrl: pebble.directoryUrl,
    termsOfServiceAgreed: true,
    email: 'ops@example.test',
    store,
    http01: { port: httpPort, host: '127.0.0.1' },
    ...options
  })
  app.get('/', async () => 'hello')
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no address')
  return { app, port: address.port, logs }
}

/** status() of `domain` on `app` (its first key type); throws when the app does not list it. */
export function domainStatus (app: TestApp, domain: string): DomainStatus {
  const found = app.app.autocert.status().find((s) => s.domain === domain)
  if (found === undefined) throw new Error(`${domain} is not listed`)
  return found
}

/** Polls `check` every 50 ms until it returns true; rejects after `ms`. */
export async function eventually (check: () => boolean | Promise<boolean>, ms = 30_000): Promise<void> {
  const until = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`condition not met within ${ms} ms`)
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

/** Wraps a store and records every key it is asked about. A spy, not a fake: every call reaches `inner`. */
export function spyStore (inner: CertStore): CertStore & { keys: string[] } {
  const keys: string[] = []
  return {
    keys,
    get: async (key) => { keys.push(key); return inner.get(key) },
    put: async (key, value) => { keys.push(key); return inner.put(key, value) },
    delete: async (key) => { keys.push(key); return inner.delete(key) },
    list: async (prefix) => inner.list(prefix),
    lock: async (key, signal, options) => { keys.push(key); return inner.lock(key, signal, options) }
  }
}
