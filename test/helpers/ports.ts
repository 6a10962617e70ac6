import net from 'node:net'

// Ask the kernel for a free port. Racy by nature (someone may grab it before we
// bind again), but every test starts its own services, so collisions are rare and
// far better than the fixed defaults (14000, 10000, ...) other processes may hold.
export function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo
      srv.close(() => resolve(port))
    })
  })
}
