// The commands of `fastify-autocert <command>`, in the order the help lists them.
import type { Command } from './context'
import { renew, revoke } from './renew'

export const COMMANDS: readonly Command[] = [
  renew,
  revoke
]
