// At most n tasks at once.
/** Runs at most `size` tasks at once; the others wait their turn, first come first served. */
export class Limiter {
  readonly #size: number
  readonly #waiting: Array<() => void> = []
  #running = 0

  constructor (size: number) {
    this.#size = size
  }

  async run<T> (task: () => Promise<T>): Promise<T> {
    if (this.#running < this.#size) this.#running++
    else await new Promise<void>((resolve) => { this.#waiting.push(resolve) })
    try {
      return await task()
    } finally {
      // The turn passes to the next waiter directly: the count stays.
      const next = this.#waiting.shift()
      if (next !== undefined) next()
      else this.#running--
    }
  }
}
