import { useEffect, useRef, useState, useCallback } from 'preact/hooks'

/** "Just now", "1 minute ago", "3 hours ago", "2 days ago" from a Unix time in seconds. */
export function relativeTime(unixSeconds, nowMs = Date.now()) {
  if (unixSeconds == null) return '—'
  const s = Math.floor(nowMs / 1000 - unixSeconds)
  if (s < 60) return 'Just now'
  const units = [
    [60 * 60 * 24 * 365, 'year'],
    [60 * 60 * 24 * 30, 'month'],
    [60 * 60 * 24, 'day'],
    [60 * 60, 'hour'],
    [60, 'minute'],
  ]
  for (const [n, name] of units) {
    if (s >= n) {
      const v = Math.floor(s / n)
      return `${v} ${name}${v === 1 ? '' : 's'} ago`
    }
  }
  return 'Just now'
}

const dateFmt = new Intl.DateTimeFormat(undefined, {
  year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit',
})
const dayFmt = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' })

/** A date from Unix seconds (Kong's created_at) or milliseconds, or an ISO string. */
export function formatDate(v, { day = false } = {}) {
  if (v == null || v === '') return '—'
  let d
  if (typeof v === 'number') d = new Date(v < 1e12 ? v * 1000 : v)
  else d = new Date(v)
  if (Number.isNaN(d.getTime())) return String(v)
  return (day ? dayFmt : dateFmt).format(d)
}

export const formatNumber = (n) => (n == null ? '—' : Number(n).toLocaleString('en-US'))

/** "a:b, c:d" or one per line → {a: "b", c: "d"}; throws with a message on a bad entry. */
export function parseLabels(text, sep = ':') {
  const out = {}
  for (const part of String(text || '').split(/[\n,]/)) {
    const t = part.trim()
    if (!t) continue
    const i = t.indexOf(sep)
    if (i <= 0) throw new Error(`"${t}" is not key${sep}value`)
    out[t.slice(0, i).trim()] = t.slice(i + 1).trim()
  }
  return out
}

export const labelsText = (labels) =>
  Object.entries(labels || {}).map(([k, v]) => `${k}:${v}`).join(', ')

export function download(name, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }))
  const a = document.createElement('a')
  a.href = url
  a.download = name
  document.body.appendChild(a)
  a.click()
  a.remove()
  setTimeout(() => URL.revokeObjectURL(url), 10000)
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text)
    return true
  } catch {
    // No clipboard permission (or not a secure context): select and copy.
    const ta = document.createElement('textarea')
    ta.value = text
    ta.setAttribute('readonly', '')
    ta.className = 'offscreen'
    document.body.appendChild(ta)
    ta.select()
    let ok = false
    try {
      ok = document.execCommand('copy')
    } catch {
      ok = false
    }
    ta.remove()
    return ok
  }
}

export const shortId = (id) => (id ? String(id).slice(0, 8) : '—')

/**
 * Runs `fn` now and again `ms` after each run ends (never two at once), only while the page is
 * visible; a page that becomes visible again runs at once. `deps` restart it. With
 * `immediate: false` the first run waits `ms` too.
 */
export function usePoll(fn, ms, deps, { immediate = true } = {}) {
  const ref = useRef(fn)
  ref.current = fn
  useEffect(() => {
    let timer = null
    let inflight = false
    let stopped = false
    const run = async () => {
      if (timer) clearTimeout(timer)
      timer = null
      if (stopped || inflight) return
      if (document.visibilityState === 'hidden') return
      inflight = true
      try {
        await ref.current()
      } catch {
        // The page shows its own errors.
      } finally {
        inflight = false
      }
      if (!stopped) timer = setTimeout(run, ms)
    }
    const onVisible = () => {
      if (document.visibilityState === 'visible' && !inflight) run()
    }
    document.addEventListener('visibilitychange', onVisible)
    if (immediate) run()
    else timer = setTimeout(run, ms)
    return () => {
      stopped = true
      if (timer) clearTimeout(timer)
      document.removeEventListener('visibilitychange', onVisible)
    }
  }, deps)
}

/** {data, error, loading, reload} of an async loader, rerun when `deps` change. */
export function useAsync(fn, deps) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true })
  const seq = useRef(0)
  const reload = useCallback(async () => {
    const mine = ++seq.current
    setState((s) => ({ ...s, loading: true }))
    try {
      const data = await fn()
      if (mine === seq.current) setState({ data, error: null, loading: false })
    } catch (error) {
      if (mine === seq.current) setState((s) => ({ data: s.data, error, loading: false }))
    }
  }, deps)
  useEffect(() => {
    reload()
    return () => {
      seq.current++
    }
  }, [reload])
  return { ...state, reload }
}

const WORDS = {
  id: 'ID', ids: 'IDs', url: 'URL', urls: 'URLs', uri: 'URI', uris: 'URIs', ttl: 'TTL', tls: 'TLS', sni: 'SNI',
  snis: 'SNIs', ip: 'IP', ips: 'IPs', http: 'HTTP', https: 'HTTPS', grpc: 'gRPC', jwt: 'JWT', hmac: 'HMAC',
  acl: 'ACL', acls: 'ACLs', ca: 'CA', dns: 'DNS', ssl: 'SSL', api: 'API', json: 'JSON', cors: 'CORS',
  tcp: 'TCP', udp: 'UDP', pkce: 'PKCE', oauth2: 'OAuth 2.0', rsa: 'RSA', redis: 'Redis', uuid: 'UUID',
}

/** `hash_on_cookie_path` → "Hash on cookie path"; `tls_verify` → "TLS verify". */
export function humanize(name) {
  const words = String(name).split(/[_\s]+/).filter(Boolean).map((w) => WORDS[w.toLowerCase()] || w.toLowerCase())
  const s = words.join(' ')
  return s.charAt(0).toUpperCase() + s.slice(1)
}
