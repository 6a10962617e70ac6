// Unit tier: the system clock's timers (lib/clock.ts), on Node's own timers.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { systemClock } from '../../lib/clock'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void
const heapUsed = async (): Promise<number> => {
  // Async hooks (tap has some) hear of destroyed timers a turn later, and keep them until then.
  for (let i = 0; i < 3; i++) await new Promise((resolve) => setImmediate(resolve))
  gc()
  gc()
  return process.memoryUsage().heapUsed
}
// Referenced timers, as Node counts them: what holds the process open.
const referenced = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length

t.test('timers cleared long before they are due leave nothing behind, whatever their lengths, and never hold the process open', async (t) => {
  const COUNT = 50_000
  const timers = referenced()
  const before = await heapUsed()
  // Distinct lengths an hour away, as the retries of names refused for the order budget have.
  for (let i = 0; i < COUNT; i++) systemClock.clearTimeout(systemClock.setTimeout(() => {}, 3_600_000 + i))
  const kept = await heapUsed() - before
  // Node's list for each length, left behind, took about 150 bytes each.
  t.ok(kept < COUNT * 40, `${kept} bytes kept for ${COUNT} cleared timers`)
  t.equal(referenced(), timers, 'no timer referenced')

  const pending = systemClock.setTimeout(() => t.fail('cleared'), 3_600_000)
  t.equal(referenced(), timers, 'a pending one is not referenced either')
  systemClock.clearTimeout(pending)
  let fired!: () => void
  const firing = new Promise<void>((resolve) => { fired = resolve })
  const done = systemClock.setTimeout(() => fired(), 1)
  // The clock's own timers do not keep the process alive until it fires: this one does.
  const hold = setTimeout(() => {}, 10_000)
  await firing
  systemClock.clearTimeout(done)
  t.equal(referenced(), timers + 1, 'nor one cleared after it fired')
  clearTimeout(hold)
})
