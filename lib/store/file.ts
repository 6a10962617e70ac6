// The local directory store: one file per key, lock files.
import { randomUUID } from 'node:crypto'
import { link, mkdir, open, readdir, readFile, rename, rm, stat, utimes } from 'node:fs/promises'
import path from 'node:path'
import { HeldLock } from './held-lock'
import { lockPaths } from './keys'
import { pollLock } from './poll-lock'
import { checkKey, oversized, type CertStore, type GetOptions, type Lock, type LockOptions, type LockState } from './store'

// certmagic's rule: a lock file not refreshed for 10 s belongs to a dead process.
const STALE_MS = 10_000
const REFRESH_MS = 3_000

/**
 * A store in a local directory, like Go autocert's DirCache: one file per key
 * (mode 0o600) in a directory created with mode 0o700 on first use. Writes are
 * atomic (temporary file + rename). Shared by processes on one machine, or over a
 * network file system whose clocks agree.
 *
 * Names starting with '.' belong to the store, never to a key: the lock on `key`
 * is the file `.<key>.lock`, temporary files are `.tmp-<uuid>` and `.aside-<uuid>`.
 * A lock file holds its owner's random id and is touched every 3 s while held;
 * one untouched for 10 s is taken over.
 */
export class FileStore implements CertStore {
  readonly #dir: string
  readonly #held = new Set<HeldLock>()
  // Aborted by close(): ends lock() waits that are still going on.
  readonly #closing = new AbortController()
  #ready: Promise<void> | undefined

  constructor (dir: string) {
    if (typeof dir !== 'string' || dir === '') {
      throw Object.assign(new TypeError('FileStore: the directory must be a non-empty path, e.g. new FileStore(\'/var/lib/autocert\')'), {
        code: 'FST_AUTOCERT_INVALID_STORE_OPTIONS'
      })
    }
    this.#dir = path.resolve(dir)
  }

  async get (key: string, options: GetOptions = {}): Promise<Buffer | undefined> {
    const file = this.#path(key)
    await this.#mkdir()
    try {
      return options.maxBytes === undefined ? await readFile(file) : await readAtMost(file, key, options.maxBytes)
    } catch (err) {
      if (isCode(err, 'ENOENT')) return undefined
      throw err
    }
  }

