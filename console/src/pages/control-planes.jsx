import { useState } from 'preact/hooks'
import { get, post } from '../api.js'
import { useSession } from '../context.js'
import { Link, navigate } from '../router.js'
import { Alert, Empty, Labels, Loading, Modal, PageHeader } from '../ui.jsx'
import { errorsOf } from '../schema-form.jsx'
import { formatDate, parseLabels, useAsync } from '../util.js'

const CLUSTER_TYPES = {
  CLUSTER_TYPE_CONTROL_PLANE: 'Control plane',
  CLUSTER_TYPE_K8S_INGRESS_CONTROLLER: 'Kubernetes Ingress Controller',
  CLUSTER_TYPE_CONTROL_PLANE_GROUP: 'Control plane group',
  CLUSTER_TYPE_HYBRID: 'Hybrid',
}
export const clusterType = (t) => CLUSTER_TYPES[t] || t || '—'

export function ControlPlanes() {
  const session = useSession()
  const [creating, setCreating] = useState(false)
  const [q, setQ] = useState('')
  const list = useAsync(() => get('/api/v2/control-planes?page[size]=100'), [])
  const items = (list.data && list.data.data) || []
  const needle = q.trim().toLowerCase()
  const shown = needle
    ? items.filter(
        (cp) =>
          cp.name.toLowerCase().includes(needle) ||
          (cp.description || '').toLowerCase().includes(needle) ||
          Object.entries(cp.labels || {}).some(([k, v]) => `${k}:${v}`.toLowerCase().includes(needle)),
      )
    : items
  return (
    <div class="page">
      <PageHeader title="Control Planes" subtitle="Each control plane has its own configuration, data plane nodes and analytics.">
        {session.org_admin ? (
          <button type="button" class="btn btn-primary" onClick={() => setCreating(true)} data-testid="new-control-plane">
            New control plane
          </button>
        ) : null}
      </PageHeader>
      <div class="toolbar">
        <label class="search">
          <span class="sr-only">Filter control planes</span>
          <input
            type="search"
            placeholder="Filter by name, description or label"
            value={q}
            onInput={(e) => setQ(e.currentTarget.value)}
            data-testid="cp-filter"
          />
        </label>
        <span class="muted">
          {list.data ? `${shown.length} of ${list.data.meta?.page?.total ?? items.length}` : ''}
        </span>
      </div>
      {list.error ? <Alert>{list.error.message}</Alert> : null}
      {!list.data && list.loading ? (
        <Loading />
      ) : shown.length === 0 ? (
        <Empty>{needle ? 'No control plane matches.' : 'No control planes yet.'}</Empty>
      ) : (
        <table class="table" data-testid="control-planes-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Description</th>
              <th>Labels</th>
              <th>Type</th>
              <th>Created</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((cp) => (
              <tr key={cp.id} data-testid="control-plane-row">
                <td>
                  <Link href={`/control-planes/${cp.id}`} class="strong">
                    {cp.name}
                  </Link>
                </td>
                <td class="wrap">{cp.description || <span class="muted">—</span>}</td>
                <td>
                  <Labels labels={cp.labels} />
                </td>
                <td>{clusterType(cp.config && cp.config.cluster_type)}</td>
                <td class="nowrap">{formatDate(cp.created_at)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {creating ? (
        <CreateControlPlane
          onClose={() => setCreating(false)}
          onCreated={(cp) => {
            setCreating(false)
            navigate(`/control-planes/${cp.id}`)
          }}
        />
      ) : null}
    </div>
  )
}

function CreateControlPlane({ onClose, onCreated }) {
  const [form, setForm] = useState({ name: '', description: '', labels: '', auth_type: 'pinned_client_certs' })
  const [errors, setErrors] = useState({ top: [], fields: {} })
  const [busy, setBusy] = useState(false)
  const set = (k) => (e) => setForm({ ...form, [k]: e.currentTarget.value })
  const submit = async (e) => {
    e.preventDefault()
    let labels
    try {
      labels = parseLabels(form.labels)
    } catch (err) {
      setErrors({ top: [], fields: { labels: err.message } })
      return
    }
    const body = { name: form.name.trim(), labels, auth_type: form.auth_type }
    if (form.description.trim()) body.description = form.description.trim()
    setBusy(true)
    setErrors({ top: [], fields: {} })
    try {
      onCreated(await post('/api/v2/control-planes', body))
    } catch (err) {
      const errs = errorsOf(err)
      if (err.status === 409) errs.fields.name = errs.fields.name || err.message
      // Fields are named as the API names them (labels.<key> for one label).
      const fields = {}
      for (const [k, v] of Object.entries(errs.fields)) {
        const base = k.split(/[.[]/)[0]
        fields[base] = fields[base] ? `${fields[base]}; ${v}` : v
      }
      const top = errs.top.filter((m) => !Object.values(fields).includes(m))
      setErrors({ top, fields })
      setBusy(false)
    }
  }
  const fe = errors.fields
  const field = (k, label, input, hint) => (
    <div class={`field${fe[k] ? ' has-error' : ''}`}>
      <label for={`cp-${k}`}>{label}</label>
      {input}
      {hint ? <div class="hint">{hint}</div> : null}
      {fe[k] ? (
        <div class="field-error" data-testid="field-error" id={`cp-${k}-err`}>
          {fe[k]}
        </div>
      ) : null}
    </div>
  )
  const aria = (k) => ({ 'aria-invalid': fe[k] ? 'true' : undefined, 'aria-describedby': fe[k] ? `cp-${k}-err` : undefined })
  return (
    <Modal title="New control plane" onClose={onClose} testid="create-control-plane">
      <form class="form" onSubmit={submit} noValidate data-testid="control-plane-form">
        {errors.top.length ? <Alert testid="form-error">{errors.top.join(' ')}</Alert> : null}
        {field(
          'name',
          'Name',
          <input id="cp-name" data-testid="cp-name" autocomplete="off" value={form.name} onInput={set('name')} {...aria('name')} />,
        )}
        {field(
          'description',
          'Description',
          <textarea id="cp-description" data-testid="cp-description" rows={2} value={form.description} onInput={set('description')} {...aria('description')} />,
        )}
        {field(
          'labels',
          'Labels',
          <input id="cp-labels" data-testid="cp-labels" autocomplete="off" placeholder="env:prod, team:payments" value={form.labels} onInput={set('labels')} {...aria('labels')} />,
          'key:value pairs, comma-separated.',
        )}
        {field(
          'auth_type',
          'Node authentication',
          <select id="cp-auth_type" data-testid="cp-auth-type" value={form.auth_type} onChange={set('auth_type')} {...aria('auth_type')}>
            <option value="pinned_client_certs">Pinned client certificates</option>
            <option value="pki_client_certs">PKI client certificates</option>
          </select>,
          'Pinned: the console issues each node a certificate that this control plane pins.',
        )}
        <div class="form-actions">
          <button type="button" class="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="btn btn-primary" disabled={busy} data-testid="form-submit">
            {busy ? 'Creating…' : 'Create'}
          </button>
        </div>
      </form>
    </Modal>
  )
}
