// Makes the store the options name, and knows who closes it.
import type { Settings } from '../options'
import { AzureBlobStore } from './azure-blob'
import { CodedStore } from './coded'
import { EncryptedStore } from './encrypted'
import { isCertStore, type CertStore } from './store'

/** The store the front ends use, and how to close it. */
export interface BuiltStore {
  store: CertStore
  /** The EncryptedStore among them, built from `encryption` or passed as the store, for reseal(). */
  sealed?: EncryptedStore
  /** Closes what the plugin built (an AzureBlobStore made from options); a store the user passed is theirs to close. */
  close: () => Promise<void>
}

/**
 * The one place that makes the store of the options: the user's own, or an
 * AzureBlobStore built from its options (which throws its own coded errors);
 * its failures coded (CodedStore); sealed by an EncryptedStore when `encryption` is set.
 */
export function buildStore ({ store, encryption }: Pick<Settings, 'store' | 'encryption'>): BuiltStore {
  const own = isCertStore(store) ? undefined : new AzureBlobStore(store)
  const base = new CodedStore(own ?? (store as CertStore))
  const sealed = encryption !== undefined ? new EncryptedStore(base, encryption) : store instanceof EncryptedStore ? store : undefined
  return {
    store: encryption === undefined ? base : sealed as EncryptedStore,
    sealed,
    close: async () => { await own?.close() }
  }
}
