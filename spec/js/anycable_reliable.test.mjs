// @anycable/web on AnyCable's extended protocol (actioncable-v1-ext-json) against
// anycable-rs embedded in Puma with the memory broker: broadcasts carry offsets, and
// what a client missed while away is replayed when it subscribes again.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createCable } from '@anycable/web'
import { startPuma, BrowserLikeWebSocket, waitFor, broadcast, sleep } from './support.mjs'

let server
let cables = []

before(async () => {
  server = await startPuma({ ANYCABLE_BROKER: 'memory', ANYCABLE_PONG_TIMEOUT: '2' })
  await server.http('/login?name=alice')
})

after(async () => {
  cables.forEach(c => c.disconnect())
  await server?.stop()
})

function cable() {
  let c = createCable(`${server.url}?user=alice`, {
    websocketImplementation: BrowserLikeWebSocket,
    protocol: 'actioncable-v1-ext-json',
    protocolOptions: { pongs: true },
    logLevel: 'error'
  })
  cables.push(c)
  return c
}

test('replays the broadcasts missed while disconnected, each once and in order', async () => {
  let c = cable()
  let channel = c.subscribeTo('EchoChannel')
  let received = []
  let infos = []
  channel.on('message', (msg, meta) => received.push({ n: msg.n, ...meta }))
  channel.on('info', ev => infos.push(ev.type))
  await channel.ensureSubscribed()
  assert.match(c.sessionId, /^[0-9a-f]{16,}$/)

  await broadcast(server, 'all', { n: 1 })
  await broadcast(server, 'all', { n: 2 })
  await waitFor(() => received.length === 2)
  let epoch = received[0].epoch
  assert.match(epoch, /^[\w-]{4}$/)
  assert.deepEqual(received, [
    { n: 1, stream: 'all', epoch, offset: 1 },
    { n: 2, stream: 'all', epoch, offset: 2 }
  ])

  c.disconnect()
  await waitFor(() => c.state === 'closed')
  for (let n = 3; n <= 5; n++) await broadcast(server, 'all', { n })

  // Session restore is not there yet: the client re-subscribes with its positions.
  await c.connect()
  await channel.ensureSubscribed()
  await waitFor(() => received.length >= 5 && infos.includes('history_received'))
  await broadcast(server, 'all', { n: 6 })
  await waitFor(() => received.length >= 6)
  await sleep(300)
  assert.deepEqual(
    received.map(r => [r.n, r.offset, r.epoch]),
    [1, 2, 3, 4, 5, 6].map(n => [n, n, epoch])
  )
  assert.ok(!infos.includes('history_not_found'))
})

test('keeps a client that answers pings connected past pong_timeout', async () => {
  let c = cable()
  let closed = false
  c.on('disconnect', () => (closed = true))
  await c.connect()
  // ping_interval 3 s + pong_timeout 2 s: a silent client would be gone by now.
  await sleep(6000)
  assert.equal(closed, false)
  assert.equal(c.state, 'connected')
})
