// The CA as the ARI tests show it to the plugin (Pebble 2.10 behind a proxy that shortens ARI's Retry-After), and a fleet ordering from it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import os from 'node:os'
import path from 'node:path'
import type { ContainerClient } from '@azure/storage-blob'
import { startAzurite, type Azurite } from '../support/azurite'
import { startPebble, type Pebble } from '../support/pebble'
import { freePort } from '../support/ports'
import { startCaProxy, trustProxy, type CaProxy } from './ca-proxy'
import { startInstance, type Instance, type InstanceOptions } from './instance'

/** Whoever releases what a helper starts: a tap test, or the bench's services. */
export interface Owner {
  teardown: (fn: () => unknown) => void
}

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
export async function startAriCa (t: Owner, pebble: Pebble, retryAfter = '1'): Promise<AriCa> {
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

/** A fleet of instance processes on one container, ordering from Pebble 2.10 behind the ARI proxy. */
export interface AriFleet {
  pebble: Pebble
  /** Pebble's issuing root: served chains verify against it. */
  root: string
  /** The port Pebble validates HTTP-01 on: give it to one instance (`httpPort`), the others answer from the store. */
  httpPort: number
  azurite: Azurite
  ca: AriCa
  /** Starts an instance of the fleet (stopped at the end of the test). */
  start: (name: string, options?: Partial<InstanceOptions>) => Promise<Instance>
}

/**
 * Azurite, Pebble 2.10 with 90-day certificates (Pebble's own window for them
 * is two months away: only a test moves it) behind the ARI proxy, and a way to
 * start instances listing `domains` on `container`; all stopped when `t` ends (its teardown).
 */
export async function startAriFleet (t: Owner, container: string, domains: string[]): Promise<AriFleet> {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({ httpPort, version: '2.10', validityPeriod: 90 * 86_400, env: { PEBBLE_WFE_NONCEREJECT: '0' } })
  t.teardown(() => pebble.stop())
  const root = await pebble.root()
  const ca = await startAriCa(t, pebble)
  const started: Instance[] = []
  t.teardown(async () => { for (const instance of started) await instance.stop() })
  const start = async (name: string, options: Partial<InstanceOptions> = {}): Promise<Instance> => {
    const instance = await startInstance(pebble, { connectionString: azurite.connectionString, container, domains, name, ...options }, ca)
    started.push(instance)
    return instance
  }
  return { pebble, root, httpPort, azurite, ca, start }
}
