/*
 * Certificates already in Azurite, as a fleet that ran before would have left
 * them: blob name = domain, content = key PEM then chain PEM (encodeBundle),
 * metadata its serial and validity (certificateMetadata), written through
 * AzureBlobStore.put. Shared by figures 2 and 4.
 *
 * One container per domain count: Azurite's cost per read grows with the number
 * of blobs in the container (measured with 1,000 / 4,000 / 10,000 blobs: about
 * 2 / 2.7 / 4.5 ms per read at concurrency 8), so a 1,000-domain start is
 * measured against a container of 1,000.
 */
import { AzureBlobStore } from '../lib'
import { certificateMetadata, decodeBundle, encodeBundle } from '../lib/certificate'
import { createCa, type TestCa } from '../test/support/ca'
import { benchDomain, log, pool, type Services } from './common'

const UPLOAD_CONCURRENCY = 32

export interface Seeded {
  ca: TestCa
  count: number
  container: string
  connectionString: string
}

let ca: TestCa | undefined
const seeded = new Map<number, Promise<Seeded>>()

/** `count` certificates for benchDomain(0 .. count - 1), signed by one CA for the whole run. */
export function seedDomains (services: Services, count: number): Promise<Seeded> {
  let done = seeded.get(count)
  if (done === undefined) {
    done = seed(services, count)
    seeded.set(count, done)
  }
  return done
}

async function seed (services: Services, count: number): Promise<Seeded> {
  const azurite = await services.azurite()
  ca ??= createCa()
  const issuer = ca
  const container = `bench-domains-${count}`
  const store = new AzureBlobStore({ connectionString: azurite.connectionString, container })
  const t0 = performance.now()
  await pool(Array.from({ length: count }, (_, i) => benchDomain(i)), UPLOAD_CONCURRENCY, async (name) => {
    const bundle = encodeBundle(issuer.issue(name))
    await store.put(name, bundle, { metadata: certificateMetadata(decodeBundle(name, name, bundle)) })
  })
  log(`seeded ${count} certificates in Azurite in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
  return { ca: issuer, count, container, connectionString: azurite.connectionString }
}