  async put (key: string, value: Buffer | string): Promise<void> {
    const file = this.#path(key)
    await this.#mkdir()
    const tmp = path.join(this.#dir, `.tmp-${randomUUID()}`)
    try {
      const handle = await open(tmp, 'wx', 0o600)
      try {
        await handle.writeFile(value)
        await handle.sync()
      } finally {
        await handle.close()
      }
      await rename(tmp, file)
    } catch (err) {
      await rm(tmp, { force: true })
      throw err
    }
  }

  async delete (key: string): Promise<void> {
    const file = this.#path(key)
    await this.#mkdir()
    await rm(file, { force: true })
  }

  async list (prefix = ''): Promise<string[]> {
    await this.#mkdir()
    const entries = await readdir(this.#dir, { withFileTypes: true })
    return entries
      .filter((e) => e.isFile() && !e.name.startsWith('.') && e.name.startsWith(prefix))
      .map((e) => e.name)
  }

  async lock (key: string, signal?: AbortSignal, options: LockOptions = {}): Promise<Lock> {
    const file = path.join(this.#dir, lockPaths.file(checkKey(key)))
    // The random id makes the file this call's; the holder is only reported.
    const owner = `${randomUUID()}\n${options.holder ?? ''}`
    await pollLock({
      onWait: options.onWait,
      signal,
      closing: this.#closing.signal,
      attempt: async (wait) => {
        await this.#mkdir()
        if (await this.#create(file, owner)) {
          // Taken, but the caller may have given up (or the store closed) just now.
          if (wait.aborted) {
            await removeIfOwned(file, owner)
            throw wait.reason
          }
          return 'taken'
        }
        return await this.#removeIfStale(file) ? 'again' : 'held'
      },
      readHolder: async () => holderOf(await readFile(file, 'utf8'))
    })
    const held: HeldLock = new HeldLock({
      key,
      intervalMs: REFRESH_MS,
      refresh: () => touchIfOwned(file, owner),
      free: () => removeIfOwned(file, owner),
      lost: 'the lock file was removed or taken over by another process',
      forget: () => this.#held.delete(held)
    })
    this.#held.add(held)
    return held
  }

  /** From the lock file: none, free; untouched for 10 s, stale; otherwise held, by the holder it names. */
  async lockState (key: string): Promise<LockState> {
    const file = path.join(this.#dir, lockPaths.file(checkKey(key)))
    let stats, content
    try {
      stats = await stat(file)
      content = await readFile(file, 'utf8')
    } catch (err) {
      if (isCode(err, 'ENOENT')) return { state: 'free' }
      throw err
    }
    const holder = holderOf(content)
    return { state: isStale(stats) ? 'stale' : 'held', ...(holder === undefined ? {} : { holder }) }
  }

  async close (): Promise<void> {
    this.#closing.abort(new Error('FileStore closed'))
    await Promise.all([...this.#held].map((held) => held.drop(new Error('FileStore closed: the lock was released'))))
  }

  #path (key: string): string {
    return path.join(this.#dir, checkKey(key))
  }

  // Creates the directory on first use; a failed attempt is retried by the next call.
  #mkdir (): Promise<void> {
    this.#ready ??= mkdir(this.#dir, { recursive: true, mode: 0o700 }).then(() => {}, (err: unknown) => {
      this.#ready = undefined
      throw err
    })
    return this.#ready
  }

  async #create (file: string, owner: string): Promise<boolean> {
    let handle
    try {
      handle = await open(file, 'wx', 0o600)
    } catch (err) {
      if (isCode(err, 'EEXIST')) return false
      throw err
    }
    try {
      await handle.writeFile(owner)
    } finally {
      await handle.close()
    }
    return true
  }

  // Two waiters may find the same stale file: unlinking it by name could remove
  // the fresh lock the other one just created. So move it aside first (atomic),
  // check that what was moved is the stale file, and put it back if it is not.
  // True when the lock file was stale and is gone (or was gone already): try again at once.
  async #removeIfStale (file: string): Promise<boolean> {
    const aside = path.join(this.#dir, `.aside-${randomUUID()}`)
    try {
      if (!isStale(await stat(file))) return false
      await rename(file, aside)
      if (isStale(await stat(aside))) return true
      // Refreshed by its holder or re-created since the check: put it back, unless
      // yet another one took its place (then its holder finds out at its next refresh).
      await link(aside, file).catch(() => {})
      return false
    } catch (err) {
      if (!isCode(err, 'ENOENT')) throw err
    } finally {
      await rm(aside, { force: true })
    }
    return true
  }
}

// The size comes from the open file (fstat), so a value over the limit is never
// read; what is read is at most that size (writes replace the file by rename,
// so an open file does not change).
async function readAtMost (file: string, key: string, maxBytes: number): Promise<Buffer> {
  const handle = await open(file, 'r')
  try {
    const stats = await handle.stat()
    // Not a file (a directory, say): the read below fails as readFile() would.
    if (stats.isFile() && stats.size > maxBytes) throw oversized(key, stats.size, maxBytes)
    return await handle.readFile()
  } finally {
    await handle.close()
  }
}

async function touchIfOwned (file: string, owner: string): Promise<void> {
  if (await readFile(file, 'utf8') !== owner) throw new Error('the lock file has another owner')
  const now = new Date()
  await utimes(file, now, now)
}

async function removeIfOwned (file: string, owner: string): Promise<void> {
  if (await readFile(file, 'utf8').catch(() => undefined) === owner) await rm(file, { force: true })
}

function isStale (stats: { mtimeMs: number }): boolean {
  return Date.now() - stats.mtimeMs > STALE_MS
}

function isCode (err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code
}

/** The holder a lock file names: its second line (the first is the owner's random id). */
function holderOf (content: string): string | undefined {
  return content.split('\n')[1] || undefined
}
