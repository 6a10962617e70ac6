import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import type { IncomingHttpHeaders, IncomingMessage, ServerResponse } from 'node:http'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { trustListeners, type Pebble } from '../support/pebble'

/** An answer the proxy gives instead of Pebble's. */
export interface FakeAnswer {
  status: number
  headers?: Record<string, string>
  /** An ACME problem document (RFC 8555 6.7), sent as application/problem+json. */
  problem?: { type: string, detail: string }
  /**
   * Spend the request's nonce at Pebble first, as a real CA spends the nonce
   * of every request it refuses (Boulder checks it before its rate limits).
   * The proxy posts the same JWS to a URL it was not signed for: Pebble checks
   * (and spends) the nonce before it finds the URL wrong, and does nothing
   * else. For requests signed with a kid (all but newAccount).
   */
  spendNonce?: boolean
  /** Send a fresh nonce of Pebble's in a Replay-Nonce header, as RFC 8555 6.5 asks of error answers too. */
  replayNonce?: boolean
}

/** One request the proxy saw, and the status it answered with. */
export interface Seen {
  method: string
  path: string
  at: number
  status: number
  faked: boolean
  /** A POST's JWS nonce (its protected header's `nonce`). */
  nonce?: string
  /** The answer's problem type (RFC 8555 6.7), Pebble's or the fake's, e.g. urn:ietf:params:acme:error:badNonce. */
  problem?: string
  /** The nonce a fake answer offered in its Replay-Nonce header (FakeAnswer.replayNonce). */
  replayNonce?: string
}

export interface CaProxy {
  /** https://127.0.0.1:PORT/dir: give this to the plugin instead of Pebble's. */
  directoryUrl: string
  /** The proxy's own self-signed listener certificate. */
  caCert: string
  /**
   * Decides each request: a FakeAnswer replaces Pebble's, undefined passes the
   * request to Pebble. Pebble never answers 5xx or 429 by itself, so these
   * answers are the only fakes; every other answer is Pebble's own. Requests
   * and answers are read whole before they are passed on (ACME's are small).
   */
  intercept: (req: { method: string, path: string, body: Buffer }) => FakeAnswer | undefined
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

  /** One request to Pebble, as the client made it but for `method`, `path` and the body. */
  const ask = (req: IncomingMessage, method: string, path: string, body: Buffer): Promise<Answer> => new Promise((resolve, reject) => {
    const { 'content-length': _, 'transfer-encoding': __, ...rest } = req.headers
    const headers = { ...rest, ...(body.length > 0 ? { 'content-length': String(body.length) } : {}) }
    const forward = https.request({ host: upstream.hostname, port: upstream.port, method, path, headers, agent }, (answer) => {
      const chunks: Buffer[] = []
      answer.on('data', (chunk: Buffer) => chunks.push(chunk))
      answer.on('end', () => resolve({ status: answer.statusCode ?? 0, headers: answer.headers, body: Buffer.concat(chunks) }))
      answer.on('error', reject)
    })
    forward.on('error', reject)
    forward.end(method === 'HEAD' ? undefined : body)
  })

  const handle = async (req: IncomingMessage, res: ServerResponse, record: Seen, body: Buffer): Promise<void> => {
    const fake = proxy.intercept({ method: record.method, path: record.path, body })
    if (fake !== undefined) {
      record.faked = true
      record.problem = fake.problem?.type
      // Pebble's nonce URL: a HEAD there answers with a fresh nonce and does nothing else.
      const [, nonce] = await Promise.all([
        fake.spendNonce === true ? ask(req, 'POST', '/my-account/spent-by-the-proxy', body) : undefined,
        fake.replayNonce === true ? ask(req, 'HEAD', '/nonce-plz', Buffer.alloc(0)).then((a) => a.headers['replay-nonce']) : undefined
      ])
      if (typeof nonce === 'string') record.replayNonce = nonce
      const text = fake.problem === undefined ? '' : JSON.stringify({ ...fake.problem, status: fake.status })
      res.writeHead(fake.status, { 'content-type': 'application/problem+json', ...(typeof nonce === 'string' ? { 'replay-nonce': nonce } : {}), ...fake.headers }).end(text)
      record.status = fake.status
      return
    }
    const answer = await ask(req, record.method, record.path, body)
    if (String(answer.headers['content-type']).startsWith('application/problem+json')) {
      try { record.problem = (JSON.parse(answer.body.toString('utf8')) as { type?: string }).type } catch {}
    }
    const changed = proxy.rewrite({ method: record.method, path: record.path }, { status: answer.status, body: answer.body })
    const headers = { ...answer.headers, ...changed?.headers }
    let sent = answer.body
    if (changed?.body !== undefined) {
      sent = Buffer.from(changed.body)
      delete headers['transfer-encoding']
      headers['content-length'] = String(sent.length)
    }
    res.writeHead(answer.status, headers).end(sent)
    record.status = answer.status
  }

  const server = https.createServer({ key, cert: caCert }, (req, res) => {
    const record: Seen = { method: req.method ?? 'GET', path: req.url ?? '/', at: Date.now(), status: 0, faked: false }
    seen.push(record)
    const chunks: Buffer[] = []
    req.on('data', (chunk: Buffer) => chunks.push(chunk))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      record.nonce = jwsNonce(body)
      handle(req, res, record, body).catch(() => {
        record.status = 502
        if (!res.headersSent) res.writeHead(502)
        res.end()
      })
    })
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  proxy.directoryUrl = `https://127.0.0.1:${port}${upstream.pathname}`
  return proxy
}

interface Answer { status: number, headers: IncomingHttpHeaders, body: Buffer }

/** One part (`protected` header or `payload`) of a JWS body (RFC 8555 6.2) as JSON, undefined for anything else. */
function jwsPart (body: Buffer, part: 'protected' | 'payload'): Record<string, unknown> | undefined {
  try {
    const jws = JSON.parse(body.toString('utf8')) as Record<string, unknown>
    const value: unknown = JSON.parse(Buffer.from(String(jws[part]), 'base64url').toString('utf8'))
    return typeof value === 'object' && value !== null ? value as Record<string, unknown> : undefined
  } catch {
    return undefined
  }
}

/** The payload of a JWS body as JSON, undefined for anything else (a POST-as-GET's is empty). */
export function jwsPayload (body: Buffer): Record<string, unknown> | undefined {
  return jwsPart(body, 'payload')
}

/** The nonce in a JWS body's protected header, undefined for anything else. */
function jwsNonce (body: Buffer): string | undefined {
  const nonce = jwsPart(body, 'protected')?.nonce
  return typeof nonce === 'string' ? nonce : undefined
}

/** Makes acme-client trust the proxy's listener (and Pebble's, for direct use), as trustPebble does. */
export function trustProxy (proxy: CaProxy, pebble: Pebble): void {
  trustListeners(pebble.caCert, proxy.caCert)
}
