// The Gateway entity pages: one generic list (search, create, edit, delete through the
// schema-driven form) configured per entity, and the detail pages that nest lists (a
// consumer's credentials, an upstream's targets, a certificate's SNIs).
import { useEffect, useState } from 'preact/hooks'
import { ApiError, core, del, get, listAll, patch, post, schema } from '../api.js'
import { useCp } from '../context.js'
import { Link } from '../router.js'
import { normalizeFields, SchemaForm } from '../schema-form.jsx'
import { Alert, Badge, ConfirmDelete, Empty, KeyValue, Loading, Modal, PageHeader, Tabs, Tags, toast } from '../ui.jsx'
import { formatDate, shortId, useAsync } from '../util.js'

// Never a credential's key or a certificate's private key: these names show in toasts and dialogs.
const nameOf = (e) => (e ? e.name || e.username || e.custom_id || e.target || e.group || e.client_id || e.id : '')

function Bool({ v }) {
  return v === false ? <Badge kind="neutral">Disabled</Badge> : <Badge kind="success">Enabled</Badge>
}

const list = (xs) => (xs && xs.length ? xs.join(', ') : <span class="muted">—</span>)

/**
 * A list of one Kong collection with its form.
 * - collection: path under core-entities (`services`, `consumers/{id}/key-auth`)
 * - schemaPath: `services`, `keyauth_credentials`, ... (or loadForm)
 * - columns: [{label, render(item, lookups)}]
 * - lookups: collections whose names the columns show ({services: Map(id → item)})
 */
