// Long polling (ANYCABLE_POLL, AnyCable Pro's /lp) through Puma's port and the own port:
// @anycable/core's cable over a transport written to @anycable/long-polling's protocol
// (long_polling_client.mjs), the same channels, actions and broadcasts as a WebSocket
// session, identified by the login cookie (the app's connect). (As a fallback,
// @anycable/core's FallbackTransport picks it when the WebSocket fails: client-side
// only; under Node that failure surfaces as an unhandled rejection of the library's,
// so it is not run here.)
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createCable } from '@anycable/core'
import { startPuma, freePort, waitFor, broadcast, ORIGIN } from './support.mjs'
import { LongPollingClient } from './long_polling_client.mjs'

let server
let ownPort
let cookie
let cables = []

before(async () => {
  ownPort = await freePort()
  server = await startPuma({ ANYCABLE_POLL: 'true', ANYCABLE_PORT: String(ownPort) })
  let res = await server.http('/login?name=alice')
  cookie = res.headers.getSetCookie().map(c => c.split(';')[0]).join('; ')
})

after(async () => {
  for (let c of cables) c.disconnect()
  await server?.stop()
})

function transport(port) {
  return new LongPollingClient(`http://127.0.0.1:${port}/lp`, { headers: { Cookie: cookie, Origin: ORIGIN } })
}

function cable(opts) {
  let c = createCable({ protocol: 'actioncable-v1-json', logLevel: 'error', ...opts })
  cables.push(c)
  return c
}

for (let [where, port] of [["Puma's port", () => server.port], ['the own port', () => ownPort]]) {
  test(`a cable over long polling subscribes, performs and receives on ${where}`, async () => {
    let lp = transport(port())
    let c = cable({ transport: lp })
    let channel = c.subscribeTo('EchoChannel')
    let received = []
    channel.on('message', msg => received.push(msg))
    await channel.ensureSubscribed()
    await channel.perform('echo', { text: 'over long polling' })
    // The command leaves with the next poll (sends are gathered for 500 ms).
    await waitFor(() => received.length === 1, 10000)
    await broadcast(server, 'all', { text: 'broadcast' })
    await waitFor(() => received.length === 2, 10000)
    assert.deepEqual(received[0], { text: 'over long polling', action: 'echo' })
    assert.deepEqual(received[1], { text: 'broadcast' })
    // One session across its requests: every poll after the first names it.
    let ids = new Set(lp.requests.slice(1).map(r => r.id))
    assert.equal(ids.size, 1, JSON.stringify(lp.requests))
    assert.match([...ids][0], /^[0-9a-f]{32,}$/)
    assert.equal(lp.requests[0].id, undefined)
  })
}
