import t from 'tap'
import { normalizeName } from '../lib/names'

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
