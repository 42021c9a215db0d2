// End-to-end flows of the console against a running Gantry control plane, in headless Chromium
// (Debian's, through playwright-core). Run by the Rust test harness:
//
//   CONSOLE_URL=http://127.0.0.1:PORT ADMIN_TOKEN=... VIEWER_TOKEN=... GANTRY_BIN_DIR=... \
//   WORK_DIR=... DP_PROXY_PORT=... DP_STATUS_PORT=... SCREENSHOT_DIR=... UPSTREAM_URL=... \
//   node console/tests/flows.mjs
//
// Exits 0 when every step passed, 1 with the failing step's message otherwise. Any browser
// console error or page error fails the run (printed at the end), the browser's own "Failed to
// load resource" lines included.
import { spawn } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { chromium } from 'playwright-core'

// ---- settings

function need(name) {
  const v = process.env[name]
  if (!v) {
    console.error(`flows: environment variable ${name} is not set`)
    process.exit(1)
  }
  return v
}

const CONSOLE_URL = need('CONSOLE_URL').replace(/\/+$/, '')
const ADMIN_TOKEN = need('ADMIN_TOKEN')
const VIEWER_TOKEN = need('VIEWER_TOKEN')
const GANTRY_BIN_DIR = need('GANTRY_BIN_DIR')
const WORK_DIR = need('WORK_DIR')
const DP_PROXY_PORT = need('DP_PROXY_PORT')
const DP_STATUS_PORT = need('DP_STATUS_PORT')
const SCREENSHOT_DIR = need('SCREENSHOT_DIR')
const UPSTREAM_URL = need('UPSTREAM_URL')
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium'
const CP_NAME = process.env.CP_NAME || 'e2e'
const DP_URL = `http://127.0.0.1:${DP_PROXY_PORT}`

fs.mkdirSync(WORK_DIR, { recursive: true })
fs.mkdirSync(SCREENSHOT_DIR, { recursive: true })
const DP_LOG = path.join(WORK_DIR, 'dp.log')

// ---- bookkeeping

const t0 = Date.now()
const consoleErrors = []
let browser = null
let dp = null // {child, exited: Promise<{code, signal}>, done: bool}

const since = () => `${((Date.now() - t0) / 1000).toFixed(1)}s`

async function step(name, fn) {
  const start = Date.now()
  console.log(`[${since()}] ▶ ${name}`)
  try {
    const r = await fn()
    console.log(`[${since()}] ✓ ${name} (${Date.now() - start} ms)`)
    return r
  } catch (e) {
    e.step = e.step || name
    throw e
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Polls `fn` until it returns a truthy value; fails with `what` after `ms`. */
async function until(what, ms, fn, every = 500) {
  const end = Date.now() + ms
  let last
  for (;;) {
    try {
      const v = await fn()
      if (v) return v
    } catch (e) {
      last = e
    }
    if (dp && dp.done && dp.mustRun) {
      throw new Error(`the data plane exited (${JSON.stringify(dp.status)}) while waiting for ${what}`)
    }
    if (Date.now() > end) {
      throw new Error(`timed out after ${ms / 1000} s waiting for ${what}${last ? ` (last error: ${last.message})` : ''}`)
    }
    await sleep(every)
  }
}

function watch(page, name) {
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return
    const loc = msg.location()
    consoleErrors.push(`[${name}] console error: ${msg.text()}${loc && loc.url ? ` (${loc.url}:${loc.lineNumber})` : ''}`)
  })
  page.on('pageerror', (e) => consoleErrors.push(`[${name}] page error: ${e.stack || e.message}`))
  return page
}

