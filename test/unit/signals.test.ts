// Unit tier: the abort-signal helpers on their own, including signals that have aborted already.
import t from 'tap'
import { linkSignals, untilAborted } from '../../lib/signals'

const within = async <T>(p: Promise<T>, ms = 200): Promise<T | 'still pending'> =>
  await Promise.race([p, new Promise<'still pending'>((resolve) => setTimeout(() => resolve('still pending'), ms))])

t.test('untilAborted() rejects at once for a signal that has already aborted', async (t) => {
  const reason = new Error('gone')
  const never = new Promise<never>(() => {})
  t.equal(await within(untilAborted(never, AbortSignal.abort(reason)).catch((err: unknown) => err)), reason)
})

t.test('untilAborted() with an aborted signal still observes the promise: its later rejection is nobody\'s unhandled rejection', async (t) => {
  const unhandled: unknown[] = []
  const onUnhandled = (err: unknown): void => { unhandled.push(err) }
  process.on('unhandledRejection', onUnhandled)
  t.teardown(() => { process.off('unhandledRejection', onUnhandled) })
  let fail!: (err: Error) => void
  const later = new Promise<never>((_resolve, reject) => { fail = reject })
  await t.rejects(untilAborted(later, AbortSignal.abort(new Error('closing'))), { message: 'closing' })
  fail(new Error('late'))
  await new Promise((resolve) => setTimeout(resolve, 20))
  t.same(unhandled, [])
})

t.test('untilAborted() settles with the promise, or with the reason of a later abort', async (t) => {
  t.equal(await untilAborted(Promise.resolve(1), new AbortController().signal), 1)
  t.equal(await untilAborted(Promise.resolve(2), undefined), 2)
  const controller = new AbortController()
  const pending = untilAborted(new Promise(() => {}), controller.signal)
  controller.abort(new Error('stop'))
  await t.rejects(pending, { message: 'stop' })
})

t.test('linkSignals() aborts with the first of two signals, at once when one has aborted already', async (t) => {
  const a = new AbortController()
  const b = new AbortController()
  const linked = linkSignals(a.signal, b.signal)
  t.notOk(linked.signal.aborted)
  b.abort(new Error('b'))
  t.match(linked.signal.reason, { message: 'b' })
  linked.dispose()

  const early = linkSignals(AbortSignal.abort(new Error('a first')), new AbortController().signal)
  t.ok(early.signal.aborted, 'a has aborted: so has the link')
  t.match(early.signal.reason, { message: 'a first' })
  early.dispose()
  const late = linkSignals(new AbortController().signal, AbortSignal.abort(new Error('b first')))
  t.match(late.signal.reason, { message: 'b first' })

  const only = new AbortController().signal
  t.equal(linkSignals(undefined, only).signal, only, 'one signal is its own link')
})
