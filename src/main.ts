#!/usr/bin/env -S node --max-semi-space-size=8
// The CLI (SPEC §1) and signal handling only. `linkgate start [--config FILE] [--state-dir DIR]`,
// `linkgate check-config FILE`. First SIGINT/SIGTERM: graceful close (stop accepting, drain up to
// limits.shutdownGraceSeconds, exit 0); a second one ends everything at once (exit 1).
import { parseArgs } from 'node:util'
import { buildApp, type AppAddresses } from './app.ts'
import { CLI_USAGE, CLI_VERBS, processIo, runCli } from './cli/cli.ts'
import { buildConfig, loadConfigFile } from './config/load-config.ts'
import type { Config } from './control/schemas.ts'
import { DEMO_ENDPOINT_ID } from './demo/demo-backends.ts'
import { isLinkgateError } from './errors.ts'

const USAGE = `usage:
  linkgate start [--config FILE] [--state-dir DIR]
  linkgate check-config FILE`

function fail (message: string, code = 2): never {
  process.stderr.write(`linkgate: ${message}\n`)
  process.exit(code)
}

async function readConfig (file: string | undefined, stateDir: string | undefined): Promise<Config> {
  const config = file === undefined ? buildConfig() : await loadConfigFile(file)
  return stateDir === undefined ? config : Object.freeze({ ...config, stateDir })
}

function hostForUrl (host: string): string {
  return host.includes(':') ? `[${host}]` : host
}

function banner (config: Config, addresses: AppAddresses, endpointIp: string | undefined, dnsName: string | undefined): string {
  const api = `http://${hostForUrl(addresses.api.address)}:${addresses.api.port}`
  const lines = [
    '',
    'linkgate is running.',
    `  control API   ${api}/v1   (Authorization: Bearer <token>)`
  ]
  for (const a of config.accounts) lines.push(`                account ${a.id} (${a.name}): token ${a.token}`)
  lines.push(`  metrics       ${api}/metrics`)
  lines.push(`  DNS           ${addresses.dns.udp.address} port ${addresses.dns.udp.port} (UDP and TCP)`)
  if (endpointIp !== undefined) {
    lines.push('', 'Try the demo endpoint:')
    lines.push(`  curl http://${hostForUrl(endpointIp)}:8080/`)
    lines.push(`  telnet ${endpointIp} 7007`)
    if (dnsName !== undefined) lines.push(`  dig @${addresses.dns.udp.address} -p ${addresses.dns.udp.port} ${dnsName}`)
    lines.push(`  curl ${api}/metrics`)
  }
  return lines.join('\n') + '\n\n'
}

async function start (values: { config?: string, 'state-dir'?: string }): Promise<void> {
  const config = await readConfig(values.config, values['state-dir'])
  const app = buildApp(config, { configFile: values.config, workers: true })
  let signals = 0
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++
    if (signals > 1) {
      app.logger.warn({ signal }, 'second signal: ending every connection now')
      app.destroy()
      process.exit(1)
    }
    app.logger.info({ signal, graceSeconds: config.limits.shutdownGraceSeconds }, 'shutting down: no new connections, draining live ones')
    app.close().then(() => {
      app.logger.info('linkgate stopped')
      process.exit(0)
    }, (err: unknown) => {
      app.logger.error({ err }, 'shutdown failed')
      process.exit(1)
    })
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)

  let addresses: AppAddresses
  try {
    addresses = await app.start()
  } catch (err) {
    app.destroy()
    throw err
  }
  const demo = config.demo ? app.store.state.endpoints[DEMO_ENDPOINT_ID] : undefined
  process.stdout.write(banner(config, addresses, demo?.status === 'accepted' ? demo.ip : undefined, demo?.dnsNames[0]))
}

async function checkConfig (file: string | undefined): Promise<void> {
  if (file === undefined) fail(`check-config needs a FILE\n${USAGE}`)
  await loadConfigFile(file)
  process.stdout.write(`${file}: ok\n`)
}

async function main (argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  if (command === 'start') {
    const { values } = parseArgs({
      args: rest,
      options: { config: { type: 'string', short: 'c' }, 'state-dir': { type: 'string' } },
      strict: true
    })
    await start(values)
  } else if (command === 'check-config') {
    const { positionals } = parseArgs({ args: rest, allowPositionals: true, strict: true })
    await checkConfig(positionals[0])
  } else if (command !== undefined && CLI_VERBS.has(command)) {
    // The control API client (SPEC §14), src/cli/. exitCode, not exit(): piped output drains first.
    process.exitCode = await runCli(argv, processIo)
  } else if (command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${USAGE}\n${CLI_USAGE}\n`)
  } else {
    fail(`unknown command ${JSON.stringify(command ?? '')}\n${USAGE}`)
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (isLinkgateError(err)) fail(err.message, 1)
  if (err instanceof TypeError && (err as NodeJS.ErrnoException).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') fail(`${err.message}\n${USAGE}`)
  // Start-up failures (a port in use, an unreadable state dir) are the user's to fix: say what,
  // not where in our code; LINKGATE_DEBUG=1 adds the stack.
  const debug = process.env.LINKGATE_DEBUG !== undefined && process.env.LINKGATE_DEBUG !== ''
  fail(err instanceof Error ? (debug ? (err.stack ?? err.message) : err.message) : String(err), 1)
})
