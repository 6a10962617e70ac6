// Unit tier: the limits of HTTP-01 store lookups (CHALLENGE_LOOKUP_LIMITS) on a manual clock; the flood itself runs on real sockets in http01-flood.test.ts.
import t from 'tap'
import { CHALLENGE_LOOKUP_LIMITS, ChallengeLookups } from '../../lib/acme/challenge-lookups'
import { ManualClock, recordingLogger } from '../helpers/unit'

/** A read the test ends by hand, per key: what a store round trip looks like from here. */
function manualReads (): { read: (key: string) => Promise<string | undefined>, keys: string[], end: (key: string, value?: string | Error) => void } {
  const keys: string[] = []
  const pending = new Map<string, { resolve: (v: string | undefined) => void, reject: (e: Error) => void }>()
  return {
    keys,
    read: (key) => new Promise((resolve, reject) => { keys.push(key); pending.set(key, { resolve, reject }) }),
    end: (key, value) => {
      const p = pending.get(key)
      pending.delete(key)
      if (value instanceof Error) p?.reject(value)
      else p?.resolve(value)
    }
  }
}

const limits = { ...CHALLENGE_LOOKUP_LIMITS, perConnection: 2, resetAfter: 2, inFlight: 3, unknownTtl: 1000, unknownMax: 3, failureLogInterval: 5000 }

t.test('per connection, then per instance: a lookup over a limit is refused at once, one sharing a read is not', async (t) => {
  const reads = manualReads()
  const lookups = new ChallengeLookups(reads.read, recordingLogger(), limits, new ManualClock())
  const a = {}
  const b = {}
  const first = [lookups.lookup('k1', a), lookups.lookup('k2', a)]
  t.same(await lookups.lookup('k3', a), { refused: 'connection' }, 'a third lookup on one connection')
  t.same(await lookups.lookup('k3', a), { refused: 'connection' })
  t.same(await lookups.lookup('k3', a), { refused: 'reset' }, 'past resetAfter refusals, the connection is to be reset')
  const second = lookups.lookup('k3', b)
  t.same(await lookups.lookup('k4', b), { refused: 'instance' }, 'a fourth read in flight')
  const shared = lookups.lookup('k1', b)
  t.same(reads.keys, ['k1', 'k2', 'k3'], 'the lookup of a key being read shares its read')
  reads.end('k1', 'v1')
  t.same(await Promise.all([first[0], shared]), [{ value: 'v1' }, { value: 'v1' }])
  reads.end('k2', 'v2')
  reads.end('k3', 'v3')
  t.same(await Promise.all([first[1], second]), [{ value: 'v2' }, { value: 'v3' }])
  const again = lookups.lookup('k1', a)
  t.same(reads.keys.at(-1), 'k1', 'a found value is read again: only absence is remembered')
  reads.end('k1', 'v1')
  t.same(await again, { value: 'v1' }, 'the connection is free again once its lookups ended')
  const next = [lookups.lookup('k1', a), lookups.lookup('k2', a)]
  t.same(await lookups.lookup('k3', a), { refused: 'connection' }, 'and its count of refusals starts again')
  reads.end('k1')
  reads.end('k2')
  await Promise.all(next)
})

t.test('unknown keys are remembered for unknownTtl, at most unknownMax of them, oldest first out', async (t) => {
  const reads = manualReads()
  const clock = new ManualClock()
  const lookups = new ChallengeLookups(reads.read, recordingLogger(), limits, clock)
  const c = {}
  const unknown = async (key: string): Promise<void> => {
    const found = lookups.lookup(key, c)
    reads.end(key)
    t.same(await found, { value: undefined }, `${key}: none`)
  }
  await unknown('u1')
  t.same(await lookups.lookup('u1', c), { value: undefined })
  t.equal(reads.keys.length, 1, 'asked again: no read')
  await clock.advance(limits.unknownTtl)
  await unknown('u1')
  t.equal(reads.keys.length, 2, 'after unknownTtl: read again')
  await unknown('u2')
  await unknown('u3')
  await unknown('u4')
  t.equal(reads.keys.length, 5)
  for (const key of ['u2', 'u3', 'u4']) t.same(await lookups.lookup(key, c), { value: undefined })
  t.equal(reads.keys.length, 5, 'the three newest are remembered')
  void lookups.lookup('u1', c)
  t.equal(reads.keys.at(-1), 'u1', 'the oldest was forgotten to keep unknownMax')
  reads.end('u1')
  await clock.advance(limits.unknownTtl - 1)
  lookups.forget('u4')
  void lookups.lookup('u4', c)
  t.equal(reads.keys.at(-1), 'u4', 'forget() drops a key written since')
  reads.end('u4', 'now here')
  await clock.advance(1)
  void lookups.lookup('u3', c)
  t.equal(reads.keys.at(-1), 'u3', 'past unknownTtl, a key is read again')
  reads.end('u3')
})

t.test('a failing read rejects every lookup sharing it, is never remembered, and is logged once per interval with a count', async (t) => {
  const reads = manualReads()
  const clock = new ManualClock()
  const log = recordingLogger()
  const lookups = new ChallengeLookups(reads.read, log, limits, clock)
  const outage = new Error('store down')
  const failing = [lookups.lookup('f', {}), lookups.lookup('f', {})]
  reads.end('f', outage)
  for (const lookup of failing) await t.rejects(lookup, outage)
  const failed = (): Array<Record<string, unknown>> => log.lines.filter((l) => l.msg === 'ACME challenge lookup failed').map((l) => l.obj)
  t.match(failed(), [{ failures: 1, error: { message: 'store down' } }], 'one read, one line')
  for (let i = 0; i < 4; i++) {
    const again = lookups.lookup('f', {})
    reads.end('f', outage)
    await t.rejects(again)
  }
  t.equal(reads.keys.length, 5, 'every lookup read again: a failure is no answer')
  t.equal(failed().length, 1, 'no more lines within the interval')
  await clock.advance(limits.failureLogInterval)
  const later = lookups.lookup('f', {})
  reads.end('f', outage)
  await t.rejects(later)
  t.match(failed(), [{ failures: 1 }, { failures: 5 }], 'the next line counts the failures since the last')
})
