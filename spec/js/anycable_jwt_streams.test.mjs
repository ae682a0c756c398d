// @anycable/web with AnyCable's JWT identification and signed streams, and
// @rails/actioncable on a Turbo Streams channel, against anycable-rs in Puma. Tokens
// come from the app (AnyCableRs::JWT); signed names are made here with Node's crypto,
// by Rails' MessageVerifier algorithm.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { createHmac } from 'node:crypto'
import { createCable } from '@anycable/web'
import { startPuma, BrowserLikeWebSocket, loadRailsActionCable, waitFor, broadcast } from './support.mjs'

const { createConsumer } = await loadRailsActionCable()

let server
let cables = []

before(async () => {
  server = await startPuma({
    ANYCABLE_JWT_SECRET: 'jwt-s3cret',
    ANYCABLE_STREAMS_SECRET: 'streams-s3cret',
    ANYCABLE_TURBO_STREAMS: 'true',
    ANYCABLE_TURBO_STREAMS_SECRET: 'turbo-s3cret'
  })
})

after(async () => {
  cables.forEach(c => c.disconnect())
  await server?.stop()
})

function signed(name, secret) {
  let data = Buffer.from(JSON.stringify(name)).toString('base64')
  return `${data}--${createHmac('sha256', secret).update(data).digest('hex')}`
}

async function token(name, exp) {
  let res = await server.http(`/token?name=${name}${exp ? `&exp=${exp}` : ''}`)
  return res.text()
}

function cable(opts) {
  let c = createCable(server.url, {
    websocketImplementation: BrowserLikeWebSocket,
    protocol: 'actioncable-v1-json',
    logLevel: 'error',
    ...opts
  })
  cables.push(c)
  return c
}

for (let strategy of ['param', 'sub-protocol']) {
  test(`connects with a token (${strategy}) and streams from a signed name`, async () => {
    let c = cable({ auth: { token: await token('jill') }, websocketAuthStrategy: strategy })
    await c.connect()
    assert.equal(c.state, 'connected')
    let channel = c.streamFromSigned(signed('news', 'streams-s3cret'))
    let received = []
    channel.on('message', msg => received.push(msg))
    await channel.ensureSubscribed()
    await broadcast(server, 'news', { headline: strategy })
    await waitFor(() => received.length === 1)
    assert.deepEqual(received[0], { headline: strategy })
  })
}

test('an expired token is refreshed by tokenRefresher, then the client connects', async () => {
  let refreshed = 0
  let c = cable({
    auth: { token: await token('old', Math.floor(Date.now() / 1000) - 10) },
    tokenRefresher: async transport => {
      refreshed++
      transport.setToken(await token('old'), 'jid')
    }
  })
  await c.connect().catch(() => {})
  await waitFor(() => c.state === 'connected', 10000)
  assert.equal(refreshed, 1)
})

test('a forged signed name is rejected', async () => {
  let c = cable({ auth: { token: await token('jill') } })
  await c.connect()
  let channel = c.streamFromSigned(signed('news', 'not-the-secret'))
  await assert.rejects(channel.ensureSubscribed())
})

test('@rails/actioncable subscribes to Turbo::StreamsChannel and gets the stream', async () => {
  let consumer = createConsumer(`${server.url}?jid=${await token('turbo')}`)
  let received = []
  let connected = false
  consumer.subscriptions.create(
    { channel: 'Turbo::StreamsChannel', signed_stream_name: signed('gid://dummy/Room/7', 'turbo-s3cret') },
    {
      connected() {
        connected = true
      },
      received(data) {
        received.push(data)
      }
    }
  )
  await waitFor(() => connected, 10000)
  let html = '<turbo-stream action="append" target="messages"><template>hi</template></turbo-stream>'
  await broadcast(server, 'gid://dummy/Room/7', html)
  await waitFor(() => received.length === 1)
  assert.equal(received[0], html)
  consumer.disconnect()
})
