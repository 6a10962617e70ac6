import { execFile } from 'node:child_process'
import { cp, mkdir, mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'

// The package as a user gets it: built from lib/ into a staging copy of the
// project, packed by `npm pack` (so `files` and `exports` apply), unpacked into
// the node_modules of a temporary app whose other packages are links to this
// project's. The fixtures of test/packaging/ then compile against it as ESM,
// CommonJS and with bundler resolution, and two scripts load it with require()
// and import. Nothing is fetched: it runs offline, and never reads dist/.
const run = promisify(execFile)
const root = path.resolve(__dirname, '..')
const tsc = path.join(root, 'node_modules', 'typescript', 'bin', 'tsc')

// Every name on the package, at runtime and in the types.
const NAMES = [
  'ALPNCallback', 'AzureBlobStore', 'CHALLENGE_PATH', 'EncryptedStore', 'FileStore', 'MemoryStore', 'SNICallback',
  'createAutocert', 'default', 'errors', 'fastifyAutocert', 'rfc2136'
].sort()

interface PackResult { filename: string, files: Array<{ path: string }> }
interface RuntimeReport {
  type: string
  skipOverride: boolean
  displayName: string
  defaultIsPlugin: boolean
  namedIsPlugin: boolean
  decorated: boolean
  names: string[]
  destructured?: boolean
  namedAreProperties?: boolean
}

// Child processes run without tap's loader and coverage: they load only the temporary package.
const env: NodeJS.ProcessEnv = { ...process.env, _TAPJS_PROCESSINFO_COVERAGE_: '0' }
delete env.NODE_OPTIONS
delete env.NODE_V8_COVERAGE

async function node (cwd: string, ...args: string[]): Promise<string> {
  try {
    const { stdout } = await run(process.execPath, args, { cwd, env, maxBuffer: 16 << 20 })
    return stdout
  } catch (err) {
    const { stdout, stderr } = err as { stdout?: string, stderr?: string }
    throw new Error(`node ${args.join(' ')} failed in ${cwd}:\n${stdout ?? ''}${stderr ?? ''}`, { cause: err })
  }
}

t.test('the packed package', async (t) => {
  const tmp = await mkdtemp(path.join(tmpdir(), 'fastify-autocert-packaging-'))
  t.teardown(async () => { await rm(tmp, { recursive: true, force: true }) })

  const stage = path.join(tmp, 'stage')
  await mkdir(stage)
  for (const file of ['package.json', 'README.md', 'LICENSE']) await cp(path.join(root, file), path.join(stage, file))
  await node(root, tsc, '-p', path.join(root, 'tsconfig.json'), '--outDir', path.join(stage, 'dist'))
  const packed = await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], { cwd: stage, env })
  const [pack] = JSON.parse(packed.stdout) as PackResult[]
  const files = new Set(pack.files.map((file) => file.path))

  const modules = path.join(tmp, 'node_modules')
  const installed = path.join(modules, 'fastify-autocert')
  await mkdir(installed, { recursive: true })
  await run('tar', ['-xzf', path.join(tmp, pack.filename), '-C', installed, '--strip-components=1'])
  for (const entry of await readdir(path.join(root, 'node_modules'))) {
    if (entry.startsWith('.') || entry === 'fastify-autocert') continue
    await symlink(path.join(root, 'node_modules', entry), path.join(modules, entry))
  }
  const app = path.join(tmp, 'app')
  await cp(path.join(root, 'test', 'packaging'), app, { recursive: true })

  t.test('ships the built entry, its types and package.json, and no sources or tests', async (t) => {
    for (const file of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.d.ts', 'dist/plugin.js', 'dist/plugin.d.ts']) {
      t.ok(files.has(file), `ships ${file}`)
    }
    t.same([...files].filter((file) => !/^(dist\/|package\.json$|README\.md$|LICENSE$)/.test(file)), [], 'nothing outside dist/ but the docs')
    t.same([...files].filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts')), [], 'no TypeScript sources')
  })

  t.test('the bin: `npx fastify-autocert` runs the packed command line', async (t) => {
    const manifest = JSON.parse(await readFile(path.join(installed, 'package.json'), 'utf8')) as { version: string, bin: Record<string, string> }
    const bin = manifest.bin['fastify-autocert']
    t.equal(bin, 'dist/cli/main.js', 'package.json names it')
    t.ok(files.has(bin), 'and ships it')
    t.match(await readFile(path.join(installed, bin), 'utf8'), /^#!\/usr\/bin\/env node\n/, 'with its shebang, for the link npm makes in node_modules/.bin')
    t.equal(await node(app, path.join(installed, bin), '--version'), `${manifest.version}\n`, 'it runs, and says its version')
  })

  t.test('every source map resolves its sources: inline, or to a shipped file', async (t) => {
    const maps = [...files].filter((file) => file.endsWith('.map'))
    t.ok(maps.includes('dist/index.js.map'), 'the entry has a map')
    for (const map of maps) {
      const { sources, sourcesContent, sourceRoot = '' } = JSON.parse(await readFile(path.join(installed, map), 'utf8')) as
        { sources: string[], sourcesContent?: Array<string | null>, sourceRoot?: string }
      t.ok(sources.length > 0, `${map} names its sources`)
      const unresolved = sources.filter((source, i) =>
        typeof sourcesContent?.[i] !== 'string' && !files.has(path.posix.join(path.posix.dirname(map), sourceRoot, source)))
      t.same(unresolved, [], `${map}: every source inline or shipped`)
    }
  })

  t.test('the types compile as ESM (nodenext), CommonJS (nodenext) and with bundler resolution', async (t) => {
    const projects = ['esm', 'cjs', 'bundler']
    for (const project of projects) await cp(path.join(app, 'usage.ts'), path.join(app, project, 'usage.ts'))
    const results = await Promise.allSettled(projects.map(async (project) => await node(app, tsc, '-p', project)))
    results.forEach((result, i) => {
      t.equal(result.status === 'rejected' ? String(result.reason) : 'compiles', 'compiles', `${projects[i]}: tsc -p ${projects[i]}`)
    })
  })

  t.test('at runtime, require() and import give the plugin, with every name on it', async (t) => {
    const reports = {
      cjs: JSON.parse(await node(app, 'runtime.cjs')) as RuntimeReport,
      esm: JSON.parse(await node(app, 'runtime.mjs')) as RuntimeReport
    }
    for (const [kind, report] of Object.entries(reports)) {
      t.equal(report.type, 'function', `${kind}: the default is a function`)
      t.ok(report.skipOverride, `${kind}: wrapped by fastify-plugin (skip-override)`)
      t.equal(report.displayName, 'fastify-autocert', `${kind}: its name for Fastify`)
      t.ok(report.defaultIsPlugin, `${kind}: .default is the plugin`)
      t.ok(report.namedIsPlugin, `${kind}: .fastifyAutocert is the plugin`)
      t.ok(report.decorated, `${kind}: registered at the root, it decorates the root`)
      t.same(report.names, NAMES, `${kind}: the named exports`)
    }
    t.ok(reports.cjs.destructured, 'cjs: destructured names are the properties')
    t.ok(reports.esm.namedAreProperties, 'esm: named imports are the properties')
  })
})
