// The commands of `fastify-autocert <command>`, in the order the help lists them.
import type { Command } from './context'
import { doctor } from './doctor'
import { exportCommand } from './export'
import { importCommand } from './import'
import { list } from './list'
import { renew, revoke } from './renew'
import { show } from './show'

export const COMMANDS: readonly Command[] = [
  list,
  show,
  exportCommand,
  importCommand,
  renew,
  revoke,
  doctor
]
