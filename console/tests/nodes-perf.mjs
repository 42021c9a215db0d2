// How fast the nodes page shows a large registry. Logs in with ADMIN_TOKEN, opens
// /control-planes/$CP_ID/nodes in a fresh document and prints, on stdout:
//
//   first_paint_ms=<ms from navigation start until the table's rows were painted>
//   rows=<rows ([data-testid=node-row]) in [data-testid=nodes-table] at that paint>
//   nodes_api_ms=<duration of the GET .../nodes request>
//
//   CONSOLE_URL=http://127.0.0.1:PORT ADMIN_TOKEN=... CP_ID=... node console/tests/nodes-perf.mjs
//
// Exits 1 (with the reason) if the table does not show rows within TIMEOUT_MS (default 30000).
import { chromium } from 'playwright-core'

function need(name) {
  const v = process.env[name]
  if (!v) {
    console.error(`nodes-perf: environment variable ${name} is not set`)
    process.exit(1)
  }
  return v
}

const CONSOLE_URL = need('CONSOLE_URL').replace(/\/+$/, '')
const ADMIN_TOKEN = need('ADMIN_TOKEN')
const CP_ID = need('CP_ID')
const TIMEOUT_MS = Number(process.env.TIMEOUT_MS || 30000)

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox'],
})
const errors = []
let code = 0
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 860 } })
  const page = await context.newPage()
  page.setDefaultTimeout(TIMEOUT_MS)
  page.on('pageerror', (e) => errors.push(e.message))

  // Log in (the session cookie then serves the measured navigation).
  await page.goto(`${CONSOLE_URL}/`)
  await page.getByLabel('Access token').fill(ADMIN_TOKEN)
  await page.getByTestId('login-submit').click()
  await page.getByRole('heading', { name: 'Control Planes', exact: true }).waitFor()

  // In every new document: note when the nodes table first has rows, after the next paint.
  await page.addInitScript(() => {
    window.__nodesRows = null
    const seen = () => {
      const rows = document.querySelectorAll('[data-testid=nodes-table] [data-testid=node-row]').length
      if (rows === 0) return false
      requestAnimationFrame(() =>
        setTimeout(() => {
          window.__nodesRows = { at: performance.now(), rows }
        }, 0),
      )
      return true
    }
    const obs = new MutationObserver(() => {
      if (seen()) obs.disconnect()
    })
    obs.observe(document, { childList: true, subtree: true })
  })

  await page.goto(`${CONSOLE_URL}/control-planes/${encodeURIComponent(CP_ID)}/nodes`)
  await page.waitForFunction(() => window.__nodesRows !== null, null, { timeout: TIMEOUT_MS })
  const r = await page.evaluate(() => {
    const api = performance
      .getEntriesByType('resource')
      .find((e) => /\/api\/console\/control-planes\/[^/]+\/nodes(\?|$)/.test(e.name))
    return { ...window.__nodesRows, api: api ? api.duration : null }
  })
  console.log(`first_paint_ms=${Math.round(r.at)}`)
  console.log(`rows=${r.rows}`)
  if (r.api != null) console.log(`nodes_api_ms=${Math.round(r.api)}`)
} catch (e) {
  console.error(`nodes-perf: ${e.message}`)
  code = 1
}
if (errors.length) {
  console.error(`nodes-perf: page errors:\n  ${errors.join('\n  ')}`)
  code = 1
}
await browser.close()
process.exit(code)
