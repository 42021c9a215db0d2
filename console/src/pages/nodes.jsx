import { Component } from 'preact'
import { useMemo, useState } from 'preact/hooks'
import { get } from '../api.js'
import { useCp } from '../context.js'
import { Link, useLocation } from '../router.js'
import { Alert, Empty, Loading, PageHeader } from '../ui.jsx'
import { formatDate, relativeTime, usePoll } from '../util.js'
import { STATUS } from './overview.jsx'

const DAY = 86400
const REASONS = {
  out_of_sync: 'Its configuration differs from the expected one.',
  incompatible: 'Not compatible with this control plane.',
}

/** "k:v, k2" → [[k, v], [k2, null]] */
function parseLabelFilter(text) {
  return text
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      const i = s.indexOf(':')
      return i < 0 ? [s, null] : [s.slice(0, i).trim(), s.slice(i + 1).trim()]
    })
}

export function Nodes() {
  const cp = useCp()
  const loc = useLocation()
  const [data, setData] = useState(null)
  const [error, setError] = useState(null)
  const [status, setStatus] = useState(() => new URLSearchParams(loc.search).get('status') || '')
  const [label, setLabel] = useState('')
  const [now, setNow] = useState(Date.now())

  usePoll(
    async () => {
      try {
        const d = await get(`/api/console/control-planes/${encodeURIComponent(cp.id)}/nodes`)
        setData(d)
        setNow(Date.now())
        setError(null)
      } catch (e) {
        setError(e)
      }
    },
    5000,
    [cp.id],
  )

  const items = (data && data.items) || []
  const counts = useMemo(() => {
    const c = { connected: 0, out_of_sync: 0, incompatible: 0, disconnected: 0 }
    for (const n of items) c[n.status] = (c[n.status] || 0) + 1
    return c
  }, [data])
  const wanted = parseLabelFilter(label)
  const shown = items.filter(
    (n) =>
      (!status || n.status === status) &&
      wanted.every(([k, v]) => n.labels && k in n.labels && (v === null || n.labels[k] === v)),
  )
  const expected = data && data.expected_config_hash
  const nowS = now / 1000

  return (
    <div class="page">
      <PageHeader title="Data Plane Nodes" subtitle="Nodes that connected to this control plane. Updated every 5 seconds.">
        {cp.canWrite ? (
          <Link href={`${cp.base}/nodes/new`} class="btn btn-primary" data-testid="new-node">
            New Data Plane Node
          </Link>
        ) : null}
      </PageHeader>
      <div class="toolbar">
        <div class="field-inline">
          <label for="node-status-filter">Status</label>
          <select id="node-status-filter" data-testid="node-status-filter" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
            <option value="">All ({items.length})</option>
            {Object.entries(STATUS).map(([k, [l]]) => (
              <option key={k} value={k}>
                {l} ({counts[k] || 0})
              </option>
            ))}
          </select>
        </div>
        <div class="field-inline">
          <label for="node-label-filter">Label</label>
          <input
            id="node-label-filter"
            data-testid="node-label-filter"
            type="search"
            placeholder="key:value"
            value={label}
            onInput={(e) => setLabel(e.currentTarget.value)}
          />
        </div>
        <span class="muted">
          {data ? `${shown.length} of ${items.length} nodes` : ''} {expected ? <>· expected hash <code class="hash">{expected.slice(0, 12)}</code></> : null}
        </span>
      </div>
      {error ? <Alert>{error.message}</Alert> : null}
      {!data ? (
        <Loading />
      ) : items.length === 0 ? (
        <Empty>
          No data plane node has connected yet.{' '}
          {cp.canWrite ? <Link href={`${cp.base}/nodes/new`}>Add one with New Data Plane Node.</Link> : null}
        </Empty>
      ) : (
        <NodesTable shown={shown} expected={expected} nowS={nowS} />
      )}
      {data && items.length > 0 && shown.length === 0 ? <Empty>No node matches the filters.</Empty> : null}
    </div>
  )
}

const HEADERS = ['Host', 'Status', 'Version', 'IP', 'Labels', 'Last seen', 'Config hash', 'Certificate', 'Details']
const CHUNK = 50

/**
 * All the rows, in groups of 50 whose layout and paint the browser skips while they are off
 * screen (`content-visibility: auto`): a thousand nodes cost what the visible ones cost, at
 * first paint and at each refresh. A table for assistive technology (ARIA roles).
 */
