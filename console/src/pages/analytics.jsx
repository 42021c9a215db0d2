import uPlot from 'uplot'
import 'uplot/dist/uPlot.min.css'
import { useEffect, useMemo, useRef, useState } from 'preact/hooks'
import { get } from '../api.js'
import { useCp } from '../context.js'
import { Alert, Empty, Loading, PageHeader, Tabs } from '../ui.jsx'
import { formatNumber, usePoll } from '../util.js'

const WINDOWS = [
  ['15m', '15 minutes'],
  ['1h', '1 hour'],
  ['6h', '6 hours'],
  ['24h', '24 hours'],
]
const CLASSES = [
  ['2xx', '#1d9a5b'],
  ['3xx', '#3b82f6'],
  ['4xx', '#d97706'],
  ['5xx', '#dc2626'],
  ['1xx', '#8a94a6'],
]
const LATENCY = [
  ['total', 'Total'],
  ['upstream', 'Upstream'],
  ['gateway', 'Gateway'],
]
const PCTS = [
  ['p50', '#3b82f6'],
  ['p95', '#d97706'],
  ['p99', '#dc2626'],
]

/** Minutes from start to end (step apart), each with its data or nothing. */
function timeline(a) {
  const step = a.step || 60
  const byMinute = new Map((a.minutes || []).map((m) => [m.minute, m]))
  let start = a.start
  let end = a.end
  if (start == null || end == null) {
    const ms = (a.minutes || []).map((m) => m.minute)
    start = ms.length ? Math.min(...ms) : 0
    end = ms.length ? Math.max(...ms) : 0
  }
  // Seconds or milliseconds: the API speaks seconds; tolerate either.
  if (start > 1e11) start = Math.floor(start / 1000)
  if (end > 1e11) end = Math.floor(end / 1000)
  start = Math.floor(start / step) * step
  const xs = []
  const rows = []
  for (let t = start; t <= end && xs.length < 10000; t += step) {
    xs.push(t)
    rows.push(byMinute.get(t) || null)
  }
  // Minutes the grid missed (an unaligned start): keep them too.
  const grid = new Set(xs)
  if ((a.minutes || []).some((m) => !grid.has(m.minute))) {
    const ms = [...(a.minutes || [])].sort((x, y) => x.minute - y.minute)
    return { xs: ms.map((m) => m.minute), rows: ms }
  }
  return { xs, rows }
}

export function Analytics() {
  const cp = useCp()
  const [win, setWin] = useState('15m')
  const [node, setNode] = useState('')
  const [latency, setLatency] = useState('total')
  const [data, setData] = useState(null)
  const [error, setError] = useState(null)
  const [nodes, setNodes] = useState([])
  const [updated, setUpdated] = useState(null)

  usePoll(
    async () => {
      try {
        const q = `window=${win}${node ? `&node=${encodeURIComponent(node)}` : ''}`
        const d = await get(`/api/console/control-planes/${encodeURIComponent(cp.id)}/analytics?${q}`)
        setData({ ...d, key: `${win} ${node}` })
        setUpdated(new Date())
        setError(null)
      } catch (e) {
        setError(e)
      }
    },
    10000,
    [cp.id, win, node],
  )
  usePoll(
    async () => {
      const d = await get(`/api/console/control-planes/${encodeURIComponent(cp.id)}/nodes`)
      setNodes((d && d.items) || [])
    },
    30000,
    [cp.id],
  )

  const tl = useMemo(() => (data ? timeline(data) : { xs: [], rows: [] }), [data])
  const sums = useMemo(() => {
    const s = { '1xx': 0, '2xx': 0, '3xx': 0, '4xx': 0, '5xx': 0 }
    for (const m of (data && data.minutes) || []) for (const k in s) s[k] += (m.status_classes && m.status_classes[k]) || 0
    return s
  }, [data])
  const total = data ? (data.totals && data.totals.requests != null ? data.totals.requests : (data.minutes || []).reduce((a, m) => a + (m.requests || 0), 0)) : null

  const requestsData = useMemo(
    () => [tl.xs, ...CLASSES.map(([k]) => tl.rows.map((m) => (m ? (m.status_classes && m.status_classes[k]) || 0 : 0)))],
    [tl],
  )
  const latencyData = useMemo(
    () => [
      tl.xs,
      ...PCTS.map(([p]) =>
        tl.rows.map((m) => {
          const l = m && m.requests && m.latency_ms && m.latency_ms[latency]
          return l && l[p] != null ? l[p] : null
        }),
      ),
    ],
    [tl, latency],
  )
  const errors = sums['5xx']
  const clientErrors = sums['4xx']

  return (
    <div class="page">
      <PageHeader title="Analytics" subtitle={`Requests through this control plane's nodes. Refreshed every 10 seconds${updated ? `; last at ${updated.toLocaleTimeString()}` : ''}.`} />
      <div class="toolbar">
        <div class="segmented" role="radiogroup" aria-label="Time window" data-testid="analytics-window">
          {WINDOWS.map(([v, l]) => (
            <label key={v} class={`segment${win === v ? ' segment-active' : ''}`} for={`win-${v}`} title={`Last ${l}`}>
              <input type="radio" name="window" id={`win-${v}`} value={v} checked={win === v} onChange={() => setWin(v)} data-testid={`window-${v}`} />
              {v}
            </label>
          ))}
        </div>
        <div class="field-inline">
          <label for="analytics-node">Node</label>
          <select id="analytics-node" data-testid="analytics-node" value={node} onChange={(e) => setNode(e.currentTarget.value)}>
            <option value="">All nodes</option>
            {nodes.map((n) => (
              <option key={n.id} value={n.id}>
                {n.hostname || n.id} ({n.id.slice(0, 8)})
              </option>
            ))}
          </select>
        </div>
      </div>
      {error ? <Alert>{error.message}</Alert> : null}
      {!data ? (
        <Loading />
      ) : (
        <>
          <div class="cards">
            <div class="card card-stat">
              <div class="card-label">Requests</div>
              <div class="card-value" data-testid="requests-total">
                {formatNumber(total)}
              </div>
            </div>
            <div class="card card-stat card-warning">
              <div class="card-label">Client errors (4xx)</div>
              <div class="card-value">{formatNumber(clientErrors)}</div>
            </div>
            <div class="card card-stat card-danger">
              <div class="card-label">Server errors (5xx)</div>
              <div class="card-value">{formatNumber(errors)}</div>
            </div>
            <div class="card card-stat">
              <div class="card-label">Error rate</div>
              <div class="card-value">{total ? `${(((errors + clientErrors) / total) * 100).toFixed(1)}%` : '—'}</div>
            </div>
          </div>
          <section class="panel">
            <h2>Requests per minute by status class</h2>
            <Chart testid="requests-chart" data={requestsData} kind="requests" />
          </section>
          <section class="panel">
            <div class="panel-head">
              <h2>Latency (ms)</h2>
              <Tabs label="Latency" value={latency} onChange={setLatency} tabs={LATENCY.map(([v, l]) => ({ value: v, label: l, testid: `latency-${v}` }))} />
            </div>
            <Chart testid="latency-chart" data={latencyData} kind="latency" />
          </section>
          <div class="grid3">
            <Top title="Top routes" items={data.top && data.top.routes} total={total} testid="top-routes" noneLabel="(no route)" />
            <Top title="Top services" items={data.top && data.top.services} total={total} testid="top-services" noneLabel="(no service)" />
            <Top title="Top consumers" items={data.top && data.top.consumers} total={total} testid="top-consumers" noneLabel="(no consumer)" />
          </div>
        </>
      )}
    </div>
  )
}

