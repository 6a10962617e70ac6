// The account key is sealed anew at start-up after a key rotation, whether the EncryptedStore is built from `encryption` or passed as the store.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { createAutocert, EncryptedStore, MemoryStore, type AutocertOptions } from '../lib'

const quiet = { debug () {}, info () {}, warn () {}, error () {} }
const ACCOUNT = 'acme_account+key'

for (const how of ['encryption: { key, previousKeys }', 'store: new EncryptedStore(...)'] as const) {
  t.test(`${how}: ready() reseals the account key with the current key`, async (t) => {
    const [oldKey, newKey] = [randomBytes(32), randomBytes(32)]
    const inner = new MemoryStore()
    await new EncryptedStore(inner, { key: oldKey }).put(ACCOUNT, 'the account key')
    const sealedWithOld = await inner.get(ACCOUNT)
    const encryption = { key: newKey, previousKeys: [oldKey] }
    const options: AutocertOptions = how.startsWith('encryption')
      ? { domains: ['a.example.test'], termsOfServiceAgreed: true, store: inner, encryption, logger: quiet }
      : { domains: ['a.example.test'], termsOfServiceAgreed: true, store: new EncryptedStore(inner, encryption), logger: quiet }
    const autocert = createAutocert(options)
    t.teardown(() => autocert.close())
    await autocert.ready()
    const now = await inner.get(ACCOUNT)
    t.notSame(now, sealedWithOld, 'rewritten')
    t.equal(String(await new EncryptedStore(inner, { key: newKey }).get(ACCOUNT)), 'the account key', 'and it opens with the new key alone')
  })
}
