// Unit tier: the TimerQueue, many deadlines on one timer of a manual clock (see test/helpers/unit.ts).
import t from 'tap'
import { TimerQueue, type Queued } from '../../lib/timer-queue'
import { ManualClock } from '../helpers/unit'

interface Entry extends Queued { name: string }
const entry = (name: string): Entry => ({ name, queuedAt: undefined, queuedIndex: undefined })

t.test('entries fire at their own times, in time order, on one clock timer', async (t) => {
  const clock = new ManualClock(0)
  const fired: Array<[string, number]> = []
  const queue = new TimerQueue<Entry>(clock, (e) => { fired.push([e.name, clock.now()]) })
  // 1,000 entries at shuffled times, some sharing a time.
  const entries = Array.from({ length: 1000 }, (_, i) => entry(`e${i}`))
  const times = entries.map((_, i) => ((i * 7919) % 500) * 10)
  entries.forEach((e, i) => { queue.set(e, times[i]) })
  t.equal(queue.size, 1000)
  t.equal(clock.pending, 1, 'one timer on the clock')
  await clock.advance(5000)
  t.equal(fired.length, 1000, 'every entry fired once')
  t.ok(fired.every(([name, at]) => at === times[Number(name.slice(1))]), 'each at its own time')
  t.ok(fired.every(([, at], i) => i === 0 || at >= fired[i - 1][1]), 'in time order')
  t.equal(queue.size, 0)
  t.equal(clock.pending, 0, 'and no timer left')
  t.ok(entries.every((e) => e.queuedAt === undefined && e.queuedIndex === undefined && !queue.has(e)), 'every entry off the queue')
})

t.test('set() moves an entry earlier or later, delete() and clear() take entries off', async (t) => {
  const clock = new ManualClock(0)
  const fired: string[] = []
  const queue = new TimerQueue<Entry>(clock, (e) => { fired.push(e.name) })
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(entry)
  queue.set(a, 100)
  queue.set(b, 200)
  queue.set(c, 300)
  queue.set(d, 400)
  queue.set(c, 50)
  queue.set(a, 350)
  queue.delete(b)
  queue.delete(b)
  t.notOk(queue.has(b), 'a deleted entry is off the queue; deleting it again changes nothing')
  await clock.advance(1000)
  t.same(fired, ['c', 'a', 'd'], 'moved earlier, moved later, deleted: never fired')
  queue.set(a, 2000)
  queue.set(b, 3000)
  queue.clear()
  t.equal(clock.pending, 0, 'clear() leaves no timer')
  await clock.advance(5000)
  t.same(fired, ['c', 'a', 'd'], 'nothing fires after clear()')
})

t.test('an entry queued again from its own fire(), or a past time, fires at the right moment', async (t) => {
  const clock = new ManualClock(0)
  const fired: Array<[string, number]> = []
  const queue = new TimerQueue<Entry>(clock, (e) => {
    fired.push([e.name, clock.now()])
    if (fired.length < 3) queue.set(e, clock.now() + 100)
  })
  const a = entry('a')
  queue.set(a, 10)
  await clock.advance(1000)
  t.same(fired, [['a', 10], ['a', 110], ['a', 210]], 'queued again by its fire(): fired again 100 ms later, twice')
  const late = entry('late')
  queue.set(late, clock.now() - 500)
  await clock.advance(0)
  t.same(fired.at(-1), ['late', 1000], 'a time in the past fires at once')
})

t.test('a fire() that throws leaves the others queued and the timer armed', async (t) => {
  const clock = new ManualClock(0)
  const fired: string[] = []
  const queue = new TimerQueue<Entry>(clock, (e) => {
    fired.push(e.name)
    if (e.name === 'bad') throw new Error('boom')
  })
  queue.set(entry('bad'), 10)
  queue.set(entry('good'), 20)
  await t.rejects(clock.advance(100), /boom/, 'the error reaches the clock')
  t.equal(queue.size, 1, 'the other entry is still queued')
  t.equal(clock.pending, 1, 'with the timer armed for it')
})