function Top({ title, items, total, testid, noneLabel = '(none)' }) {
  return (
    <section class="panel">
      <h2>{title}</h2>
      {!items || !items.length ? (
        <Empty>No requests.</Empty>
      ) : (
        <table class="table table-dense" data-testid={testid}>
          <thead>
            <tr>
              <th>Name</th>
              <th class="num">Requests</th>
              <th class="num">Share</th>
            </tr>
          </thead>
          <tbody>
            {items.map((it) => (
              <tr key={it.id || it.name}>
                <td title={it.id || undefined}>{it.name || (it.id ? it.id.slice(0, 8) : <span class="muted">{noneLabel}</span>)}</td>
                <td class="num">{formatNumber(it.requests)}</td>
                <td class="num">{total ? `${((it.requests / total) * 100).toFixed(1)}%` : '—'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  )
}

function chartOptions(kind, width) {
  const series =
    kind === 'requests'
      ? CLASSES.map(([k, c]) => ({ label: k, stroke: c, fill: `${c}22`, width: 1.5, points: { show: false } }))
      : PCTS.map(([k, c]) => ({ label: k, stroke: c, width: 1.5, spanGaps: false, points: { size: 5, fill: c } }))
  return {
    width,
    height: 220,
    series: [{}, ...series],
    // From zero, with a little room above the highest point.
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max((max || 0) * 1.1, kind === 'requests' ? 5 : 1)] } },
    axes: [
      { stroke: '#5b6474', grid: { stroke: '#eef0f4' }, ticks: { stroke: '#d8dce4' } },
      {
        stroke: '#5b6474',
        grid: { stroke: '#eef0f4' },
        ticks: { stroke: '#d8dce4' },
        size: 50,
        values: (u, vals) => vals.map((v) => (kind === 'latency' ? `${v}` : formatNumber(v))),
      },
    ],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
  }
}

/** A uPlot chart, made once and given new data in place. */
function Chart({ data, kind, testid }) {
  const ref = useRef(null)
  const plot = useRef(null)
  useEffect(() => {
    const el = ref.current
    const width = Math.max(300, el.clientWidth || 600)
    plot.current = new uPlot(chartOptions(kind, width), data, el)
    const ro = new ResizeObserver(() => {
      const w = Math.max(300, el.clientWidth)
      if (plot.current && Math.abs(plot.current.width - w) > 2) plot.current.setSize({ width: w, height: 220 })
    })
    ro.observe(el)
    return () => {
      ro.disconnect()
      plot.current.destroy()
      plot.current = null
    }
  }, [kind])
  useEffect(() => {
    if (plot.current) plot.current.setData(data)
  }, [data])
  return <div class="chart" ref={ref} data-testid={testid} role="img" aria-label={kind === 'requests' ? 'Requests per minute by status class' : 'Latency percentiles'} />
}
