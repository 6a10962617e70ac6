// The CA as the ARI tests show it to the plugin: Pebble 2.10 behind a proxy that shortens ARI's Retry-After.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'
import type { ContainerClient } from '@azure/storage-blob'
import type { Pebble } from '../support/pebble'
import { startCaProxy, trustProxy, type CaProxy } from './ca-proxy'

export interface AriCa {
  proxy: CaProxy
  /** What the plugin is given as its CA. */
  directoryUrl: string
  /** Pebble's and the proxy's listener certificates, for NODE_EXTRA_CA_CERTS of instance processes. */
  caFile: string
  /** The path of the directory's renewalInfo URL: requests under it are ARI checks. */
  renewalInfoPath: string
  /** The ARI checks the proxy has seen so far. */
  checks: () => number
}

/** GET `url` as acme-client would (Pebble 2.10 refuses requests without a User-Agent). */
export function getJson (url: string, ca: string[]): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    https.get(url, { ca, headers: { 'user-agent': 'fastify-autocert-test' } }, (res) => {
      let body = ''
      res.on('data', (d: Buffer) => { body += d.toString() })
      res.on('end', () => { try { resolve(JSON.parse(body)) } catch (err) { reject(err) } })
    }).on('error', reject)
  })
}

/**
 * Pebble behind the CA proxy, its ARI answers' Retry-After (6 h from Pebble)
 * set to `retryAfter` seconds: the plugin waits at least a minute between
 * checks whatever the CA says (RENEWAL_INFO_INTERVALS.min), so '1' means every
 * minute. This process's acme-client trusts both listeners.
 */
export async function startAriCa (t: Test, pebble: Pebble, retryAfter = '1'): Promise<AriCa> {
  const proxy = await startCaProxy(pebble)
  t.teardown(() => proxy.close())
  trustProxy(proxy, pebble)
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ari-ca-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const caFile = path.join(dir, 'ca.pem')
  await writeFile(caFile, `${pebble.caCert}\n${proxy.caCert}\n`)
  const directory = await getJson(proxy.directoryUrl, [pebble.caCert, proxy.caCert])
  if (typeof directory.renewalInfo !== 'string') throw new Error('this Pebble publishes no renewalInfo: ARI tests need Pebble 2.10 (see test/support/README.md)')
  const renewalInfoPath = new URL(directory.renewalInfo).pathname
  proxy.rewrite = (req) => req.path.startsWith(renewalInfoPath) ? { headers: { 'retry-after': retryAfter } } : undefined
  return {
    proxy,
    directoryUrl: proxy.directoryUrl,
    caFile,
    renewalInfoPath,
    checks: () => proxy.seen.filter((s) => s.method === 'GET' && s.path.startsWith(renewalInfoPath)).length
  }
}

/** The leaf (first certificate, PEM) of the bundle stored for `domain`. */
export async function storedLeaf (container: ContainerClient, domain: string): Promise<string> {
  const bundle = (await container.getBlockBlobClient(domain).downloadToBuffer()).toString()
  const leaf = /-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----/.exec(bundle)?.[0]
  if (leaf === undefined) throw new Error(`no certificate stored for ${domain}`)
  return leaf
}
