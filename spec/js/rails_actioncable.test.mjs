// The official @rails/actioncable client against anycable-rs embedded in Puma.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startPuma, loadRailsActionCable, waitFor, broadcast } from './support.mjs'

const { createConsumer } = await loadRailsActionCable()

let server
let consumers = []

before(async () => {
  server = await startPuma()
  await server.http('/login?name=alice')
})

after(async () => {
  consumers.forEach(c => c.disconnect())
  await server?.stop()
})

function consumer(query = 'user=alice') {
  let c = createConsumer(`${server.url}?${query}`)
  consumers.push(c)
  return c
}

function subscribe(c, params, callbacks = {}) {
  let received = []
  let state = { connected: false, rejected: false, received }
  let sub = c.subscriptions.create(params, {
    connected() {
      state.connected = true
    },
    rejected() {
      state.rejected = true
    },
    received(data) {
      received.push(data)
    },
    ...callbacks
  })
  return { sub, state }
}

test('connects, subscribes, performs and receives transmit', async () => {
  let c = consumer()
  let { sub, state } = subscribe(c, { channel: 'EchoChannel' })
  await waitFor(() => state.connected)
  sub.perform('echo', { text: 'hi' })
  await waitFor(() => state.received.length === 1)
  assert.deepEqual(state.received[0], { text: 'hi', action: 'echo' })
})

test('receives broadcasts from ActionCable.server.broadcast', async () => {
  let c = consumer()
  let { state } = subscribe(c, { channel: 'EchoChannel' })
  await waitFor(() => state.connected)
  await broadcast(server, 'all', { text: 'to everyone' })
  await waitFor(() => state.received.length === 1)
  assert.deepEqual(state.received[0], { text: 'to everyone' })
})

test('keeps channel state between performs', async () => {
  let c = consumer()
  let { sub, state } = subscribe(c, { channel: 'StateChannel', room: 'js' })
  await waitFor(() => state.connected)
  sub.perform('increment')
  sub.perform('increment')
  await waitFor(() => state.received.length === 2)
  assert.deepEqual(
    state.received.map(m => m.count),
    [1, 2]
  )
})

test('gets rejected subscriptions through the rejected callback', async () => {
  let c = consumer()
  let { state } = subscribe(c, { channel: 'PickyChannel' })
  await waitFor(() => state.rejected)
  assert.equal(state.connected, false)
})

test('stops reconnecting after an unauthorized disconnect', async () => {
  let c = consumer('user=nobody')
  c.connect()
  await waitFor(() => c.connection.webSocket?.readyState === 3 && !c.connection.monitor.isRunning())
  let socket = c.connection.webSocket
  await new Promise(resolve => setTimeout(resolve, 1000))
  assert.equal(c.connection.webSocket, socket, 'no new socket was opened')
  assert.equal(c.connection.isOpen(), false)
})
