// Certificate profiles (draft-ietf-acme-profiles) on real Pebble 2.10: the option, its check, and renewal by each profile's lifetime.
import t from 'tap'
import { AzureBlobStore } from '../lib'
import { getJson, startAriCa, type AriCa } from './helpers/ari'
import { eventually, startApp } from './support/app'
import { startAzurite } from './support/azurite'
import { startPebble } from './support/pebble'
import { freePort } from './support/ports'
import { handshake } from './support/tls'

const DAY = 86_400
const HOUR_MS = 3_600_000

t.test('profiles', async (t) => {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({
    httpPort,
    version: '2.10',
    env: { PEBBLE_WFE_NONCEREJECT: '0' },
    profiles: {
      classic: { validityPeriod: 90 * DAY, description: '90 days, as Let\'s Encrypt\'s classic' },
      tlsserver: { validityPeriod: 45 * DAY, description: '45 days, as Let\'s Encrypt\'s tlsserver' },
      brief: { validityPeriod: 90, description: '90 seconds: a shortlived profile at test speed' }
    }
  })
  t.teardown(() => pebble.stop())
  const root = await pebble.root()
  const ca = await startAriCa(t, pebble)
  let container = 0
  const store = (): AzureBlobStore => new AzureBlobStore({ connectionString: azurite.connectionString, container: `profiles${container++}` })
  const directory = await getJson(ca.directoryUrl, [pebble.caCert, ca.proxy.caCert])
  t.same(Object.keys((directory.meta as { profiles: object }).profiles).sort(), ['brief', 'classic', 'tlsserver'], 'the directory lists the profiles')

  /** The plugin sees a CA without ARI: the directory as Pebble serves it, less `renewalInfo`. */
  const withoutAri = (ca: AriCa): () => void => {
    const rewrite = ca.proxy.rewrite
    ca.proxy.rewrite = (req, answer) => {
      if (req.path !== new URL(ca.directoryUrl).pathname) return rewrite(req, answer)
      const { renewalInfo, ...rest } = JSON.parse(answer.body.toString()) as Record<string, unknown>
      return { body: JSON.stringify(rest) }
    }
    return () => { ca.proxy.rewrite = rewrite }
  }

  await t.test('an unknown profile is a coded error naming the profiles the CA offers', async (t) => {
    const { app, port } = await startApp(pebble, httpPort, store(), { directoryUrl: ca.directoryUrl, domains: ['nope.example.test'], profile: 'sixmonths' })
    t.teardown(() => app.close())
    const err = await app.autocert.certificate('nope.example.test').catch((e: Error & { code?: string }) => e)
    t.equal((err as { code?: string }).code, 'FST_AUTOCERT_INVALID_PROFILE')
    t.match((err as Error).message, /options\.profile "sixmonths" is not a profile the CA offers; it offers: /)
    for (const offered of ['brief', 'classic', 'tlsserver']) t.match((err as Error).message, offered, `the message names ${offered}`)
    t.equal(pebble.orderCount(), 0, 'no order was placed')
    await t.rejects(handshake(port, 'nope.example.test', root), 'and nothing is served')
  })

  await t.test('90-day and 45-day profiles renew by their own lifetimes (a third left); with ARI, inside the CA\'s window', async (t) => {
    const restore = withoutAri(ca)
    for (const [profile, days] of [['classic', 90], ['tlsserver', 45]] as const) {
      const { app } = await startApp(pebble, httpPort, store(), { directoryUrl: ca.directoryUrl, domains: [`${profile}.example.test`], profile })
      const cert = await app.autocert.certificate(`${profile}.example.test`)
      t.equal(Math.round((cert.notAfter.getTime() - cert.notBefore.getTime()) / (DAY * 1000)), days, `${profile}: a ${days}-day certificate`)
      const [status] = app.autocert.status()
      const left = cert.notAfter.getTime() - (status.renewAt as Date).getTime()
      t.ok(left >= days / 3 * DAY * 1000 && left <= days / 3 * DAY * 1000 + HOUR_MS, `${profile}, no ARI: renewed ${(left / DAY / 1000).toFixed(2)} days before expiry`)
      await app.close()
    }
    restore()
    for (const [profile, days] of [['classic', 90], ['tlsserver', 45]] as const) {
      const { app } = await startApp(pebble, httpPort, store(), { directoryUrl: ca.directoryUrl, domains: [`ari-${profile}.example.test`], profile })
      const cert = await app.autocert.certificate(`ari-${profile}.example.test`)
      await eventually(() => app.autocert.status()[0].renewalWindow !== undefined)
      const [status] = app.autocert.status()
      const window = status.renewalWindow as { start: Date, end: Date }
      // Pebble's window: a day either side of two thirds of the lifetime.
      const ideal = cert.notAfter.getTime() - (days * DAY * 1000) / 3
      t.ok(Math.abs(window.start.getTime() - (ideal - DAY * 1000)) < 5000 && Math.abs(window.end.getTime() - (ideal + DAY * 1000)) < 5000, `${profile}, ARI: the CA's window`)
      const renewAt = (status.renewAt as Date).getTime()
      t.ok(renewAt >= window.start.getTime() && renewAt <= window.end.getTime(), `${profile}, ARI: renewal inside it`)
      await app.close()
    }
  })

  await t.test('a 90-second profile renews at half its lifetime, and the new certificate is served', async (t) => {
    // Without ARI: Pebble's window for a certificate this short is its whole lifetime, so the lifetime rule is what is tested here.
    const restore = withoutAri(ca)
    t.teardown(restore)
    const { app, port, logs } = await startApp(pebble, httpPort, store(), { directoryUrl: ca.directoryUrl, domains: ['brief.example.test'], profile: 'brief' })
    t.teardown(() => app.close())
    const cert = await app.autocert.certificate('brief.example.test')
    // X.509 validity includes its last second: Pebble's notAfter is notBefore + 89 s.
    const lifetime = cert.notAfter.getTime() - cert.notBefore.getTime()
    t.ok(lifetime >= 89_000 && lifetime <= 90_000, 'a 90-second certificate')
    await eventually(() => logs.some((l) => l.msg === 'certificate renewed'), 80_000)
    const renewed = logs.find((l) => l.msg === 'certificate renewed') as { time: number, serial: string }
    const half = cert.notAfter.getTime() - lifetime / 2
    t.ok(renewed.time >= half - 4500 - 1000 && renewed.time <= half + 2000, `renewed ${((cert.notAfter.getTime() - renewed.time) / 1000).toFixed(1)} s before expiry (half: 45 s)`)
    t.equal((await handshake(port, 'brief.example.test', root)).serial, renewed.serial, 'the new certificate is served')
  })
})
