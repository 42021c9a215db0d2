// One form for every Kong entity and plugin configuration, driven by Kong's schema format:
// `{"fields": [{"name": {"type": ..., "required", "default", "one_of", "elements", "fields"}}]}`.
// It sends only what the user set (create) or changed (edit), so Kong's defaults apply, and shows
// Kong's errors (`fields`, nested as the records are) next to the field they name.
import { useEffect, useMemo, useRef, useState } from 'preact/hooks'
import { listAll } from './api.js'
import { Alert } from './ui.jsx'
import { humanize } from './util.js'

const SKIP = new Set(['id', 'created_at', 'updated_at', 'ws_id'])
const MULTILINE = new Set(['cert', 'key', 'cert_alt', 'key_alt', 'rsa_public_key', 'secret'])
// Lists whose values may hold commas (regex paths, `name:value` pairs of the transformer
// plugins): one value per line only. Other lists take commas too.
const NO_COMMA_SPLIT = new Set(['paths', 'headers', 'querystring', 'body', 'json', 'json_types', 'uris', 'origins'])

/** `[{"name": def}, ...]` → `[{name, def}]` */
export function normalizeFields(fields) {
  const out = []
  for (const f of fields || []) {
    for (const [name, def] of Object.entries(f)) out.push({ name, def: def || {} })
  }
  return out
}

const isScalar = (t) => t === 'string' || t === 'number' || t === 'integer'

/** How a field is edited. */
export function kindOf(def) {
  const t = def.type
  if (t === 'string') return def.one_of ? 'select' : 'string'
  if (t === 'number' || t === 'integer') return def.one_of ? 'select' : 'number'
  if (t === 'boolean') return 'boolean'
  if (t === 'foreign') return 'foreign'
  if (t === 'record') return def.fields ? 'record' : 'json'
  if (t === 'array' || t === 'set') {
    const el = def.elements || {}
    if (el.one_of && isScalar(el.type)) return 'multi'
    if (isScalar(el.type)) return 'list'
    return 'json'
  }
  if (t === 'map') {
    const k = def.keys || {}
    const v = def.values || {}
    if ((k.type || 'string') === 'string' && isScalar(v.type || 'string')) return 'map'
    if ((k.type || 'string') === 'string' && (v.type === 'array' || v.type === 'set') && isScalar((v.elements || {}).type)) {
      return 'maplist'
    }
    return 'json'
  }
  return 'json'
}

/** The raw (input) form of a value. */
function toRaw(kind, def, v) {
  switch (kind) {
    case 'boolean':
      return v == null ? (def.default == null ? false : !!def.default) : !!v
    case 'multi':
      return Array.isArray(v) ? v.map(String) : Array.isArray(def.default) ? def.default.map(String) : []
    case 'foreign':
      return v && v.id ? v.id : ''
    case 'list':
      return Array.isArray(v) ? v.join('\n') : ''
    case 'map':
      return v && typeof v === 'object' ? Object.entries(v).map(([a, b]) => `${a}=${b}`).join('\n') : ''
    case 'maplist':
      return v && typeof v === 'object'
        ? Object.entries(v).map(([a, b]) => `${a}=${Array.isArray(b) ? b.join(',') : b}`).join('\n')
        : ''
    case 'json':
      return v == null ? '' : JSON.stringify(v, null, 2)
    default:
      return v == null ? '' : String(v)
  }
}

function splitList(raw, name) {
  const parts = String(raw).split('\n')
  const out = []
  for (const p of parts) {
    const pieces = NO_COMMA_SPLIT.has(name) ? [p] : p.split(',')
    for (const x of pieces) {
      const t = x.trim()
      if (t) out.push(t)
    }
  }
  return out
}

function toNumber(s, def) {
  const n = Number(s)
  if (String(s).trim() === '' || Number.isNaN(n)) throw new Error('expected a number')
  if (def.type === 'integer' && !Number.isInteger(n)) throw new Error('expected an integer')
  return n
}

