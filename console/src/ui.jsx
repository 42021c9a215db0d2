import { useEffect, useRef, useState } from 'preact/hooks'

export function Badge({ kind = 'neutral', children, title, testid }) {
  return (
    <span class={`badge badge-${kind}`} title={title} data-testid={testid}>
      {children}
    </span>
  )
}

export function Labels({ labels }) {
  const entries = Object.entries(labels || {})
  if (!entries.length) return <span class="muted">—</span>
  return (
    <span class="labels">
      {entries.map(([k, v]) => (
        <span class="label-chip" key={k}>
          {k}:{v}
        </span>
      ))}
    </span>
  )
}

export function Tags({ tags }) {
  if (!tags || !tags.length) return <span class="muted">—</span>
  return (
    <span class="labels">
      {tags.map((t) => (
        <span class="label-chip" key={t}>
          {t}
        </span>
      ))}
    </span>
  )
}

export function Alert({ kind = 'danger', children, testid }) {
  if (!children) return null
  return (
    <div class={`alert alert-${kind}`} role={kind === 'danger' ? 'alert' : 'status'} data-testid={testid}>
      {children}
    </div>
  )
}

export function PageHeader({ title, subtitle, children }) {
  return (
    <div class="page-header">
      <div>
        <h1>{title}</h1>
        {subtitle ? <p class="muted subtitle">{subtitle}</p> : null}
      </div>
      <div class="page-actions">{children}</div>
    </div>
  )
}

export function Loading({ text = 'Loading…' }) {
  return (
    <div class="loading" role="status">
      <span class="spinner" aria-hidden="true" /> {text}
    </div>
  )
}

export function Empty({ children }) {
  return <div class="empty">{children}</div>
}

/** A modal dialog: Escape and the backdrop close it; focus moves into it. */
export function Modal({ title, onClose, children, wide, testid }) {
  const ref = useRef(null)
  useEffect(() => {
    const prev = document.activeElement
    const el = ref.current
    const first = el && el.querySelector('input, select, textarea, button:not(.modal-close)')
    if (first) first.focus()
    const onKey = (e) => {
      if (e.key === 'Escape') onClose()
    }
    document.addEventListener('keydown', onKey)
    return () => {
      document.removeEventListener('keydown', onKey)
      if (prev && prev.focus) prev.focus()
    }
  }, [])
  return (
    <div class="modal-backdrop" onMouseDown={(e) => e.target === e.currentTarget && onClose()}>
      <div
        class={`modal${wide ? ' modal-wide' : ''}`}
        role="dialog"
        aria-modal="true"
        aria-label={title}
        ref={ref}
        data-testid={testid}
      >
        <div class="modal-head">
          <h2>{title}</h2>
          <button type="button" class="modal-close" aria-label="Close" onClick={onClose}>
            ×
          </button>
        </div>
        <div class="modal-body">{children}</div>
      </div>
    </div>
  )
}

/** Deleting asks for the entity's name (or a given word) typed in full. */
export function ConfirmDelete({ what, name, onConfirm, onClose, requireTyping = true }) {
  const [typed, setTyped] = useState('')
  const [error, setError] = useState(null)
  const [busy, setBusy] = useState(false)
  const ok = !requireTyping || typed === name
  const submit = async (e) => {
    e.preventDefault()
    if (!ok) return
    setBusy(true)
    setError(null)
    try {
      await onConfirm()
      onClose()
    } catch (err) {
      setError(err.message)
      setBusy(false)
    }
  }
  return (
    <Modal title={`Delete ${what}`} onClose={onClose} testid="confirm-delete">
      <form onSubmit={submit} class="form">
        <p>
          This deletes {what} <strong>{name}</strong>. It cannot be undone.
        </p>
        {requireTyping ? (
          <div class="field">
            <label for="confirm-name">
              Type <strong>{name}</strong> to confirm
            </label>
            <input
              id="confirm-name"
              data-testid="confirm-name"
              autocomplete="off"
              value={typed}
              onInput={(e) => setTyped(e.currentTarget.value)}
            />
          </div>
        ) : null}
        <Alert>{error}</Alert>
        <div class="form-actions">
          <button type="button" class="btn" onClick={onClose}>
            Cancel
          </button>
          <button type="submit" class="btn btn-danger" disabled={!ok || busy} data-testid="confirm-delete-submit">
            {busy ? 'Deleting…' : 'Delete'}
          </button>
        </div>
      </form>
    </Modal>
  )
}

// Toasts: short messages (a 403, a copy) shown at the bottom right.
const toastListeners = new Set()
let toastSeq = 0
export function toast(text, kind = 'info') {
  const t = { id: ++toastSeq, text, kind }
  for (const l of toastListeners) l(t)
}

export function Toasts() {
  const [items, setItems] = useState([])
  useEffect(() => {
    const add = (t) => {
      setItems((xs) => [...xs.slice(-3), t])
      setTimeout(() => setItems((xs) => xs.filter((x) => x.id !== t.id)), 6000)
    }
    toastListeners.add(add)
    return () => toastListeners.delete(add)
  }, [])
  return (
    <div class="toasts" aria-live="polite">
      {items.map((t) => (
        <div key={t.id} class={`toast toast-${t.kind}`} role={t.kind === 'danger' ? 'alert' : 'status'}>
          {t.text}
        </div>
      ))}
    </div>
  )
}

export function Tabs({ tabs, value, onChange, label }) {
  return (
    <div class="tabs" role="tablist" aria-label={label}>
      {tabs.map((t) => (
        <button
          key={t.value}
          type="button"
          role="tab"
          aria-selected={t.value === value}
          class={`tab${t.value === value ? ' tab-active' : ''}`}
          onClick={() => onChange(t.value)}
          data-testid={t.testid}
        >
          {t.label}
        </button>
      ))}
    </div>
  )
}

export function KeyValue({ items }) {
  return (
    <dl class="kv">
      {items.map(([k, v]) => [<dt key={`k${k}`}>{k}</dt>, <dd key={`v${k}`}>{v}</dd>])}
    </dl>
  )
}
