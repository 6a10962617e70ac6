// The Fastify plugin: validates the options, decorates `fastify.autocert`, adds the challenge route and the hooks, over the core in autocert.ts.
import type { SecureContext, TLSSocket } from 'node:tls'
import type { FastifyPluginAsync } from 'fastify'
import fp from 'fastify-plugin'
import { AutocertCore, CHALLENGE_PATH, type Autocert } from './autocert'
import { FST_AUTOCERT_NOT_REGISTERED } from './errors'
import { validate, type AutocertOptions } from './options'

declare module 'fastify' {
  interface FastifyInstance {
    autocert: Autocert
  }
}

// Which plugin instance serves a TLS server: SNICallback and ALPNCallback find it through the socket.
const cores = new WeakMap<object, AutocertCore>()
// Fastify listening on 'localhost' adds a second server (::1 next to 127.0.0.1)
// that the plugin never sees: with one instance in the process, it serves there too.
const registered = new Set<AutocertCore>()
const warned = new WeakSet<object>()

/**
 * Pass to Fastify's `https` options: `Fastify({ https: { SNICallback } })`.
 * It finds the plugin registered on that server, so it closes over nothing.
 */
export function SNICallback (this: TLSSocket, servername: string, cb: (err: Error | null, ctx?: SecureContext) => void): void {
  const core = coreOf(this)
  if (core === undefined) {
    cb(new FST_AUTOCERT_NOT_REGISTERED())
    return
  }
  core.SNICallback.call(this, servername, cb)
}

/**
 * For TLS-ALPN-01 (options.challenges), next to SNICallback:
 * `Fastify({ https: { SNICallback, ALPNCallback } })`. It takes the CA's
 * acme-tls/1 connections and selects for the others what the server would
 * select without it: http/1.1, or h2 first with `http2: true`.
 */
export function ALPNCallback (this: TLSSocket, hello: { servername: string, protocols: string[] }): string | undefined {
  return coreOf(this)?.ALPNCallback.call(this, hello)
}

function coreOf (socket: TLSSocket): AutocertCore | undefined {
  const server = (socket as { server?: object }).server ?? {}
  const core = cores.get(server) ?? (registered.size === 1 ? registered.values().next().value : undefined)
  if (core === undefined && !warned.has(server)) {
    // Once per server: every handshake fails the same way.
    const err = new FST_AUTOCERT_NOT_REGISTERED()
    process.emitWarning(err.message, { code: err.code })
    warned.add(server)
  }
  return core
}

const autocert: FastifyPluginAsync<AutocertOptions> = async (fastify, options) => {
  // Node's own ALPN choice for this server, which an ALPNCallback replaces: see
  // https.createServer and http2.createSecureServer.
  const { http2, https } = fastify.initialConfig
  const protocols = http2 === true ? ['h2', ...(typeof https === 'object' && https.allowHTTP1 ? ['http/1.1'] : [])] : ['http/1.1']
  const core = new AutocertCore(validate(options), options.logger ?? fastify.log, protocols)
  cores.set(fastify.server, core)
  registered.add(core)

  // The decorator shows the certificates and events, not the lifecycle: the hooks own that.
  const decorator: Autocert = {
    certificate: async (domain) => await core.certificate(domain),
    renew: async (domain) => await core.renew(domain),
    revoke: async (domain, reason) => await core.revoke(domain, reason),
    status: () => core.status(),
    on (event, listener) { core.on(event, listener); return this },
    off (event, listener) { core.off(event, listener); return this }
  }
  fastify.decorate('autocert', decorator)

  // A wildcard, not `:token`: Fastify caps a parameter at 100 characters (maxParamLength), tokens may have 128.
  fastify.route<{ Params: { '*': string } }>({
    method: ['GET', 'HEAD'],
    url: `${CHALLENGE_PATH}*`,
    handler: async (request, reply) => {
      const answer = await core.answerChallenge(request.params['*'], request.host, request.raw)
      return reply.code(answer.status).headers(answer.headers).type('text/plain').send(answer.body)
    }
  })

  fastify.addHook('onReady', async () => { await core.ready() })
  // Orders need a listening server: the CA's validation request must find it.
  fastify.addHook('onListen', async () => { core.start(fastify.server) })
  fastify.addHook('onClose', async () => {
    cores.delete(fastify.server)
    registered.delete(core)
    await core.close()
  })
}

export default fp(autocert, { name: 'fastify-autocert', fastify: '5.x' })
