// `fastify-autocert import` refuses what the plugin could not serve, waits for a running instance's lock, and fails
// in one line: run as a child process, on real Pebble 2.10 and Azurite. The layouts and serving: test/cli-import.test.ts.
import { execFile } from 'node:child_process'
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { decodeBundle } from '../lib/certificate'
import { runCli } from './helpers/cli'
import { checkNoSecrets, importJson, startImportBench } from './helpers/import'
import { eventually } from './support/app'

// Every run of the command is a process that compiles the sources anew: on a busy machine, many seconds each.
t.setTimeout(600_000)

t.test('fastify-autocert import: checks, locks and errors', async (t) => {
  const bench = await startImportBench(t)
  const { work, env, blobStore, cli, obtain } = bench
  const issued = path.join(work, 'issued')
  await obtain(issued, ['a.example.test', 'b.example.test'])
  const brief = path.join(work, 'brief')
  await obtain(brief, ['f.example.test'], { profile: 'brief' })

  t.test('refused: a key that does not match, an expired certificate, wildcards, other key types, files that hold no certificate', async (t) => {
    const expiredAt = decodeBundle('f.example.test', 'f.example.test', await readFile(path.join(brief, 'f.example.test'))).notAfter
    // The 3-second certificate's notAfter is waited for, however long that takes.
    await eventually(() => Date.now() > expiredAt + 1000, 60_000)

    const odd = path.join(work, 'odd')
    const made = path.join(work, 'openssl')
    await mkdir(odd)
    await mkdir(made)
    const openssl = promisify(execFile)
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1']
    const selfSigned = async (name: string, keyArgs: string[], sans?: string): Promise<void> => {
      await openssl('openssl', ['req', '-x509', ...keyArgs, '-nodes', '-keyout', path.join(made, `${name}.key`), '-out', path.join(made, `${name}.crt`),
        '-subj', `/CN=${name}`, ...(sans === undefined ? [] : ['-addext', `subjectAltName=${sans}`]), '-days', '30'])
      await writeFile(path.join(odd, name), Buffer.concat([await readFile(path.join(made, `${name}.key`)), await readFile(path.join(made, `${name}.crt`))]))
    }
    await selfSigned('wildcard.example.test', ec, 'DNS:*.wildcard.example.test')
    await selfSigned('mixed.example.test', ec, 'DNS:mixed.example.test,DNS:*.mixed.example.test,IP:127.0.0.1')
    await selfSigned('cn-only.example.test', ec)
    await selfSigned('ed.example.test', ['-newkey', 'ed25519'], 'DNS:ed.example.test')
    await selfSigned('long.example.test', ['-newkey', 'rsa:3072'], 'DNS:long.example.test')
    // As many copies of the certificate as a file may hold: with the RSA key (longer than one copy) the bundle is over the limit.
    const long = (await readFile(path.join(made, 'long.example.test.crt'), 'utf8')).trim()
    await writeFile(path.join(work, 'long.chain'), Array.from({ length: Math.floor(64 * 1024 / (long.length + 1)) }, () => long).join('\n'))
    // `openssl ecparam -genkey` writes the curve's parameters before the key: a block the plugin's bundle has no place for.
    await writeFile(path.join(odd, 'params.example.test'), `${(await openssl('openssl', ['ecparam', '-name', 'prime256v1'])).stdout}${await readFile(path.join(odd, 'mixed.example.test'), 'utf8')}`)
    await writeFile(path.join(odd, 'chain-only.example.test'), await readFile(path.join(made, 'ed.example.test.crt')))
    await writeFile(path.join(odd, 'garbage.example.test'), 'not a PEM file\n')
    await writeFile(path.join(odd, 'huge.example.test'), Buffer.alloc(65 * 1024, 'A'))
    await writeFile(path.join(odd, '.tmp-1234'), '')
    await writeFile(path.join(odd, 'notes_2026'), 'not a key of the cache\n')
    await mkdir(path.join(odd, 'sub'))
    const a = decodeBundle('a.example.test', 'a.example.test', await readFile(path.join(issued, 'a.example.test')))
    const b = decodeBundle('b.example.test', 'b.example.test', await readFile(path.join(issued, 'b.example.test')))
    await writeFile(path.join(work, 'a.key'), a.key)
    await writeFile(path.join(work, 'b.chain'), b.chain)
    await writeFile(path.join(work, 'b.key'), b.key)
    const [leaf, intermediate] = b.chain.split(/(?<=-----END CERTIFICATE-----)\n/)
    // cert.pem where fullchain.pem belongs; a chain with a certificate of another's after it; a chain too long to store.
    await writeFile(path.join(work, 'b.leaf'), leaf as string)
    await writeFile(path.join(work, 'b.unordered'), [leaf, intermediate, a.chain].join('\n'))

    // A certbot live/ tree whose fullchain.pem is too large to store.
    await mkdir(path.join(work, 'live', 'huge.example.test'), { recursive: true })
    await writeFile(path.join(work, 'live', 'huge.example.test', 'privkey.pem'), a.key)
    await writeFile(path.join(work, 'live', 'huge.example.test', 'fullchain.pem'), Buffer.alloc(65 * 1024, 'A'))

    const result = await cli([
      path.join(brief, 'f.example.test'), odd, path.join(work, 'live'),
      '--key', path.join(work, 'a.key'), '--chain', path.join(work, 'b.chain'),
      '--key', path.join(odd, 'huge.example.test'), '--chain', path.join(work, 'b.chain'),
      '--key', path.join(work, 'b.key'), '--chain', path.join(work, 'b.leaf'),
      '--key', path.join(issued, 'a.example.test'), '--chain', path.join(work, 'b.chain'),
      '--key', path.join(work, 'b.key'), '--chain', path.join(work, 'b.unordered'),
      '--key', path.join(made, 'long.example.test.key'), '--chain', path.join(work, 'long.chain'),
      '--json'
    ], env('refused'))
    t.equal(result.code, 1, 'exit code 1: some were skipped')
    const outcome = (source: string): Array<[unknown, unknown, unknown]> => importJson(result).results.filter((r) => r.source.endsWith(source)).map((r) => [r.outcome, r.name, r.reason])
    t.match(outcome('f.example.test'), [['skipped', undefined, /^expired on \d{4}-\d\d-\d\dT/]], 'an expired certificate is refused')
    t.match(outcome(`a.key + ${path.join(work, 'b.chain')}`), [['skipped', undefined, 'the private key does not match the certificate']], 'a key that does not match the chain is refused')
    t.match(outcome(`huge.example.test + ${path.join(work, 'b.chain')}`), [['skipped', undefined, '66560 bytes, over the 65536 bytes a stored certificate may have']], 'a key file too large to store is not read')
    t.match(outcome('odd/huge.example.test'), [['skipped', undefined, '66560 bytes, over the 65536 bytes a stored certificate may have']], 'nor a bundle file')
    t.match(outcome('live/huge.example.test'), [['skipped', undefined, '66560 bytes, over the 65536 bytes a stored certificate may have']], 'nor a certbot directory\'s: the rest goes on')
    t.match(importJson(result).results.filter((r) => r.source.endsWith('b.leaf')), [{ outcome: 'imported', name: 'b.example.test', warning: 'the chain holds the leaf only: clients may not verify it without the intermediates' }],
      'a chain without its intermediates: imported, with a warning')
    t.match(importJson(result).results.filter((r) => r.source.endsWith('b.unordered')), [{ outcome: 'kept', name: 'b.example.test', reason: 'already stored', warning: 'the chain is not in order (each certificate issued by the next)' }],
      'a chain out of order: a warning')
    t.match(outcome(`issued/a.example.test + ${path.join(work, 'b.chain')}`), [['skipped', undefined, 'the key file holds certificates too: give it as a <path> (a key and its chain in one file)']],
      'a key file with certificates in it is refused')
    t.match(outcome('long.chain'), [['skipped', undefined, /^the bundle takes \d+ bytes, over the 65536 bytes a stored certificate may have$/]], 'a key and a chain too long to store together')
    t.match(outcome('wildcard.example.test'), [['skipped', undefined, 'no name the plugin can serve (*.wildcard.example.test: a wildcard name: import takes none (list it in domains, and the plugin orders it through DNS-01))']], 'a wildcard-only certificate is refused')
    t.match(outcome('/mixed.example.test'), [
      ['imported', 'mixed.example.test', undefined],
      ['skipped', undefined, '*.mixed.example.test: a wildcard name: import takes none (list it in domains, and the plugin orders it through DNS-01)']
    ], 'a certificate with a wildcard among its names: imported under the others, the wildcard reported')
    t.match(outcome('cn-only.example.test'), [['imported', 'cn-only.example.test', undefined]], 'a certificate without subjectAltName: its CN')
    t.match(outcome('ed.example.test'), [['skipped', undefined, 'a ed25519 key: the plugin serves ECDSA and RSA keys']], 'an Ed25519 key is refused')
    t.match(outcome('params.example.test'), [['skipped', undefined, /^FST_AUTOCERT_CORRUPT: stored data under \S+params\.example\.test is unusable: unexpected PEM block EC PARAMETERS$/]], 'a block the bundle has no place for')
    t.match(outcome('chain-only.example.test'), [['skipped', undefined, 'no private key that parses']])
    t.match(outcome('garbage.example.test'), [['skipped', undefined, 'no certificate that parses']])
    t.match(outcome('.tmp-1234'), [['ignored', undefined, /^a hidden file/]])
    t.match(outcome('sub'), [['ignored', undefined, /^a directory in a DirCache/]])
    t.match(outcome('notes_2026'), [['ignored', undefined, /^not a certificate key/]], 'a file named otherwise in a DirCache is left alone')
    t.same((await blobStore('refused').list()).sort(), ['b.example.test', 'cn-only.example.test', 'long.example.test+rsa', 'mixed.example.test'], 'only the certificates that passed are written')

    const human = await cli([path.join(brief, 'f.example.test')], env('refused', { FORCE_COLOR: '1' }))
    t.equal(human.code, 1)
    // eslint-disable-next-line no-control-regex -- the terminal's colour codes are what it checks
    t.match(human.stdout, /^\u001b\[31mskipped \u001b\[39m \S+f\.example\.test: expired on /, 'one red line per refused certificate (FORCE_COLOR)')
    t.match(human.stdout, /^0 imported, 0 kept, 1 skipped, 0 ignored: /m)
  })

  t.test('a name whose lock a running instance holds: waited for, then skipped at --lock-timeout', async (t) => {
    const store = blobStore('locked')
    const lock = await store.lock('a.example.test', undefined, { holder: 'instance-a' })
    t.teardown(() => lock.release())
    const result = await cli([path.join(issued, 'a.example.test'), '--lock-timeout', '1', '--json'], env('locked'))
    t.equal(result.code, 1, `exit code 1: skipped (${result.stderr})`)
    t.match(importJson(result).results[0], { outcome: 'skipped', name: 'a.example.test', reason: 'its lock is held by instance-a (a running instance ordering or storing it): gave up after 1 s (--lock-timeout); run the import again' })
    t.same(await store.list(), [], 'nothing written')
  })

  t.test('the command cannot run: one line, exit code 2', async (t) => {
    const cases: Array<[string[], NodeJS.ProcessEnv, RegExp]> = [
      [[path.join(work, 'missing')], env('errors'), /^fastify-autocert import: \S+missing: no such file or directory\n$/],
      [[path.join(issued, 'a.example.test', 'x')], env('errors'), /^fastify-autocert import: \S+a\.example\.test\/x: ENOTDIR: not a directory, stat '\S+'\n$/],
      [[], env('errors'), /^fastify-autocert import: nothing to import: usage: fastify-autocert import /],
      [['--key', path.join(issued, 'a.example.test')], env('errors'), /^fastify-autocert import: --key and --chain come in pairs: 1 --key, 0 --chain\n$/],
      [['--key', path.join(work, 'nope.key'), '--chain', path.join(issued, 'b.example.test')], env('errors'), /^fastify-autocert import: \S+nope\.key: no such file\n$/],
      [['--key', issued, '--chain', path.join(issued, 'b.example.test')], env('errors'), /^fastify-autocert import: EISDIR: illegal operation on a directory, read\n$/],
      [[issued, '--lock-timeout', 'soon'], env('errors'), /^fastify-autocert import: --lock-timeout must be a number of seconds above 0, not "soon"\n$/],
      [[issued], {}, /^fastify-autocert import: no store: set AZURE_STORAGE_CONNECTION_STRING/],
      // The store refuses the credential: the command ends at its first read, before any lock is waited for.
      [[issued], env('errors', { AZURE_STORAGE_CONNECTION_STRING: bench.azurite.connectionString.replace(bench.accountKey, Buffer.alloc(64, 1).toString('base64')) }),
        /^fastify-autocert import: FST_AUTOCERT_STORE_AUTH: .*\(403 AuthorizationFailure: .*\n$/]
    ]
    for (const [args, environment, message] of cases) {
      // One at a time: each is a process of its own that compiles the sources, and two cores are shared.
      const result = await cli(args, environment)
      t.equal(result.code, 2, `${args.join(' ') || '(no path)'}: exit code 2`)
      t.match(result.stderr, message, 'one line that says why')
      t.equal(result.stdout, '', 'nothing on stdout')
    }
    const help = await runCli(['import', '--help'])
    t.equal(help.code, 0)
    t.match(help.stdout, /^Usage: fastify-autocert import \[<path>\.\.\.\] \[--key FILE --chain FILE\]\.\.\./)
  })

  t.test('no secret in any output', async (t) => {
    await checkNoSecrets(t, bench, [issued, brief])
  })
})
