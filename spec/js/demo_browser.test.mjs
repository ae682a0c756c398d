// The demo chat page in a real browser (Debian's Chromium): two people join, one
// speaks, both see it. The page's socket is served by anycable-rs inside Puma.
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
  let context = await browser.newContext()
  let page = await context.newPage()
  await page.goto(base)
  await page.fill('input[name=nickname]', nickname)
  await page.click('button[type=submit]')
  await page.waitForSelector('#status.connected', { timeout: 10000 })
  return page
}

test('two browsers chat through the embedded server', async () => {
  let ann = await joinChat('ann')
  let ben = await joinChat('ben')
  await ann.fill('#body', 'hello from ann')
  await ann.press('#body', 'Enter')
  for (let page of [ann, ben]) {
    await page.waitForFunction(
      () => [...document.querySelectorAll('#messages li')].some(li => li.textContent === 'annhello from ann'),
      null,
      { timeout: 10000 }
    )
  }
  if (process.env.SCREENSHOT) await ben.screenshot({ path: process.env.SCREENSHOT })
  // The message was stored by the channel's action (ActiveRecord, in-process).
  let reloaded = await ben.context().newPage()
  await reloaded.goto(base)
  assert.match(await reloaded.textContent('#messages'), /hello from ann/)
})
