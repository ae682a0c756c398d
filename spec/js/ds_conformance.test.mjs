// The read side of @durable-streams/server-conformance-tests against real Puma with
// ANYCABLE_DS: the cases below (each must pass), run by vitest (ds_conformance.vitest.mjs).
// The suite creates and appends to its streams with PUT/POST; the dummy app takes those
// (TestController#ds_write: each JSON item broadcast to the public stream), as an app's
// jobs would. What is not run, and why, is in the README ("Durable Streams reads").
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { startPuma } from './support.mjs'

const here = dirname(fileURLToPath(import.meta.url))

// The read-side cases on JSON streams (the only kind an Action Cable broadcast makes).
const CASES = [
  'should include X-Content-Type-Options: nosniff on GET responses',
  'should include X-Content-Type-Options: nosniff on HEAD responses',
  'should include Cache-Control: no-store on HEAD responses',
  'should include X-Content-Type-Options: nosniff on SSE responses',
  'should include X-Content-Type-Options: nosniff on long-poll responses',
  'should return stream content-type on GET',
  'should return correct tail offset for offset=now',
  'should return empty JSON array for offset=now on JSON streams',
  'should support offset=now with long-poll mode (waits for data)',
  'should support offset=now with SSE mode',
  'should support offset=now with SSE on empty stream',
  'should reject malformed offset (contains comma)',
  'should reject offset with spaces',
  'should reject empty offset parameter',
  'should reject multiple offset parameters',
  'should require offset parameter for long-poll',
  'should return Stream-Cursor, Stream-Up-To-Date and Stream-Next-Offset on 204 timeout',
  'should generate ETag on GET responses',
  'should return 304 Not Modified for matching If-None-Match',
  'should return text/event-stream content-type for SSE requests',
  'should accept live=sse query parameter for application/json',
  'should require offset parameter for SSE mode',
  'JSON SSE catch-up pairs every data event with a control event',
  'should send control events with offset',
  'should generate streamCursor in SSE control events',
  'should handle cursor collision with jitter in SSE mode',
  'should wrap JSON data in arrays for SSE and produce valid JSON',
  'should handle SSE for empty stream with correct offset',
  'should send upToDate flag in SSE control events when caught up',
  'should prevent CRLF injection - carriage return only attack vectors',
  'should handle JSON payloads with embedded newlines safely',
  'should generate unique, monotonically increasing offsets in SSE mode',
  'should NOT include Stream-SSE-Data-Encoding header for application/json streams',
  'should allow PUT with empty array body (creates empty stream)',
  'should handle content-type with charset parameter',
  'should wrap single JSON value in array',
  'should store arrays as single messages',
  'should concatenate multiple appends into single array',
  'should handle mixed single values and arrays',
  'should handle various JSON value types',
  'should preserve JSON structure and nesting',
  'should work with client json() iterator',
  'should store nested arrays as single messages',
  'should store arrays as values when double-wrapped',
  'should store primitive arrays as single messages',
  'should handle mixed batching - single values, arrays, and nested arrays',
  'should reject offsets with invalid characters'
]

let server
let dir

before(async () => {
  server = await startPuma({
    ANYCABLE_DS: 'true',
    ANYCABLE_DS_SKIP_AUTH: 'true',
    ANYCABLE_PUBLIC_STREAMS: 'true',
    ANYCABLE_BROKER: 'memory',
    ANYCABLE_HISTORY_LIMIT: '1000',
    ANYCABLE_DS_POLL_INTERVAL: '3'
  })
  dir = mkdtempSync(join(tmpdir(), 'anycable-rs-ds-conformance-'))
})

after(async () => {
  await server?.stop()
  if (dir) rmSync(dir, { recursive: true, force: true })
})

test('the read side of the Durable Streams conformance tests passes', { timeout: 300000 }, async () => {
  let escape = s => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  let pattern = `(${CASES.map(escape).join('|')})$`
  let output = join(dir, 'results.json')
  let child = spawn(
    join(here, 'node_modules', '.bin', 'vitest'),
    ['run', '--no-coverage', '--reporter=json', `--outputFile=${output}`, '-t', pattern],
    {
      cwd: here,
      env: {
        ...process.env,
        CONFORMANCE_TEST_URL: `http://127.0.0.1:${server.port}/ds`,
        CONFORMANCE_LONG_POLL_MS: '3000'
      },
      stdio: ['ignore', 'pipe', 'pipe']
    }
  )
  let log = ''
  child.stdout.on('data', d => (log += d))
  child.stderr.on('data', d => (log += d))
  await new Promise(resolve => child.on('exit', resolve))
  let results = JSON.parse(readFileSync(output, 'utf8')).testResults.flatMap(f => f.assertionResults)
  let ran = results.filter(r => r.status !== 'skipped' && r.status !== 'pending')
  let failed = ran.filter(r => r.status !== 'passed')
  assert.deepEqual(
    failed.map(r => `${r.title}: ${(r.failureMessages || [''])[0].split('\n')[0]}`),
    [],
    log.slice(-3000)
  )
  assert.deepEqual(ran.map(r => r.title).sort(), [...CASES].sort(), 'every chosen case ran')
})
