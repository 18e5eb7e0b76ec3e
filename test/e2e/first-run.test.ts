// What a newcomer does: a clean copy of the repo, `npm ci && npm start`, then the lines the
// banner prints (curl, telnet, dig), then the README's walkthrough code blocks run literally
// against that gateway, then SIGTERM → exit 0. Uses the default config's fixed ports
// (8480, 5353, the demo's 127.10.1.2 and 127.20.0.x), so no other test may use them.
import { execFile, spawn } from 'node:child_process'
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import t from 'tap'
import { ROOT } from '../helpers/gateway-process.ts'
import { requireTools } from '../helpers/tools.ts'

const run = promisify(execFile)

async function cleanCopy (): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'linkgate-first-run-'))
  const { stdout } = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: ROOT, maxBuffer: 16 << 20 })
  for (const file of stdout.split('\0').filter(Boolean)) {
    await mkdir(dirname(join(dir, file)), { recursive: true })
    await copyFile(join(ROOT, file), join(dir, file)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err // deleted in the work tree but not yet in git
    })
  }
  return dir
}

/** The ```bash blocks of a README section (by default the curl walkthrough, the first one). */
export function walkthroughBlocks (readme: string, heading = '## Walkthrough'): string[] {
  const start = readme.indexOf(heading)
  const end = readme.indexOf('\n## ', start + 1)
  const section = readme.slice(start, end < 0 ? undefined : end)
  return [...section.matchAll(/```bash\n([\s\S]*?)```/g)].map((m) => m[1] as string)
}

function telnetLike (host: string, port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port })
    let got = ''
    const timer = setTimeout(() => { socket.destroy(); reject(new Error(`no answer from ${host}:${port}: ${JSON.stringify(got)}`)) }, 5000)
    socket.on('connect', () => socket.write(line))
    socket.on('data', (d) => {
      got += d.toString()
      if (got.includes('\n')) { clearTimeout(timer); socket.end(); resolve(got) }
    })
    socket.on('error', (err) => { clearTimeout(timer); reject(err) })
  })
}

