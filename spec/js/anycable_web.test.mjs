// The official @anycable/web client against anycable-rs embedded in Puma.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createCable } from '@anycable/web'
import { startPuma, BrowserLikeWebSocket, waitFor, broadcast } from './support.mjs'

let server
let cables = []

before(async () => {
  server = await startPuma()
  await server.http('/login?name=alice')
})

after(async () => {
  cables.forEach(c => c.disconnect())
  await server?.stop()
})

function cable(query = 'user=alice') {
  let c = createCable(`${server.url}?${query}`, {
    websocketImplementation: BrowserLikeWebSocket,
    protocol: 'actioncable-v1-json',
    logLevel: 'error'
  })
  cables.push(c)
  return c
}

test('connects and gets the session id from the welcome message', async () => {
  let c = cable()
  await c.connect()
  assert.equal(c.state, 'connected')
  assert.match(c.sessionId, /^[0-9a-f]{16,}$/)
})

test('subscribes, performs and receives transmit and broadcasts', async () => {
  let c = cable()
  let channel = c.subscribeTo('EchoChannel')
  let received = []
  channel.on('message', msg => received.push(msg))
  await channel.ensureSubscribed()
  await channel.perform('echo', { text: 'from anycable/web' })
  await broadcast(server, 'all', { text: 'broadcast' })
  await waitFor(() => received.length === 2)
  assert.deepEqual(received[0], { text: 'from anycable/web', action: 'echo' })
  assert.deepEqual(received[1], { text: 'broadcast' })
})

test('reports a rejected subscription', async () => {
  let c = cable()
  let channel = c.subscribeTo('PickyChannel')
  await assert.rejects(channel.ensureSubscribed())
})

test('is told unauthorized and does not reconnect', async () => {
  let c = cable('user=nobody')
  let closed = new Promise(resolve => c.on('close', ev => resolve(ev)))
  await assert.rejects(c.connect())
  let ev = await closed
  assert.equal(ev.reason, 'unauthorized')
  assert.equal(c.state, 'closed')
})
