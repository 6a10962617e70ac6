// Unit tier: an instance whose clock is far off the CA's, and certificates that look due on arrival (see test/helpers/unit.ts).
import t from 'tap'
import { CLOCK_TOLERANCE } from '../../lib/fleet/budget'
import { storeKeys } from '../../lib/store/keys'
import { unitManager } from '../helpers/unit'

const MIN = 60_000
const DAY = 24 * 60 * MIN
const A = 'a.example.test'

t.test('a clock far off the CA\'s: no order, the order log untouched, one loud error, FST_AUTOCERT_CLOCK_SKEW; orders again once it is right', async (t) => {
  const { manager, clock, issuer, store, log } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  const backoffs: string[] = []
  manager.events.on('backoff', (e) => backoffs.push(e.reason))
  // The CA's Date says it is an hour earlier than this machine thinks.
  issuer.offset = -60 * MIN
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_CLOCK_SKEW', message: /-3600 s off the CA's/ })
  await t.rejects(manager.certificate(A), { code: 'FST_AUTOCERT_CLOCK_SKEW' }, 'refused from memory meanwhile')
  t.equal(issuer.calls.length, 0, 'no order')
  t.equal(await store.get(storeKeys.orderLog), undefined, 'nothing written to the fleet\'s order log')
  t.same(backoffs, ['clock'], 'a backoff event with reason clock')
  const errors = log.lines.filter((l) => l.level === 'error' && /clock is far off/.test(l.msg))
  t.equal(errors.length, 1, 'said loudly, once')
  t.match(errors[0].obj, { offsetSeconds: -3600, toleranceSeconds: CLOCK_TOLERANCE / 1000 })
  t.match(manager.status()[0], { retryAfter: new Date(clock.now() + MIN), lastError: { message: /clock/ } })

  // Within the tolerance is fine: a clock a little off is any fleet's.
  issuer.offset = CLOCK_TOLERANCE - 1000
  await clock.advance(MIN)
  t.ok((await manager.certificate(A)).serial, 'ordered once the clock is within the tolerance')
  t.equal(issuer.calls.length, 1)
  t.equal(JSON.parse(String(await store.get(storeKeys.orderLog))).length, 1, 'and counted in the log')
})

t.test('a certificate that looks due the moment it is issued is a clock problem: one order, an error, no renewal for an hour', async (t) => {
  const { manager, clock, issuer, log } = unitManager({ domains: [A] })
  t.teardown(() => manager.close())
  // 90-day certificates that started 80 days ago by this clock: due (a third of the lifetime left) at once.
  issuer.backdate = 80 * DAY
  manager.start()
  await clock.advance(0)
  t.equal(issuer.calls.length, 1, 'ordered once')
  await clock.advance(59 * MIN)
  t.equal(issuer.calls.length, 1, 'not again within the hour: no loop of orders')
  t.ok(log.lines.some((l) => l.level === 'error' && /already looks due/.test(l.msg)), 'the log says the clock is suspect')
  t.same(manager.status()[0].renewAt, new Date(clock.now() + MIN), 'the next attempt is an hour after the issuance')
  await clock.advance(MIN)
  t.equal(issuer.calls.length, 2, 'then tried again (still budgeted like any order)')
})
