/*
 * example/server.ts with nothing but node:https and node:http: the same
 * certificates, store and environment variables (DOMAINS,
 * AZURE_STORAGE_CONNECTION_STRING, ... see server.ts), without a framework.
 * createAutocert() gives the SNICallback for https.createServer and a
 * `(req, res, next)` handler for the port-80 server.
 *
 * With neither ACME_DIRECTORY_URL nor AZURE_STORAGE_CONNECTION_STRING set,
 * `npm run example:https` runs it in the local playground (playground.ts).
 * In your own project, import from 'fastify-autocert' instead of '../lib'.
 */
import http from 'node:http'
import https from 'node:https'
import { createAutocert } from '../lib'
import { close, HANDSHAKE_TIMEOUT, launch, listen, logger, onSignal, redirectToHttps, settings } from './common'

async function main (): Promise<void> {
  const config = settings()
  const autocert = createAutocert({
    domains: config.domains,
    email: config.email,
    directoryUrl: config.directoryUrl,
    profile: config.profile,
    termsOfServiceAgreed: true,
    // Options, not a store: createAutocert() builds the AzureBlobStore and closes it in close().
    store: { connectionString: config.connectionString, container: config.container },
    logger
  })

  const secure = https.createServer({ SNICallback: autocert.SNICallback, handshakeTimeout: HANDSHAKE_TIMEOUT }, (req, res) => {
    if (req.url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(autocert.status()))
    } else if (req.url === '/') {
      const host = (req.headers.host ?? '').replace(/:\d+$/, '')
      res.writeHead(200, { 'content-type': 'text/plain' }).end(`Hello from ${host}, served over HTTPS by fastify-autocert.\n`)
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('Not Found\n')
    }
  })
  // Port 80: the CA's HTTP-01 requests; `next` redirects the rest to https.
  // Without a `next`, the middleware answers anything else 404.
  const toHttps = redirectToHttps(autocert, config.httpsPort)
  const insecure = http.createServer((req, res) => { autocert.middleware(req, res, () => { toHttps(req, res) }) })

  // Stored certificates are in memory before the first connection.
  await autocert.ready()
  await Promise.all([listen(secure, config.httpsPort, config.host), listen(insecure, config.httpPort, config.host)])
  // Both listen: what is missing can be ordered, the CA's validation finds port 80.
  autocert.start(secure)
  logger.info({ host: config.host, https: config.httpsPort, http: config.httpPort }, 'listening')

  // close() ends orders in flight (a handshake waiting for one fails at once),
  // renewal timers and the store; the servers finish the requests they have.
  onSignal(async () => { await Promise.all([close(secure), close(insecure), autocert.close()]) })
}

launch(__filename, main)
