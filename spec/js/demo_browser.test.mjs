// The demo chat page in a real browser (Debian's Chromium): people join, see who is
// online (presence) and who is typing (whispers), speak, follow the activity feed (Turbo
// Streams over SSE) and the server's figures (/metrics); one drops its connection and
// gets what was said meanwhile, once (the extended protocol's restore and history).
// Screenshots land in SCREENSHOT_DIR when set. The page's socket is served by
// anycable-rs inside Puma.
import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, sleep, launchChromium } from './support.mjs'

const DEMO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'demo')

let puma
let browser
let base
let dir
let output = ''

before(async () => {
  let port = await freePort()
  dir = mkdtempSync(join(tmpdir(), 'anycable-rs-demo-'))
  puma = spawn('puma', ['-C', 'config/puma.rb', 'config.ru'], {
    cwd: DEMO,
    env: {
      ...process.env,
      ANYCABLE_EMBEDDED: 'true',
      PORT: String(port),
      DEMO_DATABASE: join(dir, 'demo.sqlite3')
    },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  puma.stdout.on('data', d => (output += d))
  puma.stderr.on('data', d => (output += d))
  base = `http://127.0.0.1:${port}`
  for (let i = 0; i < 600; i++) {
    if (puma.exitCode !== null) throw new Error(`demo exited:\n${output}`)
    try {
      if ((await fetch(base)).ok) break
    } catch {}
    await sleep(100)
  }
  browser = await launchChromium()
})

after(async () => {
  await browser?.close()
  puma?.kill('SIGTERM')
  await new Promise(resolve => (puma && puma.exitCode === null ? puma.on('exit', resolve) : resolve()))
  if (dir) rmSync(dir, { recursive: true, force: true })
})

async function joinChat(nickname) {
  let context = await browser.newContext({ viewport: { width: 1100, height: 800 } })
  let page = await context.newPage()
  await page.goto(base)
  await page.fill('input[name=nickname]', nickname)
  await page.click('button[type=submit]')
  await page.waitForSelector('#status.connected', { timeout: 10000 })
  return page
}

// The texts of the page's list `selector`.
function texts(page, selector) {
  return page.$$eval(`${selector} li`, lis => lis.map(li => li.textContent))
}

async function waitForText(page, selector, text, timeout = 10000) {
  await page.waitForFunction(
    ([selector, text]) => [...document.querySelectorAll(`${selector} li`)].some(li => li.textContent.includes(text)),
    [selector, text],
    { timeout }
  )
}

async function screenshot(page, name) {
  let path = join(process.env.SCREENSHOT_DIR || dir, `demo-${name}.png`)
  await page.screenshot({ path })
  return path
}

test('two browsers: messages, who is online, who is typing, the activity feed, the server figures', async () => {
  let ann = await joinChat('ann')
  let ben = await joinChat('ben')
  // Presence: each lists both (the server's set, joined under the cookie's nickname).
  for (let [page, self, other] of [[ann, 'ann (you)', 'ben'], [ben, 'ben (you)', 'ann']]) {
    await waitForText(page, '#online', self)
    await waitForText(page, '#online', other)
  }
  // A whisper, browser to browser: ben types, ann sees it.
  await ben.type('#body', 'hel', { delay: 50 })
  await ann.waitForFunction(() => document.getElementById('typing').textContent === 'ben is typing…', null, {
    timeout: 10000
  })
  await ben.fill('#body', '')
  await ann.fill('#body', 'hello from ann')
  await ann.press('#body', 'Enter')
  for (let page of [ann, ben]) {
    await waitForText(page, '#messages', 'annhello from ann')
    // The activity feed: a Turbo Stream the action broadcast, read over SSE.
    await waitForText(page, '#activity', 'ann said 3 words')
  }
  await ben.waitForFunction(() => Number(document.getElementById('connections').textContent) >= 2, null, {
    timeout: 10000
  })
  let shot = await screenshot(ben, 'chat')
  assert.ok(shot)
  // The message was stored by the channel's action (ActiveRecord, in-process).
  let reloaded = await ben.context().newPage()
  await reloaded.goto(base)
  assert.match(await reloaded.textContent('#messages'), /hello from ann/)
  await ann.context().close()
  await ben.context().close()
})

test('a dropped connection comes back as the same session and gets what it missed, once', async () => {
  let cid = await joinChat('cid')
  let dee = await joinChat('dee')
  await waitForText(cid, '#online', 'dee')
  await cid.click('#drop')
  await cid.waitForSelector('#status.offline')
  await dee.fill('#body', 'said while cid was away')
  await dee.press('#body', 'Enter')
  await waitForText(dee, '#messages', 'said while cid was away')
  assert.ok(!(await texts(cid, '#messages')).some(t => t.includes('while cid was away')))
  await cid.waitForFunction(() => document.getElementById('status').textContent === 'connected (session restored)', null, {
    timeout: 15000
  })
  await waitForText(cid, '#messages', 'deesaid while cid was away')
  await screenshot(cid, 'after-drop')
  await new Promise(resolve => setTimeout(resolve, 500))
  let copies = (await texts(cid, '#messages')).filter(t => t === 'deesaid while cid was away')
  assert.equal(copies.length, 1)
  // Once from the server too, not only once on the page (which drops a repeated id).
  let received = await cid.evaluate(() => {
    let li = [...document.querySelectorAll('#messages li')].find(li => li.textContent.includes('while cid was away'))
    return window.chatFrames[li.dataset.id]
  })
  assert.equal(received, 1)
  // Its own list is current again after the restore.
  await waitForText(cid, '#online', 'cid (you)')
  await waitForText(cid, '#online', 'dee')
})

test('a whisper cannot pass for a message, nor for a name that is not online', async () => {
  let eve = await joinChat('eve')
  let fay = await joinChat('fay')
  await waitForText(fay, '#online', 'eve')
  await eve.evaluate(() => {
    let chat = window.chatForTests
    chat.whisper({ nickname: 'fay', body: 'forged by eve', id: 999999 })
    chat.whisper({ typing: 'nobody-online' })
  })
  await eve.fill('#body', 'real words')
  await eve.press('#body', 'Enter')
  await waitForText(fay, '#messages', 'evereal words')
  assert.ok(!(await texts(fay, '#messages')).some(t => t.includes('forged by eve')))
  assert.equal(await fay.textContent('#typing'), '')
})