export function EntityList(props) {
  const cp = useCp()
  const { collection, columns, noun, lookups = [] } = props
  const [q, setQ] = useState('')
  const [debounced, setDebounced] = useState('')
  const [serverFilter, setServerFilter] = useState(!!props.serverFilter)
  const [modal, setModal] = useState(null) // {mode: 'create'|'edit', item}
  const [deleting, setDeleting] = useState(null)

  useEffect(() => {
    const t = setTimeout(() => setDebounced(q.trim()), 250)
    return () => clearTimeout(t)
  }, [q])

  const useServer = serverFilter && debounced
  const items = useAsync(async () => {
    if (useServer) {
      try {
        return await listAll(cp.id, `${collection}?filter[name][contains]=${encodeURIComponent(debounced)}`)
      } catch (e) {
        if (e instanceof ApiError && e.status === 400) {
          setServerFilter(false)
          return listAll(cp.id, collection)
        }
        throw e
      }
    }
    return listAll(cp.id, collection)
  }, [cp.id, collection, useServer ? debounced : ''])

  const refs = useAsync(async () => {
    const out = {}
    await Promise.all(
      lookups.map(async (l) => {
        try {
          out[l] = new Map((await listAll(cp.id, l)).map((x) => [x.id, x]))
        } catch {
          out[l] = new Map()
        }
      }),
    )
    return out
  }, [cp.id, lookups.join(',')])

  const needle = debounced.toLowerCase()
  const all = items.data || []
  const shown =
    needle && !useServer
      ? all.filter((e) =>
          [e.name, e.username, e.custom_id, e.id, e.target, e.key, e.host, ...(e.tags || []), ...(e.snis || []), ...(e.paths || [])]
            .filter(Boolean)
            .some((v) => String(v).toLowerCase().includes(needle)),
        )
      : all

  const saved = (msg) => {
    setModal(null)
    items.reload()
    if (props.onChange) props.onChange()
    toast(msg)
  }

  return (
    <div class="entity-list" data-testid={`list-${props.testid || collection}`}>
      {props.header !== false ? (
        <PageHeader title={props.title} subtitle={props.subtitle}>
          {cp.canWrite ? (
            <button type="button" class="btn btn-primary" onClick={() => setModal({ mode: 'create' })} data-testid="entity-create">
              {props.createLabel || `New ${noun}`}
            </button>
          ) : null}
        </PageHeader>
      ) : null}
      <div class="toolbar">
        {props.header === false && cp.canWrite ? (
          <button type="button" class="btn btn-primary btn-small" onClick={() => setModal({ mode: 'create' })} data-testid="entity-create">
            {props.createLabel || `New ${noun}`}
          </button>
        ) : null}
        <label class="search">
          <span class="sr-only">Search {props.title || noun}</span>
          <input
            type="search"
            placeholder={props.searchPlaceholder || 'Search'}
            value={q}
            onInput={(e) => setQ(e.currentTarget.value)}
            data-testid="entity-search"
          />
        </label>
        <span class="muted">{items.data ? `${shown.length} ${shown.length === 1 ? noun : `${noun}s`}` : ''}</span>
      </div>
      {items.error ? <Alert>{items.error.message}</Alert> : null}
      {!items.data && items.loading ? (
        <Loading />
      ) : shown.length === 0 ? (
        <Empty>{needle ? `No ${noun} matches.` : `No ${noun}s yet.`}</Empty>
      ) : (
        <table class="table" data-testid="entity-table">
          <thead>
            <tr>
              {columns.map((c) => (
                <th key={c.label}>{c.label}</th>
              ))}
              {cp.canWrite ? <th class="actions-col"><span class="sr-only">Actions</span></th> : null}
            </tr>
          </thead>
          <tbody>
            {shown.map((item) => (
              <tr key={item.id} data-testid="entity-row" data-id={item.id}>
                {columns.map((c) => (
                  <td key={c.label} class={c.class}>
                    {c.render(item, refs.data || {})}
                  </td>
                ))}
                {cp.canWrite ? (
                  <td class="actions">
                    {props.editable !== false ? (
                      <button type="button" class="btn btn-small" onClick={() => setModal({ mode: 'edit', item })} data-testid="entity-edit" aria-label={`Edit ${nameOf(item)}`}>
                        Edit
                      </button>
                    ) : null}
                    <button type="button" class="btn btn-small btn-danger-outline" onClick={() => setDeleting(item)} data-testid="entity-delete" aria-label={`Delete ${nameOf(item)}`}>
                      Delete
                    </button>
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {modal ? (
        <EntityModal
          {...props}
          mode={modal.mode}
          item={modal.item}
          onClose={() => setModal(null)}
          onSaved={(r) =>
            saved(
              modal.mode === 'create'
                ? `${props.nounTitle || noun} ${nameOf(r) ? `"${nameOf(r)}" ` : ''}created.`
                : `${props.nounTitle || noun} saved.`,
            )
          }
        />
      ) : null}
      {deleting ? (
        <ConfirmDelete
          what={noun}
          name={nameOf(deleting)}
          requireTyping={false}
          onClose={() => setDeleting(null)}
          onConfirm={async () => {
            await del(core(cp.id, `${collection}/${encodeURIComponent(deleting.id)}`))
            items.reload()
            if (props.onChange) props.onChange()
            toast(`${props.nounTitle || noun} deleted.`)
          }}
        />
      ) : null}
    </div>
  )
}

function EntityModal(props) {
  const cp = useCp()
  const { mode, item, collection, noun } = props
  const [pick, setPick] = useState(mode === 'edit' && props.pickOf ? props.pickOf(item) : null)
  const needsPick = props.Picker && !pick
  const form = useAsync(async () => {
    if (needsPick) return null
    if (props.loadForm) return props.loadForm(cp.id, pick, item)
    const s = await schema(cp.id, props.schemaPath)
    return { fields: normalizeFields(s.fields) }
  }, [pick])
  const title = mode === 'create' ? `New ${noun}${pick ? `: ${pick}` : ''}` : `Edit ${noun} ${nameOf(item) || ''}`
  const onSubmit = async (body) => {
    const b = props.toBody ? props.toBody(body, { pick, item, mode }) : body
    const r =
      mode === 'create'
        ? await post(core(cp.id, collection), b)
        : await patch(core(cp.id, `${collection}/${encodeURIComponent(item.id)}`), b)
    props.onSaved(r)
  }
  const Picker = props.Picker
  return (
    <Modal title={title} onClose={props.onClose} wide testid="entity-modal">
      {needsPick ? (
        <Picker onPick={setPick} onCancel={props.onClose} />
      ) : form.error ? (
        <Alert>{form.error.message}</Alert>
      ) : !form.data ? (
        <Loading />
      ) : (
        <SchemaForm
          key={`${pick}`}
          cp={cp.id}
          entity={props.schemaPath || collection}
          fields={form.data.fields}
          initial={mode === 'edit' ? item : null}
          skip={props.skip}
          extra={mode === 'create' ? props.extra : props.editExtra}
          order={props.order}
          open={props.open}
          onSubmit={onSubmit}
          onCancel={props.onClose}
        >
          {form.data.note ? <p class="muted">{form.data.note}</p> : null}
        </SchemaForm>
      )}
    </Modal>
  )
}

// ---- Gateway Services

const SERVICE_EXTRA = [
  {
    name: 'url',
    label: 'URL',
    hint: 'Sets protocol, host, port and path at once, e.g. http://httpbin.internal:8080/anything',
    placeholder: 'http://upstream.internal:8080/path',
  },
]
const SERVICE_ORDER = ['name', 'url', 'protocol', 'host', 'port', 'path', 'enabled', 'tags']

export function Services() {
  return (
    <div class="page">
      <EntityList
        title="Gateway Services"
        subtitle="The upstream APIs and microservices this control plane's nodes proxy to."
        noun="service"
        nounTitle="Service"
        collection="services"
        schemaPath="services"
        serverFilter
        extra={SERVICE_EXTRA}
        order={SERVICE_ORDER}
        columns={[
          { label: 'Name', render: (s) => <span class="strong">{s.name || <span class="muted">{shortId(s.id)}</span>}</span> },
          { label: 'Protocol', render: (s) => s.protocol },
          { label: 'Host', render: (s) => <span class="mono">{s.host}</span> },
          { label: 'Port', render: (s) => s.port },
          { label: 'Path', render: (s) => <span class="mono">{s.path || '—'}</span> },
          { label: 'Enabled', render: (s) => <Bool v={s.enabled} /> },
          { label: 'Tags', render: (s) => <Tags tags={s.tags} /> },
          { label: 'Updated', render: (s) => formatDate(s.updated_at), class: 'nowrap' },
        ]}
      />
    </div>
  )
}

// ---- Routes

const ROUTE_ORDER = ['name', 'service', 'protocols', 'paths', 'hosts', 'methods', 'headers', 'strip_path', 'preserve_host']
const SERVICES = ['services']

export function Routes() {
  return (
    <div class="page">
      <EntityList
        title="Routes"
        subtitle="Rules that match requests to Gateway Services."
        noun="route"
        nounTitle="Route"
        collection="routes"
        schemaPath="routes"
        serverFilter
        order={ROUTE_ORDER}
        lookups={SERVICES}
        columns={[
          { label: 'Name', render: (r) => <span class="strong">{r.name || <span class="muted">{shortId(r.id)}</span>}</span> },
          {
            label: 'Service',
            render: (r, l) =>
              r.service ? nameOf(l.services && l.services.get(r.service.id)) || shortId(r.service.id) : <span class="muted">—</span>,
          },
          { label: 'Protocols', render: (r) => list(r.protocols) },
          { label: 'Methods', render: (r) => list(r.methods) },
          { label: 'Hosts', render: (r) => list(r.hosts) },
          { label: 'Paths', render: (r) => <span class="mono">{list(r.paths)}</span> },
          { label: 'Tags', render: (r) => <Tags tags={r.tags} /> },
        ]}
      />
    </div>
  )
}

// ---- Consumers and their credentials

export function Consumers() {
  const cp = useCp()
  return (
    <div class="page">
      <EntityList
        title="Consumers"
        subtitle="The users and applications of your APIs, and their credentials."
        noun="consumer"
        nounTitle="Consumer"
        collection="consumers"
        schemaPath="consumers"
        columns={[
          {
            label: 'Username',
            render: (c) => (
              <Link href={`${cp.base}/consumers/${c.id}`} class="strong" data-testid="consumer-link">
                {c.username || c.custom_id || shortId(c.id)}
              </Link>
            ),
          },
          { label: 'Custom ID', render: (c) => c.custom_id || <span class="muted">—</span> },
          { label: 'Tags', render: (c) => <Tags tags={c.tags} /> },
          { label: 'Created', render: (c) => formatDate(c.created_at), class: 'nowrap' },
        ]}
      />
    </div>
  )
}

const CREDENTIALS = [
  { path: 'key-auth', label: 'Key Auth', schema: 'keyauth_credentials', cols: [['Key', (c) => <span class="mono">{c.key}</span>]] },
  { path: 'basic-auth', label: 'Basic Auth', schema: 'basicauth_credentials', cols: [['Username', (c) => c.username]] },
  {
    path: 'jwt',
    label: 'JWT',
    schema: 'jwt_secrets',
    cols: [
      ['Key', (c) => <span class="mono">{c.key}</span>],
      ['Algorithm', (c) => c.algorithm],
    ],
  },
  { path: 'hmac-auth', label: 'HMAC Auth', schema: 'hmacauth_credentials', cols: [['Username', (c) => c.username]] },
  {
    path: 'oauth2',
    label: 'OAuth 2.0',
    schema: 'oauth2_credentials',
    cols: [
      ['Name', (c) => c.name],
      ['Client ID', (c) => <span class="mono">{c.client_id}</span>],
      ['Redirect URIs', (c) => list(c.redirect_uris)],
    ],
  },
  { path: 'acls', label: 'ACL groups', schema: 'acls', cols: [['Group', (c) => c.group]] },
]
const SKIP_CONSUMER = ['consumer']

export function ConsumerDetail({ params }) {
  const cp = useCp()
  const id = params.consumer
  const consumer = useAsync(() => get(core(cp.id, `consumers/${encodeURIComponent(id)}`)), [cp.id, id])
  const [tab, setTab] = useState('key-auth')
  const c = consumer.data
  const cred = CREDENTIALS.find((x) => x.path === tab)
  return (
    <div class="page">
      <div class="breadcrumb">
        <Link href={`${cp.base}/consumers`}>Consumers</Link> ›
      </div>
      {consumer.error ? <Alert>{consumer.error.message}</Alert> : null}
      {!c ? (
        consumer.loading ? <Loading /> : null
      ) : (
        <>
          <PageHeader title={c.username || c.custom_id || c.id} subtitle="Consumer" />
          <section class="panel">
            <KeyValue
              items={[
                ['ID', <code>{c.id}</code>],
                ['Username', c.username || '—'],
                ['Custom ID', c.custom_id || '—'],
                ['Tags', <Tags tags={c.tags} />],
                ['Created', formatDate(c.created_at)],
              ]}
            />
          </section>
          <h2 class="section-title">Credentials</h2>
          <Tabs
            label="Credential types"
            value={tab}
            onChange={setTab}
            tabs={CREDENTIALS.map((x) => ({ value: x.path, label: x.label, testid: `cred-tab-${x.path}` }))}
          />
          <EntityList
            key={tab}
            header={false}
            testid={`credentials-${tab}`}
            noun="credential"
            nounTitle="Credential"
            createLabel={`Add ${cred.label} credential`}
            collection={`consumers/${id}/${tab}`}
            schemaPath={cred.schema}
            skip={SKIP_CONSUMER}
            editable={tab !== 'acls'}
            columns={[
              ...cred.cols.map(([label, render]) => ({ label, render })),
              { label: 'Tags', render: (x) => <Tags tags={x.tags} /> },
              { label: 'Created', render: (x) => formatDate(x.created_at), class: 'nowrap' },
            ]}
          />
        </>
      )}
    </div>
  )
}

// ---- Plugins

const PLUGIN_LOOKUPS = ['services', 'routes', 'consumers']
const PLUGIN_ORDER = ['service', 'route', 'consumer', 'consumer_group', 'enabled', 'instance_name', 'protocols', 'tags', 'config']
const PLUGIN_OPEN = ['config']
const SKIP_PLUGIN = ['name']

function scopeOf(p, l) {
  const parts = []
  const n = (coll, ref) => nameOf(l[coll] && l[coll].get(ref.id)) || shortId(ref.id)
  if (p.service) parts.push(['Service', n('services', p.service)])
  if (p.route) parts.push(['Route', n('routes', p.route)])
  if (p.consumer) parts.push(['Consumer', n('consumers', p.consumer)])
  if (p.consumer_group) parts.push(['Consumer group', shortId(p.consumer_group.id)])
  if (!parts.length) return <Badge kind="info">Global</Badge>
  return parts.map(([k, v]) => (
    <span key={k} class="scope">
      {k}: <strong>{v}</strong>
    </span>
  ))
}

/** The plugin entity's own fields with the plugin's (its config, its scoping rules) over them. */
async function loadPluginForm(cpId, name) {
  const [base, own] = await Promise.all([
    schema(cpId, 'plugins').catch(() => ({ fields: [] })),
    schema(cpId, `plugins/${encodeURIComponent(name)}`),
  ])
  const fields = normalizeFields(base.fields)
  for (const f of normalizeFields(own.fields)) {
    const i = fields.findIndex((x) => x.name === f.name)
    if (i >= 0) fields[i] = { name: f.name, def: { ...fields[i].def, ...f.def } }
    else fields.push(f)
  }
  return {
    fields,
    note: 'Leave service, route and consumer empty to apply the plugin globally, to every request.',
  }
}

function PluginPicker({ onPick, onCancel }) {
  const cp = useCp()
  const enabled = useAsync(() => get(core(cp.id, 'plugins/enabled')), [cp.id])
  const [value, setValue] = useState('')
  const [q, setQ] = useState('')
  const names = ((enabled.data && enabled.data.enabled_plugins) || []).slice().sort()
  const shown = names.filter((n) => n.includes(q.trim().toLowerCase()))
  return (
    <form
      class="form"
      onSubmit={(e) => {
        e.preventDefault()
        if (value) onPick(value)
      }}
      data-testid="plugin-picker-form"
    >
      {enabled.error ? <Alert>{enabled.error.message}</Alert> : null}
      <div class="field">
        <label for="plugin-picker">Plugin</label>
        <select id="plugin-picker" data-testid="plugin-picker" value={value} onChange={(e) => setValue(e.currentTarget.value)}>
          <option value="">{enabled.data ? 'Choose a plugin…' : 'Loading…'}</option>
          {names.map((n) => (
            <option key={n} value={n}>
              {n}
            </option>
          ))}
        </select>
      </div>
      <div class="field">
        <label for="plugin-filter">Or find it</label>
        <input id="plugin-filter" type="search" value={q} placeholder="Filter plugins" onInput={(e) => setQ(e.currentTarget.value)} />
      </div>
      <div class="plugin-grid" role="list">
        {shown.map((n) => (
          <button type="button" role="listitem" key={n} class={`plugin-tile${n === value ? ' plugin-tile-active' : ''}`} onClick={() => onPick(n)} data-testid={`plugin-tile-${n}`}>
            {n}
          </button>
        ))}
      </div>
      <div class="form-actions">
        <button type="button" class="btn" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" class="btn btn-primary" disabled={!value} data-testid="plugin-next">
          Next
        </button>
      </div>
    </form>
  )
}

export function Plugins() {
  return (
    <div class="page">
      <EntityList
        title="Plugins"
        subtitle="Plugins run on every request, or on the service, route or consumer they are scoped to."
        noun="plugin"
        nounTitle="Plugin"
        collection="plugins"
        lookups={PLUGIN_LOOKUPS}
        Picker={PluginPicker}
        pickOf={(p) => p.name}
        loadForm={(cpId, pick) => loadPluginForm(cpId, pick)}
        toBody={(body, { pick, mode }) => (mode === 'create' ? { name: pick, ...body } : body)}
        skip={SKIP_PLUGIN}
        order={PLUGIN_ORDER}
        open={PLUGIN_OPEN}
        columns={[
          { label: 'Plugin', render: (p) => <span class="strong">{p.name}</span> },
          { label: 'Instance', render: (p) => p.instance_name || <span class="muted">—</span> },
          { label: 'Scope', render: scopeOf },
          { label: 'Enabled', render: (p) => <Bool v={p.enabled} /> },
          { label: 'Protocols', render: (p) => list(p.protocols) },
          { label: 'Updated', render: (p) => formatDate(p.updated_at), class: 'nowrap' },
        ]}
      />
    </div>
  )
}

// ---- Upstreams and targets

export function Upstreams() {
  const cp = useCp()
  return (
    <div class="page">
      <EntityList
        title="Upstreams"
        subtitle="Load-balanced sets of targets a service's host can name."
        noun="upstream"
        nounTitle="Upstream"
        collection="upstreams"
        schemaPath="upstreams"
        serverFilter
        order={['name', 'algorithm', 'hash_on', 'hash_fallback', 'slots']}
        columns={[
          {
            label: 'Name',
            render: (u) => (
              <Link href={`${cp.base}/upstreams/${u.id}`} class="strong" data-testid="upstream-link">
                {u.name}
              </Link>
            ),
          },
          { label: 'Algorithm', render: (u) => u.algorithm },
          { label: 'Hash on', render: (u) => u.hash_on || '—' },
          { label: 'Slots', render: (u) => u.slots },
          { label: 'Tags', render: (u) => <Tags tags={u.tags} /> },
          { label: 'Updated', render: (u) => formatDate(u.updated_at), class: 'nowrap' },
        ]}
      />
    </div>
  )
}

const SKIP_UPSTREAM = ['upstream']

export function UpstreamDetail({ params }) {
  const cp = useCp()
  const id = params.upstream
  const u = useAsync(() => get(core(cp.id, `upstreams/${encodeURIComponent(id)}`)), [cp.id, id])
  return (
    <div class="page">
      <div class="breadcrumb">
        <Link href={`${cp.base}/upstreams`}>Upstreams</Link> ›
      </div>
      {u.error ? <Alert>{u.error.message}</Alert> : null}
      {!u.data ? (
        u.loading ? <Loading /> : null
      ) : (
        <>
          <PageHeader title={u.data.name} subtitle="Upstream" />
          <section class="panel">
            <KeyValue
              items={[
                ['ID', <code>{u.data.id}</code>],
                ['Algorithm', u.data.algorithm],
                ['Hash on', u.data.hash_on || '—'],
                ['Slots', u.data.slots],
                ['Tags', <Tags tags={u.data.tags} />],
              ]}
            />
          </section>
          <h2 class="section-title">Targets</h2>
          <EntityList
            header={false}
            testid="targets"
            noun="target"
            nounTitle="Target"
            createLabel="New target"
            collection={`upstreams/${id}/targets`}
            schemaPath="targets"
            skip={SKIP_UPSTREAM}
            columns={[
              { label: 'Target', render: (t) => <span class="mono strong">{t.target}</span> },
              { label: 'Weight', render: (t) => t.weight },
              { label: 'Tags', render: (t) => <Tags tags={t.tags} /> },
              { label: 'Created', render: (t) => formatDate(t.created_at), class: 'nowrap' },
            ]}
          />
        </>
      )}
    </div>
  )
}

// ---- Certificates and SNIs

const CERT_EXTRA = [
  {
    name: 'snis',
    label: 'SNIs',
    type: 'array',
    elements: { type: 'string' },
    hint: 'Server names this certificate serves (each becomes an SNI).',
  },
]
const CERT_ORDER = ['cert', 'key', 'cert_alt', 'key_alt', 'tags']

/** The subject's CN of a PEM certificate is not parsed here: the list shows SNIs and dates. */
export function Certificates() {
  const cp = useCp()
  return (
    <div class="page">
      <EntityList
        title="Certificates"
        subtitle="TLS certificates the nodes present, chosen by SNI."
        noun="certificate"
        nounTitle="Certificate"
        collection="certificates"
        schemaPath="certificates"
        extra={CERT_EXTRA}
        order={CERT_ORDER}
        searchPlaceholder="Search by SNI, ID or tag"
        columns={[
          {
            label: 'Certificate',
            render: (c) => (
              <Link href={`${cp.base}/certificates/${c.id}`} class="mono strong" data-testid="certificate-link">
                {shortId(c.id)}
              </Link>
            ),
          },
          { label: 'SNIs', render: (c) => list(c.snis) },
          { label: 'Tags', render: (c) => <Tags tags={c.tags} /> },
          { label: 'Created', render: (c) => formatDate(c.created_at), class: 'nowrap' },
          { label: 'Updated', render: (c) => formatDate(c.updated_at), class: 'nowrap' },
        ]}
      />
    </div>
  )
}

const SKIP_CERT = ['certificate']

export function CertificateDetail({ params }) {
  const cp = useCp()
  const id = params.certificate
  const c = useAsync(() => get(core(cp.id, `certificates/${encodeURIComponent(id)}`)), [cp.id, id])
  return (
    <div class="page">
      <div class="breadcrumb">
        <Link href={`${cp.base}/certificates`}>Certificates</Link> ›
      </div>
      {c.error ? <Alert>{c.error.message}</Alert> : null}
      {!c.data ? (
        c.loading ? <Loading /> : null
      ) : (
        <>
          <PageHeader title={`Certificate ${shortId(c.data.id)}`} subtitle="Certificate" />
          <section class="panel">
            <KeyValue
              items={[
                ['ID', <code>{c.data.id}</code>],
                ['Tags', <Tags tags={c.data.tags} />],
                ['Created', formatDate(c.data.created_at)],
              ]}
            />
            <pre class="code small">{c.data.cert}</pre>
          </section>
          <h2 class="section-title">SNIs</h2>
          <EntityList
            header={false}
            testid="snis"
            noun="SNI"
            nounTitle="SNI"
            createLabel="New SNI"
            collection={`certificates/${id}/snis`}
            schemaPath="snis"
            skip={SKIP_CERT}
            onChange={c.reload}
            columns={[
              { label: 'Name', render: (s) => <span class="mono strong">{s.name}</span> },
              { label: 'Tags', render: (s) => <Tags tags={s.tags} /> },
              { label: 'Created', render: (s) => formatDate(s.created_at), class: 'nowrap' },
            ]}
          />
        </>
      )}
    </div>
  )
}
