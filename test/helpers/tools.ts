// External tools some tests need (dig, promtool, curl, jq...). scripts/install-test-tools.sh
// installs them before `npm test`. Missing on a user's machine: the test skips and says which
// tool is missing. Under CI=true a missing tool is a failure, never a skip.
import { execFileSync } from 'node:child_process'

interface Skippable {
  pass: (message: string, extra: { skip: string }) => unknown
  fail: (message: string) => unknown
}

export function hasTool (name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' })
    return true
  } catch {
    return false
  }
}

/** True when every tool is present; otherwise skips (or, under CI, fails) the test and returns false. */
export function requireTools (t: Skippable, tools: readonly string[]): boolean {
  const missing = tools.filter((tool) => !/^[a-z0-9._-]+$/i.test(tool) || !hasTool(tool))
  if (missing.length === 0) return true
  const message = `missing tool(s): ${missing.join(', ')} (scripts/install-test-tools.sh installs them)`
  if (process.env.CI === 'true') t.fail(message)
  else t.pass('needs external tools', { skip: message })
  return false
}
