// The CLI facing a server that is not a friendly linkgate: an error body full of terminal control
// sequences (retitle, clear screen, colour) must reach the terminal as visible escapes, not act on it.
import { once } from 'node:events'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { runCli } from '../../src/cli/cli.ts'

t.test('control characters in an API error are escaped before printing', async (t) => {
  const server = createServer((_req, res) => {
    res.writeHead(400, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ error: { code: 'X\u001b[31mRED', message: '\u001b]0;pwned\u0007\u001b[2Jcleared\rover' } }))
  })
  server.listen(0, '127.79.0.9')
  await once(server, 'listening')
  t.teardown(() => { server.close() })
  const { port } = server.address() as AddressInfo
  let stderr = ''
  const code = await runCli(['get', 'endpoints', '--api', `http://127.79.0.9:${port}`, '--token', 'some-token-1'], {
    stdout: () => {},
    stderr: (text) => { stderr += text },
    readStdin: async () => '',
    env: {}
  })
  t.equal(code, 1)
  t.notMatch(stderr, /[\u0000-\u0009\u000b-\u001f\u007f]/, 'no control character but the final newline')
  t.equal(stderr, 'X\\u001b[31mRED: \\u001b]0;pwned\\u0007\\u001b[2Jcleared\\u000dover\n')
})
