import { useState } from 'preact/hooks'
import { del } from '../api.js'
import { useCp, useSession } from '../context.js'
import { Link, navigate } from '../router.js'
import { Badge, ConfirmDelete, KeyValue, Labels, Loading, PageHeader } from '../ui.jsx'
import { formatDate, formatNumber, usePoll } from '../util.js'
import { clusterType } from './control-planes.jsx'

export const STATUS = {
  connected: ['Connected', 'success'],
  out_of_sync: ['Out of sync', 'warning'],
  incompatible: ['Incompatible', 'danger'],
  disconnected: ['Disconnected', 'neutral'],
}

export function Overview() {
  const cp = useCp()
  const session = useSession()
  const [deleting, setDeleting] = useState(false)
  // The shell has just loaded the overview: refresh it from 10 s on.
  usePoll(() => cp.reload(), 10000, [cp.id], { immediate: false })
  const { info } = cp
  if (!info) return <Loading />
  const c = cp.cp || {}
  const cfg = c.config || {}
  const nodes = info.nodes || {}
  return (
    <div class="page">
      <PageHeader title={c.name} subtitle={c.description}>
        {cp.canWrite ? (
          <Link href={`${cp.base}/nodes/new`} class="btn btn-primary" data-testid="new-node">
            New Data Plane Node
          </Link>
        ) : null}
        {cp.canWrite && session.org_admin ? (
          <button type="button" class="btn btn-danger-outline" onClick={() => setDeleting(true)} data-testid="delete-control-plane">
            Delete
          </button>
        ) : null}
      </PageHeader>
      <div class="cards" data-testid="node-counts">
        {Object.entries(STATUS).map(([k, [label, kind]]) => (
          <Link key={k} href={`${cp.base}/nodes?status=${k}`} class={`card card-stat card-${kind}`} data-testid={`count-${k}`}>
            <div class="card-label">{label}</div>
            <div class="card-value">{formatNumber(nodes[k] || 0)}</div>
          </Link>
        ))}
      </div>
      <div class="grid2">
        <section class="panel">
          <h2>Configuration</h2>
          <KeyValue
            items={[
              ['Config version', <span data-testid="config-version">{formatNumber(info.config_version)}</span>],
              [
                'Expected config hash',
                <code class="hash" data-testid="expected-hash">
                  {info.expected_config_hash || '—'}
                </code>,
              ],
              ['Your role', <Badge kind={cp.role === 'admin' ? 'info' : 'neutral'} testid="role">{cp.role}</Badge>],
            ]}
          />
        </section>
        <section class="panel">
          <h2>Control plane</h2>
          <KeyValue
            items={[
              ['ID', <code>{c.id}</code>],
              ['Type', clusterType(cfg.cluster_type)],
              ['Node authentication', cfg.auth_type === 'pki_client_certs' ? 'PKI client certificates' : 'Pinned client certificates'],
              ['Control plane endpoint', <code data-testid="cp-endpoint">{cfg.control_plane_endpoint || '—'}</code>],
              ['Telemetry endpoint', <code data-testid="telemetry-endpoint">{cfg.telemetry_endpoint || '—'}</code>],
              ['Labels', <Labels labels={c.labels} />],
              ['Created', formatDate(c.created_at)],
              ['Updated', formatDate(c.updated_at)],
            ]}
          />
        </section>
      </div>
      {deleting ? (
        <ConfirmDelete
          what="control plane"
          name={c.name}
          onClose={() => setDeleting(false)}
          onConfirm={async () => {
            await del(`/api/v2/control-planes/${encodeURIComponent(cp.id)}`)
            navigate('/')
          }}
        />
      ) : null}
    </div>
  )
}