t.test('a newcomer runs npm ci && npm start, the printed lines and the README walkthrough', async (t) => {
  if (!requireTools(t, ['curl', 'dig', 'jq', 'git'])) return
  const dir = await cleanCopy()
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], { cwd: dir, maxBuffer: 64 << 20, timeout: 240_000 })

  // Its own process group, so teardown can end npm, sh and the gateway together.
  const proc = spawn('npm', ['start'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  t.teardown(() => { try { process.kill(-(proc.pid as number), 'SIGKILL') } catch {} })
  const exited = new Promise<number | null>((resolve) => proc.on('exit', (code) => resolve(code)))
  let out = ''
  proc.stdout.on('data', (d: Buffer) => { out += d.toString() })
  proc.stderr.on('data', (d: Buffer) => { out += d.toString() })
  const banner = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no banner within 90 s:\n${out}`)), 90_000)
    const check = (): void => {
      const i = out.indexOf('Try the demo endpoint:')
      const j = i < 0 ? -1 : out.indexOf('/metrics', i)
      if (j > 0) { clearTimeout(timer); resolve(out.slice(i, out.indexOf('\n', j))) }
    }
    proc.stdout.on('data', check)
    void exited.then((code) => { clearTimeout(timer); reject(new Error(`npm start exited ${code}:\n${out}`)) })
  })

  const curlLine = /^\s*(curl http:\/\/\S+:8080\/)$/m.exec(banner)?.[1]
  const telnetLine = /^\s*telnet (\S+) (\d+)$/m.exec(banner)
  const digLine = /^\s*(dig @\S+ -p \d+ \S+)$/m.exec(banner)?.[1]
  t.ok(curlLine, 'the banner prints a curl line')
  t.ok(telnetLine, 'the banner prints a telnet line')
  t.ok(digLine, 'the banner prints a dig line')

  const curl = await run('bash', ['-c', `${curlLine as string} -s --max-time 5`])
  t.match(curl.stdout, /^backend be-00000a0[12] zone zone-a /, 'curl reaches a same-zone demo backend')

  const echoed = await telnetLike(telnetLine?.[1] as string, Number(telnetLine?.[2]), 'hello linkgate\n')
  t.equal(echoed, 'hello linkgate\n', 'the telnet line reaches the echo backend')

  const dig = await run('bash', ['-c', `${digLine as string} +short +time=2 +tries=1`])
  t.equal(dig.stdout.trim(), telnetLine?.[1], 'dig answers the endpoint IP')

  const blocks = walkthroughBlocks(await readFile(join(dir, 'README.md'), 'utf8'))
  t.ok(blocks.length > 0, 'the README has walkthrough blocks')
  const walk = await run('bash', ['-c', 'set -euo pipefail\n' + blocks.join('\n')], { cwd: dir, timeout: 60_000 })
  t.match(walk.stdout, /^service vpcesvc-[0-9a-f]{12}$/m)
  t.match(walk.stdout, /^pendingAcceptance$/m)
  t.match(walk.stdout, /^accepted$/m)
  t.match(walk.stdout, /^127\.10\.2\.\d+$/m, 'dig answers the new endpoint IP')
  t.match(walk.stdout, /^hello$/m, 'the echo comes back through the new endpoint')
  t.match(walk.stdout, /^204\n204$/m, 'both deletes answer 204')

  // The same walkthrough with the CLI (SPEC §14), as literally: `npx linkgate ...`.
  const cliBlocks = walkthroughBlocks(await readFile(join(dir, 'README.md'), 'utf8'), '## Walkthrough with the CLI')
  t.ok(cliBlocks.length > 0, 'the README has CLI walkthrough blocks')
  const cli = await run('bash', ['-c', 'set -euo pipefail\n' + cliBlocks.join('\n')], { cwd: dir, timeout: 120_000 })
  t.match(cli.stdout, /^service vpcesvc-[0-9a-f]{12}$/m, 'create service -o id prints the id')
  t.match(cli.stdout, /^ACCOUNT\n100000000002$/m, 'allow prints the allowed accounts')
  t.match(cli.stdout, /^vpce-[0-9a-f]{12} +vpcesvc-[0-9a-f]{12} +pendingAcceptance +127\.10\.2\.\d+ +zone-b/m, 'the new endpoint waits for acceptance')
  t.match(cli.stdout, /^vpcesvc-[0-9a-f]{12} +vpce-[0-9a-f]{12} +100000000002 +accepted /m, 'accept answers accepted')
  t.match(cli.stdout, /^127\.10\.2\.\d+$/m, 'dig answers the new endpoint IP')
  t.match(cli.stdout, /^hello$/m, 'the echo comes back through the new endpoint')
  t.match(cli.stdout, /^be-[0-9a-f]{8} +127\.20\.0\.3 +zone-b +0 /m, 'set-weight drains the added backend')
  t.match(cli.stdout, /^backend be-[0-9a-f]{8} removed from vpcesvc-/m)
  t.match(cli.stdout, /^endpoint vpce-[0-9a-f]{12} deleted\nservice vpcesvc-[0-9a-f]{12} deleted$/m, 'both deletes succeed')
  t.equal(cli.stderr.replace(/^npm (warn|notice).*\n/gm, ''), '', 'nothing on stderr')

  // SIGTERM to the gateway itself (npm does not forward signals to its script): it drains,
  // exits 0, and so `npm start` ends with 0 too.
  const pid = Number(/"pid":(\d+),[^\n]*"msg":"linkgate started"/.exec(out)?.[1])
  t.ok(pid > 0, `the gateway logs its pid (${pid})`)
  process.kill(pid, 'SIGTERM')
  t.equal(await exited, 0, 'SIGTERM: the gateway exits 0, and npm start with it')
})
