// The commands of `fastify-autocert <command>`, in the order the help lists them.
import type { Command } from './context'
import { doctor } from './doctor'

export const COMMANDS: readonly Command[] = [
  doctor
]
