// Unit tier: the store lookups behind acme-tls/1 connections, bounded like HTTP-01's (see lib/acme/challenge-lookups.ts).
import type { Authorization } from 'acme-client'
import t from 'tap'
import { CHALLENGE_LOOKUP_LIMITS } from '../../lib/acme/challenge-lookups'
import { TlsAlpn01Challenges } from '../../lib/acme/tls-alpn'
import { MemoryStore } from '../../lib/store/memory'
import { recordingLogger } from '../helpers/unit'

/** A MemoryStore whose reads wait until `open()`: lookups stay in flight as long as a test needs. */
function gatedStore (): MemoryStore & { reads: string[], open: () => void } {
  const store = new MemoryStore()
  const reads: string[] = []
  let open!: () => void
  const gate = new Promise<void>((resolve) => { open = resolve })
  const get = store.get.bind(store)
  return Object.assign(store, {
    reads,
    open,
    get: async (key: string, options?: { maxBytes?: number }) => {
      reads.push(key)
      await gate
      return await get(key, options)
    }
  })
}

t.test('acme-tls/1 lookups: one read per name at once, at most CHALLENGE_LOOKUP_LIMITS.inFlight, the rest refused with FST_AUTOCERT_CHALLENGE_BUSY', async (t) => {
  const store = gatedStore()
  const challenges = new TlsAlpn01Challenges(store, recordingLogger())
  const limit = CHALLENGE_LOOKUP_LIMITS.inFlight
  const names = Array.from({ length: limit + 8 }, (_, i) => `n${i}.example.test`)
  const lookups = names.map((name) => challenges.context(name, {}).then(() => 'none', (err: { code?: string }) => err.code))
  const same = [challenges.context(names[0], {}), challenges.context(names[0], {})]
  await new Promise((resolve) => setImmediate(resolve))
  t.equal(store.reads.length, limit, `${limit} reads in flight, one per name`)
  store.open()
  const outcomes = await Promise.all(lookups)
  t.equal(outcomes.filter((o) => o === 'FST_AUTOCERT_CHALLENGE_BUSY').length, 8, 'the names past the limit are refused at once')
  t.equal(outcomes.filter((o) => o === 'none').length, limit)
  t.same(await Promise.all(same), [undefined, undefined], 'lookups of a name being read share that read')
})

t.test('a name is never remembered as unknown: a challenge another instance has just published is found', async (t) => {
  const store = gatedStore()
  store.open()
  const log = recordingLogger()
  const reader = new TlsAlpn01Challenges(store, log)
  const name = 'a.example.test'
  t.equal(await reader.context(name, {}), undefined, 'no challenge yet')
  const publisher = new TlsAlpn01Challenges(store, log)
  const authz: Authorization = { identifier: { type: 'dns', value: name }, status: 'pending', challenges: [], url: '' }
  await publisher.publish(authz, { token: 'T'.repeat(43) }, `${'T'.repeat(43)}.thumbprint`)
  t.ok(await reader.context(name, {}), 'found at once, by a new read')
  t.equal(store.reads.filter((k) => k === `${name}+tls-alpn-01`).length, 2)
})
