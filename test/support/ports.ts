import net from 'node:net'

// Ports this process has handed out: the kernel may offer a just-closed port
// again, and two services of one test must never be given the same one.
const given = new Set<number>()

// Ask the kernel for a free port. Racy by nature (someone may grab it before we
// bind again), but every test starts its own services, so collisions are rare and
// far better than the fixed defaults (14000, 10000, ...) other processes may hold.
export async function freePort (): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const srv = net.createServer()
      srv.unref()
      srv.once('error', reject)
      srv.listen(0, '127.0.0.1', () => {
        const { port } = srv.address() as net.AddressInfo
        srv.close(() => resolve(port))
      })
    })
    if (!given.has(port)) {
      given.add(port)
      return port
    }
  }
}
