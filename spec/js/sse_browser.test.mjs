// Server-Sent Events (ANYCABLE_SSE) in a real browser (Debian's Chromium): a page's own
// EventSource reads a channel through Puma's port, identified by the login cookie
// (the app's `connect`), and, each time the server ends its stream (here
// ANYCABLE_MAX_CONN_AGE, as at a deploy), comes back by itself with Last-Event-ID and
// gets what it missed meanwhile from the history: every broadcast once, in order.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { startPuma, broadcast, sleep, launchChromium } from './support.mjs'


let server
let browser

before(async () => {
  server = await startPuma({ ANYCABLE_SSE: 'true', ANYCABLE_BROKER: 'memory', ANYCABLE_MAX_CONN_AGE: '2' })
  browser = await launchChromium()
})

after(async () => {
  await browser?.close()
  await server?.stop()
})

test("Chromium's EventSource reads a channel and, back after each close, gets what it missed", async () => {
  let page = await (await browser.newContext()).newPage()
  let base = `http://127.0.0.1:${server.port}`
  await page.goto(`${base}/login?name=alice`)
  await page.goto(`${base}/sse_page?src=${encodeURIComponent('/events?channel=EchoChannel')}`)
  await page.waitForFunction(() => window.got.some(e => e.event === 'confirm_subscription'), null, { timeout: 10000 })
  // About 6 s of broadcasts: the server ends the stream every 2 s or so, and the
  // browser waits its reconnection time (about 3 s) before it comes back.
  let sent = []
  for (let k = 1; k <= 40; k++) {
    sent.push(k)
    await broadcast(server, 'all', { k })
    await sleep(150)
  }
  await page.waitForFunction(n => window.got.filter(e => e.event === 'message').length >= n, sent.length, {
    timeout: 15000
  }).catch(() => {})
  let got = await page.evaluate(() => window.got)
  let messages = got.filter(e => e.event === 'message')
  assert.deepEqual(messages.map(e => JSON.parse(e.data).k), sent, JSON.stringify(got))
  for (let m of messages) assert.match(m.id, /^\d+\/[^/]+\/all$/)
  let named = got.map(e => e.event)
  // Ended by the server (server_restart), back with Last-Event-ID (confirm_history).
  assert.ok(named.includes('disconnect'), named.join(' '))
  assert.ok(named.includes('confirm_history'), named.join(' '))
  assert.ok(named.filter(n => n === 'welcome').length >= 2, named.join(' '))
  assert.ok(!named.includes('reject_history'), named.join(' '))
})