async function shot(page, name) {
  // From the top: the header and navigation are sticky.
  await page.evaluate(() => window.scrollTo(0, 0))
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`), fullPage: true })
}

/** Marks the document; `notReloaded` then proves it was not reloaded since. */
async function mark(page) {
  await page.evaluate(() => {
    window.__flowsMark = 'kept'
  })
}

async function notReloaded(page, what) {
  const v = await page.evaluate(() => window.__flowsMark)
  if (v !== 'kept') throw new Error(`${what}: the page was reloaded`)
}

async function fetchStatus(url, headers = {}) {
  const ctl = new AbortController()
  const t = setTimeout(() => ctl.abort(), 3000)
  try {
    const r = await fetch(url, { headers, signal: ctl.signal })
    await r.arrayBuffer()
    return r.status
  } finally {
    clearTimeout(t)
  }
}

async function login(page, token) {
  await page.goto(`${CONSOLE_URL}/`)
  await page.getByLabel('Access token').waitFor()
  await page.getByLabel('Access token').fill(token)
  await page.getByTestId('login-submit').click()
  await page.getByRole('heading', { name: 'Control Planes', exact: true }).waitFor()
}

/** Opens the create form of an entity list page and returns the form. */
async function openCreate(page) {
  await page.getByTestId('entity-create').click()
  const modal = page.getByTestId('entity-modal')
  await modal.waitFor()
  return modal
}

async function submitAndWaitRow(page, modal, text) {
  await modal.getByTestId('form-submit').click()
  // The modal closes on success; Kong's errors keep it open and are shown in it.
  await until(`the form to be saved (${text})`, 15000, async () => {
    if (!(await modal.isVisible())) return true
    const err = modal.getByTestId('form-error')
    if (await err.count()) throw new Error(`the form shows: ${(await err.innerText()).replace(/\s+/g, ' ')}`)
    return false
  }).catch(async (e) => {
    const err = modal.getByTestId('form-error')
    if (await err.count()) throw new Error(`saving ${text} failed: ${(await err.innerText()).replace(/\s+/g, ' ')}`)
    throw e
  })
  await page.getByTestId('entity-row').filter({ hasText: text }).first().waitFor()
}

// ---- the data plane

function startDataPlane(command) {
  const script = path.join(WORK_DIR, 'run.sh')
  fs.writeFileSync(script, command)
  const env = {}
  // Nothing of the harness's own KONG_* / GANTRY_* settings leaks into the node.
  for (const [k, v] of Object.entries(process.env)) if (!/^(KONG|GANTRY)_/.test(k)) env[k] = v
  Object.assign(env, {
    PATH: `${GANTRY_BIN_DIR}${path.delimiter}${process.env.PATH || ''}`,
    KONG_PREFIX: path.join(WORK_DIR, 'dp'),
    KONG_PROXY_LISTEN: `127.0.0.1:${DP_PROXY_PORT}`,
    KONG_STATUS_LISTEN: `127.0.0.1:${DP_STATUS_PORT}`,
  })
  const log = fs.openSync(DP_LOG, 'w')
  const child = spawn('bash', ['run.sh'], { cwd: WORK_DIR, env, stdio: ['ignore', log, log] })
  fs.closeSync(log)
  const d = { child, done: false, mustRun: true }
  d.exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      d.done = true
      d.status = { code, signal }
      resolve(d.status)
    })
    child.on('error', (e) => {
      d.done = true
      d.status = { code: null, signal: null, error: e.message }
      resolve(d.status)
    })
  })
  return d
}

async function stopDataPlane() {
  if (!dp || dp.done) return dp && dp.status
  dp.mustRun = false
  dp.child.kill('SIGTERM')
  const r = await Promise.race([dp.exited, sleep(30000).then(() => null)])
  if (!r) {
    dp.child.kill('SIGKILL')
    await dp.exited
    throw new Error('the data plane did not exit within 30 s of SIGTERM')
  }
  return r
}

// ---- the flows

async function main() {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox'] })
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } })
  const page = watch(await context.newPage(), 'main')
  page.setDefaultTimeout(15000)

  // 1. Log in as the admin.
  await step('1. log in with ADMIN_TOKEN', async () => {
    await page.goto(`${CONSOLE_URL}/`)
    await page.getByLabel('Access token').waitFor()
    // The form can show a moment before the address changes to /login.
    await page.waitForURL(/\/login$/, { timeout: 5000 }).catch(() => {
      throw new Error(`expected /login, at ${page.url()}`)
    })
    await shot(page, 'login')
    await page.getByLabel('Access token').fill(ADMIN_TOKEN)
    await page.getByTestId('login-submit').click()
    await page.getByRole('heading', { name: 'Control Planes', exact: true }).waitFor()
    await page.getByTestId('new-control-plane').waitFor()
  })

  // 2. Create the control plane.
  const cpId = await step(`2. create control plane "${CP_NAME}" (env:test)`, async () => {
    await page.getByTestId('new-control-plane').click()
    const form = page.getByTestId('control-plane-form')
    await form.getByLabel('Name').fill(CP_NAME)
    await form.getByLabel('Labels').fill('env:test')
    await form.getByTestId('form-submit').click()
    await until('the new control plane page', 15000, async () => {
      const err = form.getByTestId('form-error')
      if ((await form.count()) && (await err.count())) throw new Error(`the form shows: ${await err.innerText()}`)
      const fe = form.getByTestId('field-error')
      if ((await form.count()) && (await fe.count())) throw new Error(`the form shows: ${await fe.first().innerText()}`)
      return /\/control-planes\/[^/]+$/.test(new URL(page.url()).pathname)
    })
    const id = decodeURIComponent(new URL(page.url()).pathname.split('/')[2])
    await page.getByTestId('nav-cp-name').filter({ hasText: CP_NAME }).waitFor()
    // The list shows it, with its label.
    await page.getByRole('link', { name: '‹ Control Planes' }).click()
    const row = page.getByTestId('control-plane-row').filter({ hasText: CP_NAME })
    await row.first().waitFor()
    if (!(await row.first().innerText()).includes('env:test')) throw new Error('the list does not show the label env:test')
    await shot(page, 'control-planes')
    await row.getByRole('link', { name: CP_NAME, exact: true }).click()
    await page.getByTestId('node-counts').waitFor()
    await shot(page, 'overview')
    return id
  })
  const base = `${CONSOLE_URL}/control-planes/${encodeURIComponent(cpId)}`

  // 3. The wizard, then a real data plane from its command.
  const nodesPage = page
  const version = await step('3. New Data Plane Node: Linux, run the command, see it Connected', async () => {
    await page.getByTestId('nav-nodes').click()
    await page.getByRole('heading', { name: 'Data Plane Nodes', exact: true }).waitFor()
    await page.getByTestId('new-node').click()
    const select = page.getByTestId('node-version')
    await select.waitFor()
    const first = await select.locator('option').first().getAttribute('value')
    if (!first) throw new Error('the version list is empty')
    await select.selectOption(first)
    await page.getByTestId('platform-linux').check()
    await page.getByTestId('generate-cert').click()
    const pre = page.getByTestId('node-command')
    await pre.waitFor()
    const command = await pre.textContent()
    const install = (await page.getByTestId('node-install').count()) ? await page.getByTestId('node-install').textContent() : ''
    if (!command || !command.trim()) throw new Error('the command is empty')
    console.log(`    version ${first}; install: ${install ? install.split('\n')[0] : '(none)'}`)
    await page.getByTestId('key-once').waitFor()
    await shot(page, 'wizard')
    dp = startDataPlane(command)
    // Back to the nodes page inside the app (no reload), then wait for the node.
    await page.getByTestId('wizard-done').click()
    await page.getByTestId('nodes-table').or(page.getByText('No data plane node has connected yet.')).first().waitFor()
    await mark(page)
    await until(`a Connected node running ${first} (no reload)`, 60000, () =>
      page.evaluate(
        (v) =>
          [...document.querySelectorAll('[data-testid=node-row]')].some(
            (r) =>
              r.querySelector('[data-testid=node-status]').textContent.trim() === 'Connected' &&
              r.querySelector('[data-testid=node-version]').textContent.trim() === v,
          ),
        first,
      ),
    )
    await notReloaded(page, 'nodes page')
    await shot(page, 'nodes')
    return first
  })
  const nodeId = await page.evaluate(() => {
    const r = [...document.querySelectorAll('[data-testid=node-row]')].find(
      (x) => x.querySelector('[data-testid=node-status]').textContent.trim() === 'Connected',
    )
    return r && r.getAttribute('data-node-id')
  })

  // The nodes page stays open (step 7 reads it again); the rest happens in a second tab.
  const work = watch(await context.newPage(), 'work')
  work.setDefaultTimeout(15000)

  // 4. A service and a route through the schema-driven forms; the data plane serves them.
  await step('4. create service "echo" and route "/echo"; the data plane answers 200', async () => {
    await work.goto(`${base}/services`)
    await work.getByRole('heading', { name: 'Gateway Services', exact: true }).waitFor()
    let modal = await openCreate(work)
    await modal.getByTestId('field-name').fill('echo')
    await modal.getByTestId('field-url').fill(UPSTREAM_URL)
    await submitAndWaitRow(work, modal, 'echo')
    await shot(work, 'services')

    await work.getByTestId('nav-routes').click()
    await work.getByRole('heading', { name: 'Routes', exact: true }).waitFor()
    modal = await openCreate(work)
    await modal.getByTestId('field-name').fill('echo')
    await modal.getByTestId('field-service').selectOption({ label: 'echo' })
    await modal.getByTestId('field-paths').fill('/echo')
    await submitAndWaitRow(work, modal, 'echo')
    await shot(work, 'routes')
    await until(`200 from ${DP_URL}/echo`, 30000, async () => (await fetchStatus(`${DP_URL}/echo`)) === 200)
  })

  // 5. key-auth through the plugin form; the data plane then wants a key.
  await step('5. add the key-auth plugin (global); the data plane answers 401', async () => {
    await work.getByTestId('nav-plugins').click()
    await work.getByRole('heading', { name: 'Plugins', exact: true }).waitFor()
    const modal = await openCreate(work)
    await modal.getByTestId('plugin-picker').selectOption('key-auth')
    await modal.getByTestId('plugin-next').click()
    await modal.getByTestId('entity-form').waitFor()
    await modal.getByTestId('fieldset-config').waitFor()
    await submitAndWaitRow(work, modal, 'key-auth')
    await shot(work, 'plugins')
    await until(`401 from ${DP_URL}/echo`, 30000, async () => (await fetchStatus(`${DP_URL}/echo`)) === 401)
  })

  // A consumer with a key-auth credential (the consumer detail page), then the key works.
  await step('5b. consumer "alice" with a key-auth credential; her key gets 200', async () => {
    await work.getByTestId('nav-consumers').click()
    await work.getByRole('heading', { name: 'Consumers', exact: true }).waitFor()
    const modal = await openCreate(work)
    await modal.getByTestId('field-username').fill('alice')
    await submitAndWaitRow(work, modal, 'alice')
    await shot(work, 'consumers')
    await work.getByTestId('consumer-link').filter({ hasText: 'alice' }).click()
    await work.getByTestId('cred-tab-key-auth').click()
    const list = work.getByTestId('list-credentials-key-auth')
    await list.getByTestId('entity-create').click()
    const credModal = work.getByTestId('entity-modal')
    await credModal.getByTestId('field-key').fill('alice-e2e-key')
    await submitAndWaitRow(work, credModal, 'alice-e2e-key')
    await until(`200 from ${DP_URL}/echo with alice's key`, 30000, async () => (await fetchStatus(`${DP_URL}/echo`, { apikey: 'alice-e2e-key' })) === 200)
  })

  await step('5c. upstream with a target; certificates page', async () => {
    await work.getByTestId('nav-upstreams').click()
    await work.getByRole('heading', { name: 'Upstreams', exact: true }).waitFor()
    const modal = await openCreate(work)
    await modal.getByTestId('field-name').fill('echo-upstream')
    await submitAndWaitRow(work, modal, 'echo-upstream')
    await shot(work, 'upstreams')
    await work.getByTestId('upstream-link').filter({ hasText: 'echo-upstream' }).click()
    await work.getByTestId('list-targets').getByTestId('entity-create').click()
    const tModal = work.getByTestId('entity-modal')
    await tModal.getByTestId('field-target').fill('127.0.0.1:9')
    await submitAndWaitRow(work, tModal, '127.0.0.1:9')
    await work.getByTestId('nav-certificates').click()
    await work.getByRole('heading', { name: 'Certificates', exact: true }).waitFor()
    await work.getByTestId('entity-create').waitFor()
    await shot(work, 'certificates')
  })

  // 6. Traffic, then analytics (the page refreshes itself).
  await step('6. 50 requests; analytics shows them', async () => {
    const statuses = {}
    for (let i = 0; i < 50; i++) {
      const s = await fetchStatus(`${DP_URL}/echo`, i % 2 ? { apikey: 'alice-e2e-key' } : {}).catch(() => 'error')
      statuses[s] = (statuses[s] || 0) + 1
    }
    console.log(`    statuses: ${JSON.stringify(statuses)}`)
    await work.getByTestId('nav-analytics').click()
    await work.getByRole('heading', { name: 'Analytics', exact: true }).waitFor()
    await work.getByTestId('requests-chart').waitFor()
    await mark(work)
    // The 50 requests and those of the steps before are all in the 15-minute window.
    const total = await until('analytics to count the 50 requests (the page refreshing itself)', 60000, async () => {
      const t = await work.getByTestId('requests-total').textContent()
      const n = Number(String(t).replace(/[^0-9]/g, ''))
      return n >= 50 ? n : 0
    }, 1000)
    await notReloaded(work, 'analytics page')
    console.log(`    requests-total: ${total}`)
    // The chart has drawn something.
    await work.locator('[data-testid=requests-chart] canvas').waitFor()
    await shot(work, 'analytics')
  })

  // 7. Stop the data plane: the nodes page, still open, shows it Disconnected.
  await step('7. stop the data plane; the nodes page shows Disconnected', async () => {
    const st = await stopDataPlane()
    console.log(`    data plane exited: ${JSON.stringify(st)}`)
    await nodesPage.bringToFront()
    await until('the node to show Disconnected (no reload)', 30000, () =>
      nodesPage.evaluate(
        (id) =>
          [...document.querySelectorAll('[data-testid=node-row]')].some(
            (r) =>
              (!id || r.getAttribute('data-node-id') === id) &&
              r.querySelector('[data-testid=node-status]').textContent.trim() === 'Disconnected',
          ),
        nodeId,
      ),
    )
    await notReloaded(nodesPage, 'nodes page')
    await shot(nodesPage, 'nodes-disconnected')
    // Closed before logging out: its next poll would meet the ended session.
    await nodesPage.close()
  })

  // 8. The viewer sees, and cannot write.
  await step('8. log out; the viewer sees e2e and no write button; a write is 403', async () => {
    await work.bringToFront()
    // Off the analytics page first: no refresh of it can meet the ended session.
    await work.getByTestId('nav-services').click()
    await work.getByRole('heading', { name: 'Gateway Services', exact: true }).waitFor()
    await work.getByTestId('logout').click()
    await work.getByLabel('Access token').waitFor()
    await login(work, VIEWER_TOKEN)
    await work.getByTestId('control-plane-row').filter({ hasText: CP_NAME }).first().waitFor()
    if (await work.getByTestId('new-control-plane').count()) throw new Error('the viewer sees "New control plane"')

    await work.goto(`${base}/services`)
    await work.getByTestId('entity-row').filter({ hasText: 'echo' }).first().waitFor()
    // The role is known (write buttons would have appeared by now).
    await work.locator('main[data-role=viewer]').waitFor()
    for (const id of ['entity-create', 'entity-edit', 'entity-delete']) {
      if (await work.getByTestId(id).count()) throw new Error(`the viewer sees a ${id} button on the services page`)
    }
    const writeButtons = await work.getByRole('button', { name: /^(New|Create|Add|Edit|Delete)\b/ }).count()
    if (writeButtons) throw new Error(`the viewer sees ${writeButtons} create/edit/delete button(s) on the services page`)

    // The API refuses the viewer's write too: sent with the browser's session cookie and
    // CSRF token from outside the page, so that the refusal is not a console line.
    const cookie = (await work.context().cookies())
      .filter((c) => c.name.endsWith('gantry_console'))
      .map((c) => `${c.name}=${c.value}`)
      .join('; ')
    const s = await (await fetch(`${CONSOLE_URL}/api/session`, { headers: { cookie } })).json()
    if (!s.authenticated) throw new Error('the viewer\'s session cookie is not accepted')
    const r = await fetch(`${CONSOLE_URL}/api/v2/control-planes/${encodeURIComponent(cpId)}/core-entities/services`, {
      method: 'POST',
      headers: { cookie, origin: CONSOLE_URL, 'content-type': 'application/json', 'x-csrf-token': s.csrf_token },
      body: JSON.stringify({ name: 'viewer-write', url: 'http://127.0.0.1:9' }),
    })
    const status = r.status
    if (status !== 403) throw new Error(`the viewer's POST answered ${status}, not 403`)

    await work.goto(`${base}/nodes`)
    await work.getByRole('heading', { name: 'Data Plane Nodes', exact: true }).waitFor()
    await work.getByTestId('nodes-table').waitFor()
    await work.locator('main[data-role=viewer]').waitFor()
    if (await work.getByTestId('new-node').count()) throw new Error('the viewer sees "New Data Plane Node"')
    await work.goto(base)
    await work.getByTestId('node-counts').waitFor()
    await work.locator('main[data-role=viewer]').waitFor()
    if (await work.getByTestId('new-node').count()) throw new Error('the viewer sees "New Data Plane Node" on the overview')
    if (await work.getByTestId('delete-control-plane').count()) throw new Error('the viewer sees Delete on the overview')
  })
}

let failed = null
try {
  await main()
} catch (e) {
  failed = e
}
try {
  if (dp && !dp.done) await stopDataPlane()
} catch (e) {
  console.error(`flows: stopping the data plane: ${e.message}`)
}
if (browser) await browser.close().catch(() => {})

if (failed) {
  console.error(`\nFAILED at step "${failed.step || '(setup)'}": ${failed.message}`)
  if (failed.stack) console.error(failed.stack.split('\n').slice(1, 6).join('\n'))
  if (fs.existsSync(DP_LOG)) {
    console.error(`\n---- ${DP_LOG} (last 200 lines) ----`)
    console.error(fs.readFileSync(DP_LOG, 'utf8').split('\n').slice(-200).join('\n'))
  }
}
if (consoleErrors.length) {
  console.error(`\nbrowser console errors (${consoleErrors.length}):`)
  for (const m of consoleErrors) console.error(`  ${m}`)
}
if (failed || consoleErrors.length) {
  console.log('flows: 0 passed, 1 failed')
  process.exit(1)
}
console.log(`flows: all steps passed in ${since()}`)