function NodesTable({ shown, expected, nowS }) {
  const chunks = []
  for (let i = 0; i < shown.length; i += CHUNK) chunks.push(shown.slice(i, i + CHUNK))
  return (
    <div class="ntable" role="table" aria-label="Data plane nodes" aria-rowcount={shown.length + 1} data-testid="nodes-table">
      <div role="rowgroup" class="nhead">
        <div role="row" class="nrow">
          {HEADERS.map((h) => (
            <div role="columnheader" class="ncell" key={h}>
              {h}
            </div>
          ))}
        </div>
      </div>
      {chunks.map((c, i) => (
        <div role="rowgroup" class="nchunk" key={i}>
          {c.map((n) => (
            <NodeRow key={n.id} n={n} expected={expected} nowS={nowS} />
          ))}
        </div>
      ))}
    </div>
  )
}

/** One node's row: a few plain cells, redrawn only when what it shows changed. */
class NodeRow extends Component {
  shouldComponentUpdate(next) {
    const a = this.props.n
    const b = next.n
    return (
      next.expected !== this.props.expected ||
      relativeTime(a.last_seen, this.props.nowS * 1000) !== relativeTime(b.last_seen, next.nowS * 1000) ||
      certDays(a.cert_expiry, this.props.nowS) !== certDays(b.cert_expiry, next.nowS) ||
      ROW_FIELDS.some((k) => a[k] !== b[k]) ||
      labelText(a.labels) !== labelText(b.labels)
    )
  }

  render({ n, expected, nowS }) {
    const [label, kind] = STATUS[n.status] || [n.status, 'neutral']
    const differs = expected && n.config_hash && n.config_hash !== expected
    let cert = '—'
    if (n.cert_expiry) {
      const days = certDays(n.cert_expiry, nowS)
      const date = formatDate(n.cert_expiry, { day: true })
      if (days < 0) cert = <span class="badge badge-danger" data-testid="cert-warning">Expired {date}</span>
      else if (days < 30) {
        const d = Math.max(1, days)
        cert = (
          <span class="badge badge-warning" data-testid="cert-warning" title={`Expires ${date}`}>
            Expires in {d} day{d === 1 ? '' : 's'}
          </span>
        )
      } else cert = date
    }
    const reason = n.status === 'out_of_sync' || n.status === 'incompatible' ? n.reason || REASONS[n.status] : n.reason
    return (
      <div role="row" class="nrow" data-testid="node-row" data-node-id={n.id} data-status={n.status}>
        <div role="cell" class="ncell strong" title={`Node ${n.id}`}>
          {n.hostname || n.id}
        </div>
        <div role="cell" class="ncell">
          <span class={`badge badge-${kind}`} data-testid="node-status">
            {label}
          </span>
        </div>
        <div role="cell" class="ncell" data-testid="node-version">{n.version || '—'}</div>
        <div role="cell" class="ncell mono">{n.ip || '—'}</div>
        <div role="cell" class="ncell mono small" title={labelText(n.labels)}>
          {labelText(n.labels) || '—'}
        </div>
        <div role="cell" class="ncell" data-testid="node-last-seen">{relativeTime(n.last_seen, nowS * 1000)}</div>
        <div role="cell" class="ncell">
          <code class="hash" title={n.config_hash || ''}>
            {n.config_hash ? n.config_hash.slice(0, 12) : '—'}
          </code>
          {differs ? (
            <span class="mark-differs" title={`Differs from the expected hash ${expected}`} data-testid="hash-differs" aria-label="differs from the expected hash">
              {' '}≠
            </span>
          ) : null}
        </div>
        <div role="cell" class="ncell">{cert}</div>
        <div role="cell" class="ncell small wrap-cell" data-testid="node-reason">
          {reason || ''}
        </div>
      </div>
    )
  }
}

const ROW_FIELDS = ['id', 'hostname', 'ip', 'version', 'status', 'config_hash', 'reason']
const labelText = (labels) => (labels ? Object.entries(labels).map(([k, v]) => `${k}:${v}`).join(', ') : '')
/** Whole days until a certificate expires (negative once expired). */
const certDays = (expiry, nowS) => (expiry ? Math.floor((expiry - nowS) / DAY) : null)
