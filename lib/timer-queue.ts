// Many deadlines on one timer: every certificate's next renewal or check, in time order.
import type { Clock, Timer } from './clock'

/** The fields the queue keeps on each of its entries (written by the queue only). */
export interface Queued {
  /** When the entry fires (ms since the epoch); undefined while it is not queued. */
  queuedAt: number | undefined
  /** Its place in the queue's heap; undefined while it is not queued. */
  queuedIndex: number | undefined
}

/**
 * Calls `fire(entry)` at each entry's time, in time order, with one timer of
 * `clock` armed for the earliest. A fleet of 100,000 names has as many
 * deadlines: a Node timer each costs about 0.7 KiB (its Timeout, its closure,
 * and a timer list for each distinct delay), an entry here a place in an
 * array. The entries carry their own time and place (Queued), so nothing is
 * allocated per entry.
 */
export class TimerQueue<T extends Queued> {
  readonly #clock: Clock
  readonly #fire: (entry: T) => void
  /** A binary min-heap by queuedAt. */
  readonly #heap: T[] = []
  #timer: Timer | undefined
  #armedAt: number | undefined

  constructor (clock: Clock, fire: (entry: T) => void) {
    this.#clock = clock
    this.#fire = fire
  }

  get size (): number {
    return this.#heap.length
  }

  has (entry: T): boolean {
    return entry.queuedIndex !== undefined
  }

  /** Fires `entry` at `at`, instead of any earlier time it was queued for. */
  set (entry: T, at: number): void {
    if (entry.queuedIndex === undefined) {
      entry.queuedIndex = this.#heap.length
      this.#heap.push(entry)
    }
    entry.queuedAt = at
    this.#restore(entry.queuedIndex)
    this.#arm()
  }

  /** Takes `entry` off the queue; one not queued is left as it is. */
  delete (entry: T): void {
    if (entry.queuedIndex === undefined) return
    this.#remove(entry)
    this.#arm()
  }

  /** Takes every entry off the queue, and its timer off the clock. */
  clear (): void {
    for (const entry of this.#heap) entry.queuedAt = entry.queuedIndex = undefined
    this.#heap.length = 0
    this.#arm()
  }

  #remove (entry: T): void {
    const i = entry.queuedIndex as number
    const last = this.#heap.pop() as T
    entry.queuedAt = entry.queuedIndex = undefined
    if (last === entry) return
    this.#heap[i] = last
    last.queuedIndex = i
    this.#restore(i)
  }

  /** The clock's one timer, armed for the earliest entry (none when the queue is empty). */
  #arm (): void {
    const at = this.#heap[0]?.queuedAt
    if (at === this.#armedAt) return
    this.#clock.clearTimeout(this.#timer)
    this.#timer = undefined
    this.#armedAt = at
    if (at === undefined) return
    this.#timer = this.#clock.setTimeout(() => { this.#run() }, Math.max(0, at - this.#clock.now()))
  }

  /** Fires what is due, earliest first: each off the queue before `fire` runs, which may queue it again. */
  #run (): void {
    this.#timer = undefined
    this.#armedAt = undefined
    try {
      const now = this.#clock.now()
      for (let head = this.#heap[0]; head !== undefined && (head.queuedAt as number) <= now; head = this.#heap[0]) {
        this.#remove(head)
        this.#fire(head)
      }
    } finally {
      this.#arm()
    }
  }

  /** Moves the entry at `i` up or down until the heap is ordered again. */
  #restore (i: number): void {
    const heap = this.#heap
    const entry = heap[i]
    const at = entry.queuedAt as number
    while (i > 0) {
      const parent = (i - 1) >> 1
      if ((heap[parent].queuedAt as number) <= at) break
      this.#place(heap[parent], i)
      i = parent
    }
    for (;;) {
      const left = 2 * i + 1
      if (left >= heap.length) break
      const right = left + 1
      const child = right < heap.length && (heap[right].queuedAt as number) < (heap[left].queuedAt as number) ? right : left
      if ((heap[child].queuedAt as number) >= at) break
      this.#place(heap[child], i)
      i = child
    }
    this.#place(entry, i)
  }

  #place (entry: T, i: number): void {
    this.#heap[i] = entry
    entry.queuedIndex = i
  }
}
