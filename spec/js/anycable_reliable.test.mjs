// @anycable/web on AnyCable's extended protocol (actioncable-v1-ext-json) against
// anycable-rs embedded in Puma with the memory broker: broadcasts carry offsets, what
// a client missed while away is replayed when it subscribes again, and a client that
// comes back with its sid gets its session back without connect or subscribed.
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

function cable(protocolOptions = {}) {
  let c = createCable(`${server.url}?user=alice`, {
    websocketImplementation: BrowserLikeWebSocket,
    protocol: 'actioncable-v1-ext-json',
    protocolOptions: { pongs: true, ...protocolOptions },
    logLevel: 'error'
  })
  cables.push(c)
  return c
}

async function events() {
  return (await server.http('/events')).json()
}

test('replays the broadcasts missed while disconnected, each once and in order', async () => {
  // Without session recovery: the client subscribes again, with its positions.
  let c = cable({ disableSessionRecovery: true })
  let channel = c.subscribeTo('EchoChannel')
  let received = []
  let infos = []
  channel.on('message', (msg, meta) => received.push({ n: msg.n, ...meta }))
  channel.on('info', ev => infos.push(ev.type))
  await channel.ensureSubscribed()

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

test('restores the session by sid: no connect, no subscribed, the missed broadcasts by history', async () => {
  await server.http('/events', { method: 'DELETE' })
  let c = cable()
  let connects = []
  c.on('connect', ev => connects.push(ev))
  let channel = c.subscribeTo('StateChannel', { room: 'js' })
  let echo = c.subscribeTo('EchoChannel')
  let received = []
  let infos = []
  // The subscribe's `history` (since the cable was made, in whole seconds) may replay
  // the previous test's last broadcasts: only this test's count.
  echo.on('message', (msg, meta) => msg.n > 100 && received.push({ n: msg.n, ...meta }))
  echo.on('info', ev => infos.push(ev.type))
  await channel.ensureSubscribed()
  await echo.ensureSubscribed()
  let sid = c.sessionId
  assert.match(sid, /^[0-9a-f]{32,}$/)
  await broadcast(server, 'all', { n: 101 })
  await waitFor(() => received.length === 1)
  let base = received[0].offset

  c.disconnect()
  await waitFor(() => c.state === 'closed')
  // The server has seen the socket close (and kept the session) before it comes back.
  await waitFor(async () => (await events()).some(([kind]) => kind === 'disconnect'))
  await broadcast(server, 'all', { n: 102 })
  await broadcast(server, 'all', { n: 103 })

  await c.connect()
  await waitFor(() => connects.length === 2)
  assert.equal(connects[1].restored, true)
  assert.notEqual(c.sessionId, sid)
  await waitFor(() => received.length >= 3 && infos.includes('history_received'))
  await broadcast(server, 'all', { n: 104 })
  await waitFor(() => received.length >= 4)
  await sleep(300)
  assert.deepEqual(
    received.map(r => [r.n, r.offset]),
    [101, 102, 103, 104].map((n, i) => [n, base + i])
  )
  // The app ran connect and subscribed once each, for the first socket only.
  let kinds = (await events()).map(([kind]) => kind)
  assert.equal(kinds.filter(k => k === 'connect').length, 1, kinds.join(','))
  assert.equal(kinds.filter(k => k === 'subscribed').length, 1, kinds.join(','))
  // The restored channel serves actions: identifiers are back, `subscribed`'s ivars not.
  let reply = new Promise(resolve => channel.on('message', resolve))
  await channel.perform('ivars')
  assert.deepEqual(await reply, { room: null, count: null, params_room: 'js', user: 'alice' })
})

test('presence through @anycable/web: join, info kept current by events, leave', async () => {
  let [a, b] = [cable(), cable()]
  let [ca, cb] = [a.subscribeTo('LobbyChannel', { room: 'js' }), b.subscribeTo('LobbyChannel', { room: 'js' })]
  await ca.ensureSubscribed()
  await cb.ensureSubscribed()
  let seen = []
  cb.on('presence', ev => seen.push(ev.type))
  assert.deepEqual(await cb.presence.info(), {})
  await ca.presence.join('alice', { name: 'Alice' })
  await waitFor(() => seen.includes('join'))
  assert.deepEqual(await cb.presence.info(), { alice: { name: 'Alice' } })
  await cb.presence.join('bob', { name: 'Bob' })
  await waitFor(() => seen.filter(t => t === 'join').length === 2)
  // A fresh client asks the server.
  let c = cable()
  let cc = c.subscribeTo('LobbyChannel', { room: 'js' })
  await cc.ensureSubscribed()
  assert.deepEqual(await cc.presence.info(), { alice: { name: 'Alice' }, bob: { name: 'Bob' } })
  await ca.presence.leave()
  await waitFor(() => seen.includes('leave'))
  assert.deepEqual(await cb.presence.info(), { bob: { name: 'Bob' } })
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