/** The value a raw input means; throws Error(message) when it cannot mean one. */
function fromRaw(kind, def, raw, name) {
  switch (kind) {
    case 'boolean':
      return !!raw
    case 'multi': {
      const el = def.elements || {}
      return raw.map((x) => (el.type === 'string' ? x : Number(x)))
    }
    case 'foreign':
      return raw ? { id: raw } : null
    case 'select':
      if (String(raw) === '') return null
      return def.type === 'string' ? String(raw) : Number(raw)
    case 'number':
      return String(raw).trim() === '' ? null : toNumber(raw, def)
    case 'list': {
      const el = def.elements || {}
      const items = splitList(raw, name)
      return el.type === 'string' ? items : items.map((x) => toNumber(x, el))
    }
    case 'map':
    case 'maplist': {
      const out = {}
      for (const line of String(raw).split('\n')) {
        const t = line.trim()
        if (!t) continue
        const i = t.indexOf('=')
        if (i <= 0) throw new Error(`"${t}" is not key=value`)
        const k = t.slice(0, i).trim()
        const v = t.slice(i + 1).trim()
        if (kind === 'maplist') out[k] = v.split(',').map((x) => x.trim()).filter(Boolean)
        else out[k] = (def.values || {}).type === 'string' || !def.values ? v : toNumber(v, def.values)
      }
      return out
    }
    case 'json':
      if (String(raw).trim() === '') return null
      try {
        return JSON.parse(raw)
      } catch {
        throw new Error('expected JSON')
      }
    default:
      return String(raw) === '' ? null : String(raw)
  }
}

/** Whether a raw input holds something (for create: only those are sent). */
function isSet(kind, raw, touched) {
  if (kind === 'boolean' || kind === 'multi') return touched
  return String(raw).trim() !== ''
}

function get(obj, path) {
  let o = obj
  for (const k of path) {
    if (o == null || typeof o !== 'object') return undefined
    o = o[k]
  }
  return o
}

function set(obj, path, v) {
  let o = obj
  for (let i = 0; i < path.length - 1; i++) {
    if (o[path[i]] == null || typeof o[path[i]] !== 'object') o[path[i]] = {}
    o = o[path[i]]
  }
  o[path[path.length - 1]] = v
}

/** The leaves (path, def, kind) of a list of fields, records flattened. */
function leaves(fields, prefix = [], out = []) {
  for (const { name, def } of fields) {
    const kind = kindOf(def)
    const path = [...prefix, name]
    if (kind === 'record') leaves(normalizeFields(def.fields), path, out)
    else out.push({ path, def, kind, name })
  }
  return out
}

/** Kong's `fields` error object, flattened to "a.b" → message. */
export function flattenErrors(obj, prefix = '', out = {}) {
  if (obj == null) return out
  if (typeof obj === 'string') {
    out[prefix] = out[prefix] ? `${out[prefix]}; ${obj}` : obj
    return out
  }
  if (Array.isArray(obj)) {
    const strs = obj.filter((x) => typeof x === 'string')
    const objs = obj.filter((x) => x && typeof x === 'object')
    if (strs.length) out[prefix] = strs.join('; ')
    obj.forEach((x, i) => {
      if (x && typeof x === 'object') flattenErrors(x, `${prefix}[${i}]`, out)
    })
    if (!strs.length && !objs.length) return out
    return out
  }
  if (typeof obj === 'object') {
    for (const [k, v] of Object.entries(obj)) flattenErrors(v, prefix ? `${prefix}.${k}` : k, out)
  }
  return out
}

/** The errors an API error carries: {top: [messages], fields: {"a.b": message}}. */
export function errorsOf(err) {
  const body = err && err.body
  const fields = {}
  const top = []
  if (body && typeof body === 'object') {
    if (body.fields && typeof body.fields === 'object') {
      Object.assign(fields, flattenErrors(body.fields))
    }
    if (Array.isArray(body.invalid_parameters)) {
      for (const p of body.invalid_parameters) {
        if (p && p.field) fields[p.field] = fields[p.field] ? `${fields[p.field]}; ${p.reason}` : p.reason || p.rule
        else if (p && p.reason) top.push(p.reason)
      }
    }
  }
  for (const k of Object.keys(fields)) {
    if (k === '@entity' || k.endsWith('.@entity')) {
      top.push(fields[k])
      delete fields[k]
    }
  }
  const msg = err ? err.message : null
  if (msg && !top.includes(msg)) top.unshift(msg)
  return { top, fields }
}

