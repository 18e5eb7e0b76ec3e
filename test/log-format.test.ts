// `log.format` (SPEC §14): json lines into a pipe, one readable line per event for a person;
// `auto` chooses by whether stdout is a terminal (a real pseudo-terminal from util-linux's
// `script` here). The start-up banner is the same in every format.
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import t from 'tap'
import { MAIN, startGateway, writeConfig } from './helpers/gateway-process.ts'
import { requireTools } from './helpers/tools.ts'

const PRETTY_LINE = /^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO \(\d+\): linkgate started \{"api":/m

async function configFile (t: { teardown (fn: () => unknown): void }, format?: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-log-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return writeConfig(dir, {
    listen: { api: '127.75.3.1:0', dns: '127.75.3.1:0' },
    stateDir: join(dir, 'state'),
    subnets: [{ id: 'subnet-a', cidr: '127.75.4.0/24', zone: 'zone-a' }],
    log: format === undefined ? { level: 'info' } : { level: 'info', format }
  })
}

async function stopped (gw: Awaited<ReturnType<typeof startGateway>>): Promise<string> {
  gw.proc.kill('SIGTERM')
  await gw.exited
  return gw.output()
}

t.test('auto (the default) into a pipe: one JSON object a line, and the banner', async (t) => {
  const gw = await startGateway(t, await configFile(t))
  const out = await stopped(gw)
  const logLines = out.split('\n').filter((l) => l.startsWith('{'))
  t.ok(logLines.length >= 2, 'log lines are there')
  for (const line of logLines) t.type(JSON.parse(line).msg, 'string')
  t.ok(logLines.some((l) => JSON.parse(l).msg === 'linkgate started'))
  t.match(out, /\nlinkgate is running\.\n {2}control API {3}http:\/\/127\.75\.3\.1:\d+\/v1/, 'the banner as before')
})

t.test('pretty: readable lines, even into a pipe, and no colour codes there', async (t) => {
  const gw = await startGateway(t, await configFile(t, 'pretty'))
  const out = await stopped(gw)
  t.match(out, PRETTY_LINE)
  t.match(out, /\] INFO \(\d+\): linkgate stopped/m, 'the shutdown is logged the same way')
  t.notMatch(out, /^\{/m, 'no JSON line')
  t.notMatch(out, /\x1b\[/, 'no escape codes into a pipe')
  t.match(out, /\nlinkgate is running\.\n/)
})

t.test('json: JSON lines even where pretty would be chosen', async (t) => {
  const gw = await startGateway(t, await configFile(t, 'json'))
  const out = await stopped(gw)
  t.ok(out.split('\n').some((l) => l.startsWith('{') && JSON.parse(l).msg === 'linkgate started'))
  t.notMatch(out, PRETTY_LINE)
})

t.test('auto on a terminal: readable lines in colour', async (t) => {
  if (!requireTools(t, ['script'])) return
  const file = await configFile(t)
  // `script` gives the gateway a real pseudo-terminal as stdout and copies it to ours.
  const proc = spawn('script', ['-qec', `'${process.execPath}' '${MAIN}' start --config '${file}'`, '/dev/null'], {
    stdio: ['pipe', 'pipe', 'pipe'], detached: true
  })
  t.teardown(() => { try { process.kill(-(proc.pid as number), 'SIGKILL') } catch {} })
  let out = ''
  proc.stdout.on('data', (d: Buffer) => { out += d.toString() })
  const deadline = Date.now() + 20_000
  while (!out.includes('linkgate is running.') && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 100))
  const plain = out.replace(/\x1b\[[0-9;]*m/g, '').replace(/\r/g, '')
  t.match(plain, PRETTY_LINE, 'a terminal gets readable lines')
  t.match(out, /\x1b\[32mINFO/, 'with the level in colour')
  t.match(plain, /\nlinkgate is running\.\n/, 'and the banner')
  process.kill(-(proc.pid as number), 'SIGTERM')
  await new Promise((resolve) => proc.on('exit', resolve))
})
