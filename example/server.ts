/*
 * A deployable HTTPS server whose certificates come from an ACME CA (Let's
 * Encrypt) and are shared by every instance through Azure Blob Storage.
 * Configured by environment variables:
 *
 *   DOMAINS                          host names to serve, comma-separated (required)
 *   AZURE_STORAGE_CONNECTION_STRING  where certificates and the ACME account live (required)
 *   AZURE_STORAGE_CONTAINER          default autocertcache (created if missing)
 *   ACME_DIRECTORY_URL               'staging' (default), 'production' or an https:// directory URL;
 *                                    a comma-separated list for fallback CAs, in order of preference
 *   ACME_PROFILE                     the CA's certificate profile, e.g. 'tlsserver' or 'shortlived'; default: the CA's
 *   ACME_EMAIL                       contact for the ACME account (expiry notices), optional
 *   HOST                             default 0.0.0.0
 *   HTTPS_PORT                       default 443
 *   HTTP_PORT                        default 80: answers HTTP-01 challenges, redirects the rest to https
 *
 * A private CA's own TLS certificate is trusted through Node's NODE_EXTRA_CA_CERTS.
 * Running this accepts the CA's terms of service (termsOfServiceAgreed in common.ts fastifyServer()).
 *
 * With neither ACME_DIRECTORY_URL nor AZURE_STORAGE_CONNECTION_STRING set,
 * `npm run example` starts a local playground instead: see playground.ts.
 * In your own project, import from 'fastify-autocert' instead of '../lib'.
 */
import { fastifyServer, launch, onSignal, settings } from './common'

async function main (): Promise<void> {
  const config = settings()
  // The plugin's whole set-up is in common.ts fastifyServer(): the store, Fastify({ https: { SNICallback } }) and register().
  const app = await fastifyServer(config)
  onSignal(async () => { await app.close() })
  await app.listen({ host: config.host, port: config.httpsPort })
}

launch(__filename, main)