let formSeq = 0

/**
 * Props: fields (normalized), cp, initial (the entity, for edit), entity (its name), skip (names),
 * extra (leading plain string fields, e.g. a service's url), onSubmit(body) (async, throws
 * ApiError), onCancel, submitLabel, order (names first), open (record names expanded).
 */
export function SchemaForm(props) {
  const { fields, cp, initial, entity, onSubmit, onCancel, submitLabel, extra = [], testid = 'entity-form' } = props
  // Computed once: a form is remounted (by `key`) when its schema or entity changes.
  const skip = useMemo(() => new Set([...(props.skip || []), ...SKIP]), [])
  const visible = useMemo(() => {
    const vs = fields.filter(({ name, def }) => !skip.has(name) && !('eq' in def && def.eq === null))
    if (props.order) {
      const rank = (n) => {
        const i = props.order.indexOf(n)
        return i < 0 ? props.order.length : i
      }
      vs.sort((a, b) => rank(a.name) - rank(b.name))
    }
    return vs
  }, [])
  const extraFields = useMemo(
    () => extra.map((e) => ({ name: e.name, def: { type: 'string', ...e } })),
    [],
  )
  const all = useMemo(() => leaves([...extraFields, ...visible]), [])
  const idBase = useRef(`f${++formSeq}`).current

  const initialRaw = useMemo(() => {
    const r = {}
    for (const l of all) r[l.path.join('.')] = toRaw(l.kind, l.def, initial ? get(initial, l.path) : undefined)
    return r
  }, [])
  const [raw, setRaw] = useState(initialRaw)
  const [touched, setTouched] = useState({})
  const [errors, setErrors] = useState({ top: [], fields: {} })
  const [busy, setBusy] = useState(false)
  const formRef = useRef(null)
  useEffect(() => {
    const el = formRef.current && formRef.current.querySelector('.field-error, .alert')
    if (el && el.scrollIntoView) el.scrollIntoView({ block: 'center' })
  }, [errors])

  // Foreign keys: the referenced collections, loaded once.
  const [options, setOptions] = useState({})
  useEffect(() => {
    const refs = [...new Set(all.filter((l) => l.kind === 'foreign').map((l) => l.def.reference))]
    let live = true
    for (const ref of refs) {
      listAll(cp, ref)
        .then((items) => live && setOptions((o) => ({ ...o, [ref]: items })))
        .catch(() => live && setOptions((o) => ({ ...o, [ref]: [] })))
    }
    return () => {
      live = false
    }
  }, [])

  const change = (key, v) => {
    setRaw((r) => ({ ...r, [key]: v }))
    setTouched((t) => ({ ...t, [key]: true }))
  }

  const submit = async (e) => {
    e.preventDefault()
    const body = {}
    const local = {}
    for (const l of all) {
      const key = l.path.join('.')
      const r = raw[key]
      let include
      if (initial) include = JSON.stringify(r) !== JSON.stringify(initialRaw[key])
      else include = isSet(l.kind, r, touched[key])
      if (!include) continue
      try {
        set(body, l.path, fromRaw(l.kind, l.def, r, l.name))
      } catch (err) {
        local[key] = err.message
      }
    }
    if (Object.keys(local).length) {
      setErrors({ top: ['Some fields need fixing.'], fields: local })
      return
    }
    setBusy(true)
    setErrors({ top: [], fields: {} })
    try {
      await onSubmit(body)
    } catch (err) {
      const { top, fields: fe } = errorsOf(err)
      // Messages for fields this form does not show go on top, named.
      const shown = new Set(all.map((l) => l.path.join('.')))
      const kept = {}
      for (const [k, v] of Object.entries(fe)) {
        const base = k.replace(/\[\d+\].*$/, '')
        if (shown.has(base)) kept[base] = kept[base] ? `${kept[base]}; ${v}` : v
        else top.push(`${k}: ${v}`)
      }
      setErrors({ top, fields: kept })
      setBusy(false)
      return
    }
    setBusy(false)
  }

  const ctx = { raw, change, errors: errors.fields, idBase, options, entity, edit: !!initial, open: props.open || [] }
  return (
    <form class="form schema-form" onSubmit={submit} data-testid={testid} noValidate ref={formRef}>
      {errors.top.length ? (
        <Alert testid="form-error">
          {errors.top.map((m, i) => (
            <div key={i}>{m}</div>
          ))}
        </Alert>
      ) : null}
      {props.children}
      <div class="form-grid">
        {[...extraFields, ...visible].map((f) => (
          <FieldView key={f.name} field={f} path={[f.name]} ctx={ctx} />
        ))}
      </div>
      <div class="form-actions">
        {onCancel ? (
          <button type="button" class="btn" onClick={onCancel}>
            Cancel
          </button>
        ) : null}
        <button type="submit" class="btn btn-primary" disabled={busy} data-testid="form-submit">
          {busy ? 'Saving…' : submitLabel || (initial ? 'Save' : 'Create')}
        </button>
      </div>
    </form>
  )
}

