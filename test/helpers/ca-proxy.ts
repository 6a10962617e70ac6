import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { promisify } from 'node:util'
import * as acme from 'acme-client'
import type { Pebble } from '../support/pebble'

/** An answer the proxy gives instead of Pebble's. */
export interface FakeAnswer {
  status: number
  headers?: Record<string, string>
  /** An ACME problem document (RFC 8555 6.7), sent as application/problem+json. */
  problem?: { type: string, detail: string }
}

/** One request the proxy saw, and the status it answered with. */
export interface Seen {
  method: string
  path: string
  at: number
  status: number
  faked: boolean
}

export interface CaProxy {
  /** https://127.0.0.1:PORT/dir: give this to the plugin instead of Pebble's. */
  directoryUrl: string
  /** The proxy's own self-signed listener certificate. */
  caCert: string
  /**
   * Decides each request: a FakeAnswer replaces Pebble's, undefined passes the
   * request to Pebble. Pebble never answers 5xx or 429 by itself, so these
   * answers are the only fakes; every other answer is Pebble's own.
   */
  intercept: (req: { method: string, path: string }) => FakeAnswer | undefined
  /**
   * Changes Pebble's own answer before it is passed on: headers to set (e.g.
   * a shorter Retry-After) or a new body (e.g. a directory without
   * `renewalInfo`, as a CA without ARI serves). Undefined passes it unchanged.
   */
  rewrite: (req: { method: string, path: string }, answer: { status: number, body: Buffer }) => { headers?: Record<string, string>, body?: string } | undefined
  seen: Seen[]
  /** Stops listening: connections are refused, as by a CA that is down. */
  pause (): Promise<void>
  /** Listens again, on the same port. */
  resume (): Promise<void>
  close (): Promise<void>
}

/**
 * An HTTPS reverse proxy in front of Pebble's ACME API. It forwards the Host
 * header untouched: Pebble builds every URL it hands out (directory, Location,
 * Link, order and authorization bodies) from the Host of the request, so all of
 * them point back at the proxy and no answer needs rewriting. The JWS `url` the
 * client signs is checked by Pebble against that same Host, so it matches too.
 */
export async function startCaProxy (pebble: Pebble): Promise<CaProxy> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ca-proxy-'))
  let key: string
  let caCert: string
  try {
    await promisify(execFile)('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', path.join(dir, 'key.pem'), '-out', path.join(dir, 'cert.pem'), '-days', '7', '-subj', '/CN=localhost',
      '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1'
    ])
    key = await readFile(path.join(dir, 'key.pem'), 'utf8')
    caCert = await readFile(path.join(dir, 'cert.pem'), 'utf8')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }

  const upstream = new URL(pebble.directoryUrl)
  const agent = new https.Agent({ keepAlive: true, ca: pebble.caCert })
  const seen: Seen[] = []
  const proxy: CaProxy = {
    directoryUrl: '',
    caCert,
    intercept: () => undefined,
    rewrite: () => undefined,
    seen,
    pause: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    },
    resume: async () => {
      await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve))
    },
    close: async () => {
      agent.destroy()
      server.closeAllConnections()
      if (server.listening) await new Promise((resolve) => server.close(resolve))
    }
  }

  const server = https.createServer({ key, cert: caCert }, (req, res) => {
    const method = req.method ?? 'GET'
    const url = req.url ?? '/'
    const record: Seen = { method, path: url, at: Date.now(), status: 0, faked: false }
    seen.push(record)
    const fake = proxy.intercept({ method, path: url })
    if (fake !== undefined) {
      record.status = fake.status
      record.faked = true
      req.resume()
      const body = fake.problem === undefined ? '' : JSON.stringify({ ...fake.problem, status: fake.status })
      res.writeHead(fake.status, { 'content-type': 'application/problem+json', ...fake.headers }).end(body)
      return
    }
    const forward = https.request({
      host: upstream.hostname, port: upstream.port, method, path: url, headers: req.headers, agent
    }, (answer) => {
      record.status = answer.statusCode ?? 0
      const chunks: Buffer[] = []
      answer.on('data', (chunk: Buffer) => chunks.push(chunk))
      answer.on('end', () => {
        let body = Buffer.concat(chunks)
        const headers = { ...answer.headers }
        const changed = proxy.rewrite({ method, path: url }, { status: record.status, body })
        if (changed?.body !== undefined) {
          body = Buffer.from(changed.body)
          delete headers['transfer-encoding']
          headers['content-length'] = String(body.length)
        }
        res.writeHead(record.status, { ...headers, ...changed?.headers }).end(body)
      })
    })
    forward.on('error', () => { record.status = 502; res.writeHead(502).end() })
    req.pipe(forward)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  proxy.directoryUrl = `https://127.0.0.1:${port}${upstream.pathname}`
  return proxy
}

/** Makes acme-client trust the proxy's listener (and Pebble's, for direct use), as trustPebble does. */
export function trustProxy (proxy: CaProxy, pebble: Pebble): void {
  acme.axios.defaults.httpsAgent = new https.Agent({ keepAlive: true, ca: [...tls.rootCertificates, pebble.caCert, proxy.caCert] })
}
