import type { ChildProcess } from 'node:child_process'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { freePort } from './ports'
import { spawnTracked, stopChild, waitUntil } from './proc'

export interface Azurite {
  port: number
  accountName: string          // devstoreaccount1
  accountKey: string
  blobEndpoint: string         // http://127.0.0.1:PORT/devstoreaccount1
  connectionString: string
  stop(): Promise<void>        // kill by pid, wait for exit
  start(): Promise<void>       // start again on the same port (after stop); in-memory data is lost
}

// Azurite's well-known development account (public, documented by Microsoft).
const ACCOUNT_NAME = 'devstoreaccount1'
const ACCOUNT_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

// The `azurite-blob` bin target. Run with node directly: through npx the pid we
// hold would be npx's, and killing it leaves Azurite running.
const MAIN = path.join(path.resolve(__dirname, '../..'), 'node_modules/azurite/dist/src/blob/main.js')

// Azurite answers any HTTP request once its listener is up (an unauthenticated
// GET gets a 4xx); we only care that a full HTTP round trip works.
function answers (port: number): Promise<boolean> {
  return new Promise(resolve => {
    http.get({ host: '127.0.0.1', port, path: `/${ACCOUNT_NAME}?comp=list` }, res => {
      res.resume()
      resolve(true)
    }).on('error', () => resolve(false))
  })
}

export async function startAzurite (): Promise<Azurite> {
  const port = await freePort()
  const blobEndpoint = `http://127.0.0.1:${port}/${ACCOUNT_NAME}`
  let child: ChildProcess | undefined

  const start = async (): Promise<void> => {
    if (child !== undefined && child.exitCode === null && child.signalCode === null) throw new Error('Azurite already running')
    // --disableTelemetry: otherwise it phones home; --skipApiVersionCheck:
    // otherwise the current SDK's x-ms-version gets 400 from Azurite 3.35.
    const c = spawnTracked(process.execPath, [
      MAIN, '--inMemoryPersistence', '--silent', '--disableTelemetry', '--skipApiVersionCheck',
      '--blobHost', '127.0.0.1', '--blobPort', String(port)
    ], { cwd: os.tmpdir() })
    child = c
    let out = ''
    c.stdout?.on('data', (d: Buffer) => { out += d.toString() })
    c.stderr?.on('data', (d: Buffer) => { out += d.toString() })
    try {
      await waitUntil('azurite', () => answers(port), c, () => out, 30000)
    } catch (err) {
      await stopChild(c)
      throw err
    }
  }
  const stop = async (): Promise<void> => {
    if (child !== undefined) await stopChild(child)
  }

  await start()
  return {
    port,
    accountName: ACCOUNT_NAME,
    accountKey: ACCOUNT_KEY,
    blobEndpoint,
    connectionString: `DefaultEndpointsProtocol=http;AccountName=${ACCOUNT_NAME};AccountKey=${ACCOUNT_KEY};BlobEndpoint=${blobEndpoint};`,
    stop,
    start
  }
}