function displayName(item) {
  return item.name || item.username || item.custom_id || item.target || item.id
}

function FieldView({ field, path, ctx }) {
  const { name, def } = field
  const kind = kindOf(def)
  const key = path.join('.')
  const id = `${ctx.idBase}-${key.replace(/[^a-zA-Z0-9_-]/g, '_')}`
  const label = def.label || humanize(name)
  // Required with a default (Kong fills it) needs nothing from the user.
  const mustGive = def.required && def.default == null && kind !== 'boolean'
  const err = ctx.errors[key]
  const hintId = `${id}-hint`
  const errId = `${id}-err`
  const described = [def.hint || def.description ? hintId : null, err ? errId : null].filter(Boolean).join(' ') || undefined

  if (kind === 'record') {
    const sub = normalizeFields(def.fields)
    const open = path.length === 1 && (ctx.open.includes(name) || !!def.required)
    return (
      <details class="fieldset field-wide" open={open || undefined} data-testid={`fieldset-${key}`}>
        <summary>{label}</summary>
        <div class="fieldset-body form-grid">
          {sub
            .filter((f) => !('eq' in f.def && f.def.eq === null))
            .map((f) => (
              <FieldView key={f.name} field={f} path={[...path, f.name]} ctx={ctx} />
            ))}
        </div>
      </details>
    )
  }

  const value = ctx.raw[key]
  const common = {
    id,
    'data-testid': `field-${key}`,
    'aria-invalid': err ? 'true' : undefined,
    'aria-describedby': described,
    'aria-required': mustGive ? 'true' : undefined,
  }
  const placeholder = def.default != null && typeof def.default !== 'object' ? `Default: ${def.default}` : undefined
  let input
  let wide = false
  switch (kind) {
    case 'boolean':
      return (
        <div class={`field field-check${err ? ' has-error' : ''}`}>
          <label for={id} class="check">
            <input
              type="checkbox"
              {...common}
              checked={!!value}
              onChange={(e) => ctx.change(key, e.currentTarget.checked)}
            />
            {label}
          </label>
          <FieldHelp def={def} hintId={hintId} err={err} errId={errId} />
        </div>
      )
    case 'multi': {
      const el = def.elements || {}
      const selected = new Set(value || [])
      return (
        <fieldset class={`field field-multi field-wide${err ? ' has-error' : ''}`} data-testid={`field-${key}`} aria-describedby={described}>
          <legend>
            {label}
            {mustGive && !(def.default && def.default.length) ? <span class="req"> *</span> : null}
          </legend>
          <div class="checks">
            {el.one_of.map((opt) => {
              const oid = `${id}-${String(opt).replace(/[^a-zA-Z0-9_-]/g, '_')}`
              return (
                <label key={opt} for={oid} class="check">
                  <input
                    type="checkbox"
                    id={oid}
                    checked={selected.has(String(opt))}
                    onChange={(e) => {
                      const s = new Set(selected)
                      if (e.currentTarget.checked) s.add(String(opt))
                      else s.delete(String(opt))
                      ctx.change(key, el.one_of.map(String).filter((o) => s.has(o)))
                    }}
                  />
                  {String(opt)}
                </label>
              )
            })}
          </div>
          <FieldHelp def={def} hintId={hintId} err={err} errId={errId} />
        </fieldset>
      )
    }
    case 'select':
      input = (
        <select {...common} value={value} onChange={(e) => ctx.change(key, e.currentTarget.value)}>
          <option value="">{def.default != null ? `Default (${def.default})` : '—'}</option>
          {def.one_of.map((o) => (
            <option key={o} value={String(o)}>
              {String(o)}
            </option>
          ))}
        </select>
      )
      break
    case 'foreign': {
      const items = ctx.options[def.reference]
      input = (
        <select {...common} value={value} onChange={(e) => ctx.change(key, e.currentTarget.value)}>
          <option value="">{items ? '— none —' : 'Loading…'}</option>
          {(items || []).map((it) => (
            <option key={it.id} value={it.id}>
              {displayName(it)}
            </option>
          ))}
          {value && items && !items.some((it) => it.id === value) ? <option value={value}>{value}</option> : null}
        </select>
      )
      break
    }
    case 'number':
      input = (
        <input
          type="text"
          inputMode="decimal"
          {...common}
          value={value}
          placeholder={placeholder}
          onInput={(e) => ctx.change(key, e.currentTarget.value)}
        />
      )
      break
    case 'list':
    case 'map':
    case 'maplist':
    case 'json': {
      const ph =
        kind === 'list'
          ? NO_COMMA_SPLIT.has(name)
            ? 'One per line'
            : 'One per line, or comma-separated'
          : kind === 'json'
            ? 'JSON'
            : kind === 'maplist'
              ? 'key=value1,value2 (one per line)'
              : 'key=value (one per line)'
      const dflt = def.default != null ? ` — default: ${JSON.stringify(def.default)}` : ''
      wide = true
      input = (
        <textarea
          {...common}
          rows={kind === 'json' ? 4 : 2}
          class={kind === 'json' ? 'mono' : undefined}
          value={value}
          placeholder={ph + dflt}
          onInput={(e) => ctx.change(key, e.currentTarget.value)}
        />
      )
      break
    }
    default: {
      const multi = MULTILINE.has(name) && (ctx.entity === 'certificates' || name !== 'key')
      wide = multi
      input = multi ? (
        <textarea
          {...common}
          rows={5}
          class="mono"
          value={value}
          placeholder={placeholder}
          onInput={(e) => ctx.change(key, e.currentTarget.value)}
        />
      ) : (
        <input
          type="text"
          autocomplete="off"
          spellcheck={false}
          {...common}
          value={value}
          placeholder={placeholder || def.placeholder}
          onInput={(e) => ctx.change(key, e.currentTarget.value)}
        />
      )
    }
  }
  return (
    <div class={`field${wide ? ' field-wide' : ''}${err ? ' has-error' : ''}`}>
      <label for={id}>
        {label}
        {mustGive ? <span class="req" aria-hidden="true"> *</span> : null}
      </label>
      {input}
      <FieldHelp def={def} hintId={hintId} err={err} errId={errId} />
    </div>
  )
}

function FieldHelp({ def, hintId, err, errId }) {
  return (
    <>
      {def.hint || def.description ? (
        <div class="hint" id={hintId}>
          {def.hint || def.description}
        </div>
      ) : null}
      {err ? (
        <div class="field-error" id={errId} data-testid="field-error">
          {err}
        </div>
      ) : null}
    </>
  )
}
