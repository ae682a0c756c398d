// The Durable Streams conformance tests (@durable-streams/server-conformance-tests),
// run by vitest against the server at CONFORMANCE_TEST_URL; started, and the cases
// that apply to a read-only server chosen, by ds_conformance.test.mjs.
import { runConformanceTests } from '@durable-streams/server-conformance-tests'

runConformanceTests({
  baseUrl: process.env.CONFORMANCE_TEST_URL,
  longPollTimeoutMs: Number(process.env.CONFORMANCE_LONG_POLL_MS || 20000)
})
