/*
 * example/server.ts for an Express app: the same certificates, store and
 * environment variables (DOMAINS, AZURE_STORAGE_CONNECTION_STRING, ... see
 * server.ts), without Fastify. createAutocert() gives the SNICallback for
 * https.createServer and the challenge middleware for the app on port 80.
 *
 * With neither ACME_DIRECTORY_URL nor AZURE_STORAGE_CONNECTION_STRING set,
 * `npm run example:express` runs it in the local playground (playground.ts).
 * In your own project, import from 'fastify-autocert' instead of '../lib'.
 */
import http from 'node:http'
import https from 'node:https'
import express from 'express'
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

  const app = express()
  app.get('/', (req, res) => {
    res.type('text/plain').send(`Hello from ${req.hostname}, served over HTTPS by fastify-autocert.\n`)
  })
  app.get('/status', (_req, res) => { res.json(autocert.status()) })

  // Port 80: the CA's HTTP-01 requests, then (next) a redirect to https for the rest.
  const plain = express()
  plain.use(autocert.middleware)
  plain.use(redirectToHttps(autocert, config.httpsPort))

  // Stored certificates are in memory before the first connection.
  await autocert.ready()
  const secure = https.createServer({ SNICallback: autocert.SNICallback, handshakeTimeout: HANDSHAKE_TIMEOUT }, app)
  const insecure = http.createServer(plain)
  await Promise.all([listen(secure, config.httpsPort, config.host), listen(insecure, config.httpPort, config.host)])
  // Both listen: what is missing can be ordered, the CA's validation finds port 80.
  autocert.start(secure)
  logger.info({ host: config.host, https: config.httpsPort, http: config.httpPort }, 'listening')

  // close() ends orders in flight (a handshake waiting for one fails at once),
  // renewal timers and the store; the servers finish the requests they have.
  onSignal(async () => { await Promise.all([close(secure), close(insecure), autocert.close()]) })
}

launch(__filename, main)
