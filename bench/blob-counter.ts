/*
 * A counting relay in front of Azurite: give the plugin its endpoint instead
 * of Azurite's and every Blob Storage request is counted, by operation and by
 * the kind of key it touches, on its way through.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'

export interface BlobCount {
  total: number
  /** Reads of a certificate blob (GET of `<container>/<domain>` in the watched container). */
  certificateReads: number
  /** By operation and kind of key, e.g. `GET cert`, `PUT lease lock`, `PUT +ari`. */
  byKind: Map<string, number>
}

export interface BlobCounter {
  /** http://127.0.0.1:PORT/<account>: the endpoint to give the store. */
  endpoint: string
  /** `connectionString` with its BlobEndpoint pointed at the relay. */
  connectionString: (connectionString: string) => string
  /** What was counted since the last take(), and a fresh count from now. */
  take: () => BlobCount
  close: () => Promise<void>
}

/**
 * The kind of key a blob path names: `lock` for `locks/<key>`, the suffix of
 * keys such as `<domain>+ari` or `<domain>+failure`, `cert` for a bare domain.
 */
function keyKind (blob: string): string {
  if (blob === '') return 'container'
  if (blob.startsWith('locks/')) return 'lock'
  const plus = blob.indexOf('+')
  return plus === -1 ? 'cert' : blob.slice(plus)
}

export async function startBlobCounter (azurite: { port: number, accountName: string }, container: string): Promise<BlobCounter> {
  const fresh = (): BlobCount => ({ total: 0, certificateReads: 0, byKind: new Map() })
  let count = fresh()
  const agent = new http.Agent({ keepAlive: true })
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://relay')
    const [, , blobContainer = '', ...blob] = url.pathname.split('/')
    const comp = url.searchParams.get('comp') ?? url.searchParams.get('restype') ?? ''
    const key = keyKind(decodeURIComponent(blob.join('/')))
    const kind = `${req.method ?? '?'}${comp === '' ? '' : ` ${comp}`} ${key}`
    count.total++
    count.byKind.set(kind, (count.byKind.get(kind) ?? 0) + 1)
    if (req.method === 'GET' && comp === '' && blobContainer === container && key === 'cert') count.certificateReads++
    const upstream = http.request({ host: '127.0.0.1', port: azurite.port, method: req.method, path: req.url, headers: req.headers, agent }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers)
      answer.pipe(res)
    })
    upstream.once('error', (err) => res.destroy(err))
    req.pipe(upstream)
  })
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}/${azurite.accountName}`
  return {
    endpoint,
    connectionString: (connectionString) => connectionString.replace(/BlobEndpoint=[^;]*/, `BlobEndpoint=${endpoint}`),
    take: () => {
      const c = count
      count = fresh()
      return c
    },
    close: async () => {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
      agent.destroy()
    }
  }
}

/** `12 operations (GET cert 3, PUT +ari 9)`. */
export function describeCount (c: BlobCount): string {
  if (c.total === 0) return '0 operations'
  return `${Math.round(c.total).toLocaleString('en-US')} operations (${[...c.byKind].sort(([a], [b]) => a.localeCompare(b)).map(([k, n]) => `${k} ${n.toLocaleString('en-US')}`).join(', ')})`
}
