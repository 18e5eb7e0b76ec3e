// The Dockerfile (issue 9), checked without a Docker engine: its stages, user, ports, health
// check and entry point; every COPY source exists and is not dropped by .dockerignore; the
// image's config/docker.yaml is valid and listens on every interface; and the HEALTHCHECK
// command, run for real, passes against a running linkgate and fails once it is gone.
import { spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import t from 'tap'
import { parseDocument } from 'yaml'
import { loadConfigFile } from '../src/config/load-config.ts'

const root = resolve(import.meta.dirname, '..')

interface Instruction {
  readonly keyword: string
  readonly args: string
  readonly line: number
}

interface Stage {
  readonly from: string
  readonly name: string | undefined
  readonly instructions: Instruction[]
}

/** Dockerfile syntax: comments, `\` continuations, one instruction per logical line. */
function parseDockerfile (text: string): Stage[] {
  const stages: Stage[] = []
  const lines = text.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const start = i + 1
    let logical = lines[i] ?? ''
    if (/^\s*(#|$)/.test(logical)) continue
    while (logical.trimEnd().endsWith('\\') && i + 1 < lines.length) {
      logical = logical.trimEnd().slice(0, -1) + ' ' + (lines[++i] ?? '').trim()
    }
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(logical)
    if (m === null) throw new Error(`Dockerfile line ${start}: cannot parse ${JSON.stringify(logical)}`)
    const keyword = (m[1] as string).toUpperCase()
    const args = (m[2] as string).trim()
    if (keyword === 'FROM') {
      const from = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(args)
      if (from === null) throw new Error(`Dockerfile line ${start}: bad FROM ${args}`)
      stages.push({ from: from[1] as string, name: from[2], instructions: [] })
      continue
    }
    const stage = stages.at(-1)
    if (stage === undefined) throw new Error(`Dockerfile line ${start}: ${keyword} before FROM`)
    stage.instructions.push({ keyword, args, line: start })
  }
  return stages
}

const dockerfile = readFileSync(join(root, 'Dockerfile'), 'utf8')
const stages = parseDockerfile(dockerfile)
const build = stages.find((s) => s.name === 'build')
const runtime = stages.at(-1)
const all = (stage: Stage | undefined, keyword: string): Instruction[] => stage?.instructions.filter((i) => i.keyword === keyword) ?? []
const one = (stage: Stage | undefined, keyword: string): Instruction | undefined => all(stage, keyword).at(-1)
const execForm = (ins: Instruction | undefined): unknown => (ins === undefined ? undefined : JSON.parse(ins.args))

t.test('two stages, build then runtime, both on the official Node 24 slim image', async (t) => {
  t.same(stages.map((s) => [s.from, s.name]), [['node:24-slim', 'build'], ['node:24-slim', 'runtime']])
})

t.test('the build stage installs every dependency from the lockfile and compiles', async (t) => {
  const runs = all(build, 'RUN').map((r) => r.args)
  t.ok(runs.some((r) => /^npm ci\b/.test(r) && !r.includes('--omit=dev')), runs.join(' | '))
  t.ok(runs.some((r) => r.includes('npm run build')), runs.join(' | '))
})

t.test('the runtime stage installs production dependencies only and takes dist/ from the build stage', async (t) => {
  const runs = all(runtime, 'RUN').map((r) => r.args)
  t.ok(runs.some((r) => /\bnpm ci\b.*--omit=dev/.test(r)), runs.join(' | '))
  t.ok(all(runtime, 'COPY').some((c) => /^--from=build \/app\/dist \.\/dist$/.test(c.args)))
})

t.test('the runtime stage runs as the image\'s unprivileged node user', async (t) => {
  t.equal(one(runtime, 'USER')?.args, 'node')
  const user = one(runtime, 'USER')?.line ?? 0
  t.ok(one(runtime, 'ENTRYPOINT') !== undefined && (one(runtime, 'ENTRYPOINT')?.line ?? 0) > user, 'USER comes before ENTRYPOINT')
})

t.test('EXPOSE names the API port on TCP and the DNS port on UDP and TCP', async (t) => {
  const ports = all(runtime, 'EXPOSE').flatMap((e) => e.args.split(/\s+/))
  t.same(ports.sort(), ['5353/tcp', '5353/udp', '8480/tcp'])
})

t.test('ENTRYPOINT and CMD start linkgate with the image\'s config file', async (t) => {
  t.same(execForm(one(runtime, 'ENTRYPOINT')), ['node', '--max-semi-space-size=8', 'dist/main.js'])
  t.same(execForm(one(runtime, 'CMD')), ['start', '--config', '/etc/linkgate/config.yaml'])
})

t.test('the HEALTHCHECK asks /healthz with node, since the slim image has no curl', async (t) => {
  const hc = one(runtime, 'HEALTHCHECK')
  t.ok(hc, 'a HEALTHCHECK')
  const cmd = /CMD\s+(\[.*\])$/.exec(hc?.args ?? '')
  t.ok(cmd, 'exec form')
  const argv = JSON.parse(cmd?.[1] ?? '[]') as string[]
  t.equal(argv[0], 'node')
  t.match(argv.join(' '), 'http://127.0.0.1:8480/healthz')
})

t.test('every COPY source from the build context exists and survives .dockerignore', async (t) => {
  const ignored = readFileSync(join(root, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l !== '' && !l.startsWith('#'))
  const sources: string[] = []
  for (const stage of stages) {
    for (const copy of all(stage, 'COPY')) {
      if (copy.args.startsWith('--from=')) continue
      const parts = copy.args.split(/\s+/).filter((p) => !p.startsWith('--'))
      sources.push(...parts.slice(0, -1))
    }
  }
  t.ok(sources.length >= 4, `sources: ${sources.join(', ')}`)
  for (const source of sources) {
    t.ok(existsSync(join(root, source)), `${source} exists`)
    const dropped = ignored.find((pattern) => !pattern.includes('*') && (source === pattern || source.startsWith(pattern + '/')))
    t.equal(dropped, undefined, `${source} is not excluded by .dockerignore`)
  }
})

t.test('the VOLUME is the state directory of the image\'s config', async (t) => {
  const config = await loadConfigFile(join(root, 'config/docker.yaml'))
  t.same(execForm(one(runtime, 'VOLUME')), [config.stateDir])
})

t.test('config/docker.yaml is valid and listens on every interface of the container', async (t) => {
  const config = await loadConfigFile(join(root, 'config/docker.yaml'))
  t.equal(config.listen.api, '0.0.0.0:8480')
  t.equal(config.listen.dns, '0.0.0.0:5353')
})

// The real HEALTHCHECK command against a real linkgate (the built CLI), on a loopback address of
// this test's own instead of the container's 0.0.0.0:8480.
const mainJs = join(root, 'dist/main.js')
const skipHealth = existsSync(mainJs) || process.env.CI === 'true' ? false : `${mainJs} is not built (npm run build)`

function runHealthcheck (url: string): Promise<number | null> {
  const argv = JSON.parse(/CMD\s+(\[.*\])$/.exec(one(runtime, 'HEALTHCHECK')?.args ?? '')?.[1] ?? '[]') as string[]
  const args = argv.slice(1).map((a) => a.replace('http://127.0.0.1:8480/healthz', url))
  return new Promise((resolve) => {
    const child = spawn(process.execPath, args, { stdio: 'ignore' })
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    child.on('exit', (code) => {
      clearTimeout(timer)
      resolve(code)
    })
  })
}

t.test('the HEALTHCHECK command passes against a running linkgate and fails when it is gone', { skip: skipHealth }, async (t) => {
  t.ok(existsSync(mainJs), `${mainJs} exists`)
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-docker-test-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const doc = parseDocument(readFileSync(join(root, 'config/docker.yaml'), 'utf8'))
  doc.setIn(['listen', 'api'], '127.59.0.1:0')
  doc.setIn(['listen', 'dns'], '127.59.0.1:0')
  doc.setIn(['stateDir'], join(dir, 'state'))
  doc.setIn(['demo'], false)
  doc.setIn(['log', 'access'], 'off')
  doc.setIn(['log', 'level'], 'warn')
  const file = join(dir, 'config.yaml')
  await writeFile(file, doc.toString())

  const child = spawn(process.execPath, [mainJs, 'start', '--config', file], { stdio: ['ignore', 'pipe', 'pipe'] })
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()))
  t.teardown(async () => {
    child.kill('SIGKILL')
    await exited
  })
  let output = ''
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no API address printed in 20 s: ${output}`)), 20_000)
    const onData = (chunk: Buffer): void => {
      output += chunk.toString()
      const m = /(http:\/\/127\.59\.0\.1:\d+)\/metrics/.exec(output)
      if (m !== null) {
        clearTimeout(timer)
        resolve(`${m[1]}/healthz`)
      }
    }
    child.stdout.on('data', onData)
    child.stderr.on('data', onData)
    child.on('exit', (code) => reject(new Error(`linkgate exited (${code}): ${output}`)))
  })
  t.equal(await runHealthcheck(url), 0, `healthy at ${url}`)
  child.kill('SIGTERM')
  await exited
  t.equal(await runHealthcheck(url), 1, 'unhealthy once linkgate is gone')
})
