import t from 'tap'
import { addressOfReverse, isAddress, isWildcard, normalizeAddress, normalizeHost, normalizeListed, normalizeName, reverseName, wildcardOf } from '../lib/names'

t.test('names that map to a certificate name', async (t) => {
  const cases: Array<[string, string]> = [
    ['example.com', 'example.com'],
    ['Example.COM', 'example.com'],
    ['example.com.', 'example.com'],
    ['WWW.Example.com.', 'www.example.com'],
    ['bücher.example', 'xn--bcher-kva.example'],
    ['xn--bcher-kva.example', 'xn--bcher-kva.example'],
    ['a-b.c-d.example', 'a-b.c-d.example'],
    [`${'a'.repeat(63)}.example`, `${'a'.repeat(63)}.example`]
  ]
  for (const [raw, expected] of cases) t.equal(normalizeName(raw), expected, JSON.stringify(raw))
})

t.test('names that are refused', async (t) => {
  const refused = [
    '', '.', 'localhost', 'example', '1.2.3.4', '127.0.0.1.', '::1', '[::1]', 'fe80::1%eth0', '1.2.3.4.5',
    '*.example.com', 'a.*.example.com', 'a..example.com', '.example.com', 'example..com',
    '-a.example.com', 'a-.example.com', `${'a'.repeat(64)}.example`, `${'a.'.repeat(127)}example`,
    'a/b.example.com', 'example.com/x', 'a\\b.example.com', '../example.com', 'a%2fb.example.com', 'a b.example.com',
    'a\u0000b.example.com', 'a\nb.example.com', 'example.com:443', 'user@example.com', 'example.com?x', 'example.com#x',
    'a_b.example.com', 'example.123'
  ]
  for (const raw of refused) t.equal(normalizeName(raw), undefined, JSON.stringify(raw))
  t.equal(normalizeName(42 as unknown as string), undefined, 'not a string')
})

t.test('listed names: wildcards and IP addresses', async (t) => {
  const cases: Array<[string, string | undefined]> = [
    ['*.Example.COM.', '*.example.com'],
    ['*.bücher.example', '*.xn--bcher-kva.example'],
    ['*.com', undefined],
    ['*.*.example.com', undefined],
    ['a.*.example.com', undefined],
    ['*example.com', undefined],
    ['192.0.2.1', '192.0.2.1'],
    ['010.0.0.1', undefined],
    ['2001:DB8:0:0:0:0:0:1', '2001:db8::1'],
    ['[2001:db8::1]', '2001:db8::1'],
    ['2001:db8:0:1:0:0:0:1', '2001:db8:0:1::1'],
    ['fe80::1%eth0', undefined],
    ['example.com', 'example.com']
  ]
  for (const [raw, expected] of cases) t.equal(normalizeListed(raw), expected, JSON.stringify(raw))
  t.equal(normalizeListed(7 as unknown as string), undefined, 'not a string')
  t.equal(normalizeAddress(7 as unknown as string), undefined, 'not a string')
  t.ok(isWildcard('*.example.com') && !isWildcard('example.com'))
  t.ok(isAddress('::1') && !isAddress('example.com'))
})

t.test('the wildcard that covers a name: one label, never a top-level domain\'s', async (t) => {
  t.equal(wildcardOf('a.example.com'), '*.example.com')
  t.equal(wildcardOf('a.b.example.com'), '*.b.example.com')
  t.equal(wildcardOf('example.com'), undefined)
  t.equal(wildcardOf('localhost'), undefined)
})

t.test('Host headers', async (t) => {
  const cases: Array<[string | undefined, string | undefined]> = [
    ['Example.com:8080', 'example.com'],
    ['127.0.0.1:80', '127.0.0.1'],
    ['127.0.0.1', '127.0.0.1'],
    ['[2001:DB8::1]:443', '2001:db8::1'],
    ['[::1]', '::1'],
    ['[::1]x', undefined],
    ['[::1', undefined],
    ['::1', undefined],
    ['[example.com]', undefined],
    ['', undefined],
    [undefined, undefined]
  ]
  for (const [raw, expected] of cases) t.equal(normalizeHost(raw), expected, JSON.stringify(raw))
})

t.test('reverse-mapping names (RFC 8738 section 6)', async (t) => {
  t.equal(reverseName('192.0.2.1'), '1.2.0.192.in-addr.arpa')
  t.equal(reverseName('2001:db8::1'), `1.${'0.'.repeat(23)}8.b.d.0.1.0.0.2.ip6.arpa`)
  t.equal(reverseName('::1'), `1.${'0.'.repeat(31)}ip6.arpa`)
  t.equal(reverseName('2001:db8::'), `${'0.'.repeat(24)}8.b.d.0.1.0.0.2.ip6.arpa`)
  for (const address of ['192.0.2.1', '2001:db8::1', '::1', '2001:db8::', 'fe80::1:2']) {
    t.equal(addressOfReverse(reverseName(address)), address, `${address} and back`)
  }
  t.equal(addressOfReverse('example.com'), undefined)
  t.equal(addressOfReverse('1.2.3.in-addr.arpa'), undefined, 'three labels')
  t.equal(addressOfReverse('256.2.0.192.in-addr.arpa'), undefined, 'no such address')
})
