// Unusable stored values, each logged once.
import { errorFields, type Logger } from '../events'

// Keys remembered at most: past that, the oldest is forgotten (and logged again if met again).
const REMEMBERED = 1000

/**
 * Logs the unusable (FST_AUTOCERT_CORRUPT) values a reader finds, each once: a
 * value read at every request (an HTTP-01 answer) or at every order (the order
 * log) is logged the first time, and again only after it was found usable in
 * between, or forgotten among more than 1,000 others.
 */
export class CorruptLog {
  readonly #log: Logger
  readonly #message: string
  readonly #reported = new Set<string>()

  /** `message`: the log line, e.g. 'ignoring unusable failure record'. */
  constructor (log: Logger, message: string) {
    this.#log = log
    this.#message = message
  }

  report (key: string, err: unknown): void {
    if (this.#reported.has(key)) return
    if (this.#reported.size >= REMEMBERED) this.#reported.delete(this.#reported.values().next().value as string)
    this.#reported.add(key)
    this.#log.warn({ blob: key, error: errorFields(err) }, this.#message)
  }

  usable (key: string): void {
    this.#reported.delete(key)
  }
}
