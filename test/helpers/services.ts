import type { Test } from 'tap'
import { startAzurite, type Azurite } from '../support/azurite'
import { startPebble, trustPebble, type Pebble, type PebbleOptions } from '../support/pebble'
import { freePort } from '../support/ports'

export interface Services {
  azurite: Azurite
  pebble: Pebble
  /** The port Pebble sends HTTP-01 validation requests to. */
  httpPort: number
  /** Pebble's issuing root (PEM): served chains verify against it. */
  root: string
}

/**
 * Azurite and Pebble for one test, on free ports, stopped when it ends; this
 * process's acme-client trusts that Pebble.
 */
export async function startServices (t: Test, options: Omit<PebbleOptions, 'httpPort'> = {}): Promise<Services> {
  const azurite = await startAzurite()
  t.teardown(() => azurite.stop())
  const httpPort = await freePort()
  const pebble = await startPebble({ httpPort, ...options })
  t.teardown(() => pebble.stop())
  trustPebble(pebble)
  return { azurite, pebble, httpPort, root: await pebble.root() }
}
