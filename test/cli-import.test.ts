// `fastify-autocert import`, run as a child process as an operator would, on real Pebble 2.10 and Azurite: certificates
// Pebble issued, laid out as Go autocert and certbot keep them, imported, then served with no new order.
// The refusals, the lock and the errors: test/cli-import-checks.test.ts.
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { decodeBundle } from '../lib/certificate'
import { certbotTree, checkNoSecrets, importJson, serialOf, startImportBench } from './helpers/import'
import { startApp } from './support/app'
import { handshake } from './support/tls'

// Every run of the command is a process that compiles the sources anew: on a busy machine, many seconds each.
t.setTimeout(600_000)

t.test('fastify-autocert import', async (t) => {
  const bench = await startImportBench(t)
  const { pebble, httpPort, root, work, env, blobStore, cli, obtain } = bench

  // Go autocert's cache: an ECDSA and an RSA certificate of two names, the account key, a challenge answer, the plugin's records.
  const dirCache = path.join(work, 'autocert-cache')
  await obtain(dirCache, ['a.example.test', 'b.example.test'], { keyType: ['ecdsa', 'rsa'] })
  await writeFile(path.join(dirCache, 'Xy0tOkEn+http-01'), '{"domain":"a.example.test","keyAuthorization":"x"}')
  // certbot's tree: live/<name>/ links into archive/<name>/, a README beside them.
  const issued = path.join(work, 'issued')
  await obtain(issued, ['c.example.test', 'd.example.test'])
  const letsencrypt = path.join(work, 'letsencrypt')
  for (const name of ['c.example.test', 'd.example.test']) await certbotTree(letsencrypt, name, path.join(issued, name))
  await writeFile(path.join(letsencrypt, 'live', 'README'), 'This directory contains your keys and certificates.\n')
  const live = path.join(letsencrypt, 'live')
  const serials = {
    a: await serialOf(path.join(dirCache, 'a.example.test'), 'a.example.test'),
    aRsa: await serialOf(path.join(dirCache, 'a.example.test+rsa'), 'a.example.test'),
    b: await serialOf(path.join(dirCache, 'b.example.test'), 'b.example.test'),
    c: await serialOf(path.join(issued, 'c.example.test'), 'c.example.test'),
    d: await serialOf(path.join(issued, 'd.example.test'), 'd.example.test')
  }

  t.test('a Go autocert DirCache and a certbot live/ tree: imported, then served with zero new orders', async (t) => {
    const result = await cli([dirCache, live], env('imported'))
    t.equal(result.code, 0, `exit code 0: everything imported (${result.stderr})`)
    for (const key of ['a.example.test', 'a.example.test+rsa', 'b.example.test', 'b.example.test+rsa', 'c.example.test', 'd.example.test']) {
      t.match(result.stdout, new RegExp(`^imported ${key.replace(/[.+]/g, '\\$&')} \\((ecdsa|rsa), serial [0-9A-F]+, until \\S+, \\d+ days\\) from `, 'm'), `${key}: one line that says it is imported`)
    }
    t.match(result.stdout, /^ignored +\S+acme_account\+key: an ACME account key: not imported/m, 'the account key is left out, and says why')
    t.match(result.stdout, /^ignored +\S+Xy0tOkEn\+http-01: a pending HTTP-01 challenge answer/m, 'a challenge answer is left out')
    t.match(result.stdout, /^ignored +\S+a\.example\.test\+ari: a fleet record of the plugin/m, 'so is a record of the plugin\'s')
    t.match(result.stdout, /^ignored +\S+live\/README: certbot's README$/m, 'certbot\'s README is left out')
    t.match(result.stdout, /^6 imported, 0 kept, 0 skipped, \d+ ignored: container imported at http:\/\/127\.0\.0\.1:\d+\/devstoreaccount1$/m, 'a summary that names the store, not its key')

    const orders = pebble.orderCount()
    // Two apps one after the other (they answer HTTP-01 on one port): the names that have both key types, then the others.
    const app = await startApp(pebble, httpPort, blobStore('imported'), { domains: ['a.example.test', 'b.example.test'], keyType: ['ecdsa', 'rsa'] })
    t.equal((await handshake(app.port, 'a.example.test', root)).serial, serials.a, 'a: the imported ECDSA certificate is served')
    const rsa = await handshake(app.port, 'a.example.test', root, { sigalgs: 'rsa_pss_rsae_sha256:rsa_pkcs1_sha256' })
    t.same([rsa.serial, rsa.keyType], [serials.aRsa, 'rsa'], 'a: the imported RSA certificate is served to an RSA-only client')
    t.equal((await handshake(app.port, 'b.example.test', root)).serial, serials.b, 'b: served, from the DirCache')
    await app.app.close()
    const other = await startApp(pebble, httpPort, blobStore('imported'), { domains: ['c.example.test', 'd.example.test'] })
    t.teardown(() => other.app.close())
    t.equal((await handshake(other.port, 'c.example.test', root)).serial, serials.c, 'c: served, from certbot\'s tree')
    t.equal((await handshake(other.port, 'd.example.test', root)).serial, serials.d, 'd: served, from certbot\'s tree')
    t.equal(pebble.orderCount(), orders, 'zero new orders at the CA')

    const again = await cli([live, '--json'], env('imported'))
    t.equal(again.code, 0, 'importing the same certificates again: exit code 0')
    t.same(importJson(again).results.filter((r) => r.outcome !== 'ignored').map((r) => [r.name, r.outcome, r.reason]), [
      ['c.example.test', 'kept', 'already stored'], ['d.example.test', 'kept', 'already stored']
    ], 'they are kept, already stored')
  })

  t.test('a single certbot live/<name>/ directory, and a key file with a chain file', async (t) => {
    const single = await cli([path.join(live, 'c.example.test'), '--json'], env('single'))
    t.equal(single.code, 0)
    t.same(importJson(single).results.map((r) => [r.name, r.storeKey, r.keyType, r.serial, r.outcome]), [['c.example.test', 'c.example.test', 'ecdsa', serials.c, 'imported']], 'the one certificate of that directory')
    const archive = path.join(letsencrypt, 'archive', 'd.example.test')
    const pair = await cli(['--key', path.join(archive, 'privkey1.pem'), '--chain', path.join(archive, 'fullchain1.pem'), '--json'], env('single'))
    t.equal(pair.code, 0)
    t.same(importJson(pair).results.map((r) => [r.name, r.serial, r.outcome]), [['d.example.test', serials.d, 'imported']], 'a key and a chain in two files')
    t.same((await blobStore('single').list()).sort(), ['c.example.test', 'd.example.test'], 'each under its name, nothing else written')
  })

  t.test('--dry-run reports what would happen and writes nothing', async (t) => {
    const result = await cli([dirCache, '--dry-run'], env('dry'))
    t.equal(result.code, 0)
    t.match(result.stdout, /^would import a\.example\.test \(ecdsa, /m, 'says what it would import')
    t.match(result.stdout, /^4 to import, 0 kept, 0 skipped, \d+ ignored: container dry at \S+ \(dry run: nothing written\)$/m)
    const listed = await cli([dirCache, '--dry-run', '--json'], env('dry'))
    t.equal(importJson(listed).dryRun, true)
    t.equal(importJson(listed).summary.imported, 4, '--json: the four it would import')
    t.same(await blobStore('dry').list(), [], 'nothing written to the store, no lock left behind')
  })

  t.test('a newer certificate replaces an older one; an older one never replaces a newer', async (t) => {
    const older = path.join(work, 'older')
    await obtain(older, ['e.example.test'], { profile: 'week' })
    const newer = path.join(work, 'newer')
    await obtain(newer, ['e.example.test'])
    const olderSerial = await serialOf(path.join(older, 'e.example.test'), 'e.example.test')
    const newerSerial = await serialOf(path.join(newer, 'e.example.test'), 'e.example.test')

    // In the order given: the 7-day certificate, then the 90-day one over it.
    const both = await cli([path.join(older, 'e.example.test'), path.join(newer, 'e.example.test')], env('order'))
    t.equal(both.code, 0)
    t.match(both.stdout, new RegExp(`^imported e\\.example\\.test \\(ecdsa, serial ${olderSerial}, until \\S+, [67] days\\) from \\S+ warning: expires in [67] days: the fleet renews it soon$`, 'm'),
      'the 7-day certificate is imported, with a warning: under 14 days left')
    t.match(both.stdout, `imported e.example.test (ecdsa, serial ${newerSerial}`)
    t.match(both.stdout, `replacing serial ${olderSerial}`, 'the 90-day certificate replaces it, and says so')

    const kept = await cli([path.join(older, 'e.example.test'), '--json'], env('order'))
    t.equal(kept.code, 0, 'keeping the stored certificate is not a failure')
    const [result] = importJson(kept).results
    t.match(result, { outcome: 'kept', serial: olderSerial, stored: { serial: newerSerial } }, 'the 7-day certificate is not written over the 90-day one')
    t.match(result?.reason, `the store holds serial ${newerSerial}, valid as long or longer`, 'and says why')
    const stored = await blobStore('order').get('e.example.test')
    t.equal(decodeBundle('e.example.test', 'e.example.test', stored as Buffer).serial, newerSerial, 'the store still holds the newer one')
  })

  t.test('an encrypted store: imported sealed, served by an app with the same key; another key never writes over it', async (t) => {
    const result = await cli([path.join(live, 'c.example.test')], env('sealed', { AUTOCERT_ENCRYPTION_KEY: bench.encryptionKey }))
    t.equal(result.code, 0)
    const raw = await blobStore('sealed').get('c.example.test')
    t.notMatch((raw as Buffer).toString('latin1'), /BEGIN|PRIVATE KEY/, 'the stored blob is sealed: no PEM in it')

    const orders = pebble.orderCount()
    const app = await startApp(pebble, httpPort, blobStore('sealed'), { domains: ['c.example.test'], encryption: { key: bench.encryptionKey } })
    t.teardown(() => app.app.close())
    t.equal((await handshake(app.port, 'c.example.test', root)).serial, serials.c, 'the app with that key serves it')
    t.equal(pebble.orderCount(), orders, 'zero new orders')

    const wrong = await cli([path.join(issued, 'c.example.test'), '--json'], env('sealed', { AUTOCERT_ENCRYPTION_KEY: Buffer.alloc(32, 7).toString('base64') }))
    t.equal(wrong.code, 1, 'another key: exit code 1')
    t.match(importJson(wrong).results[0]?.reason, /sealed with a key that is not configured; not replaced/, 'what the store holds is not replaced')
    t.equal(Buffer.compare(await blobStore('sealed').get('c.example.test') as Buffer, raw as Buffer), 0, 'the stored blob is untouched')
  })

  t.test('no secret in any output', async (t) => {
    await checkNoSecrets(t, bench, [dirCache, issued])
  })
})
