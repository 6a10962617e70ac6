// The commands of `fastify-autocert <command>`, in the order the help lists them.
import type { Command } from './context'
import { importCommand } from './import'

export const COMMANDS: readonly Command[] = [
  importCommand
]
