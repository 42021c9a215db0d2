// The console's one way to the server: same-origin fetch, JSON both ways, the session's CSRF
// token on every request that changes something, and one place that reacts to 401 (back to
// the login page). Errors are thrown as ApiError, never logged: the pages show them.

let csrfToken = null
let onUnauthorized = () => {}

export function setCsrf(token) {
  csrfToken = token
}

export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn
}

export class ApiError extends Error {
  constructor(status, body) {
    super(messageOf(status, body))
    this.status = status
    this.body = body
  }
}

/** The best human message a response body gives. */
export function messageOf(status, body) {
  if (body && typeof body === 'object') {
    if (typeof body.detail === 'string' && body.detail) return body.detail
    if (typeof body.message === 'string' && body.message) return body.message
    if (typeof body.title === 'string' && body.title) return body.title
  }
  if (typeof body === 'string' && body && body.length < 300 && !body.startsWith('<')) return body
  if (status === 0) return 'The server could not be reached'
  return `The server answered ${status}`
}

/**
 * `api(method, path, body?, opts?)`: the parsed JSON answer (null for 204).
 * opts.quiet401: a 401 is only thrown, not treated as a lost session (login and its check).
 */
export async function api(method, path, body, opts = {}) {
  const headers = { Accept: 'application/json' }
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken || ''
  if (body !== undefined) headers['Content-Type'] = 'application/json'
  let res
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      signal: opts.signal,
    })
  } catch (e) {
    if (e && e.name === 'AbortError') throw e
    throw new ApiError(0, null)
  }
  if (res.status === 204) return null
  const text = await res.text()
  let data = null
  if (text) {
    try {
      data = JSON.parse(text)
    } catch {
      data = text
    }
  }
  if (!res.ok) {
    if (res.status === 401 && !opts.quiet401) onUnauthorized()
    throw new ApiError(res.status, data)
  }
  return data
}

export const get = (path, opts) => api('GET', path, undefined, opts)
export const post = (path, body, opts) => api('POST', path, body, opts)
export const patch = (path, body, opts) => api('PATCH', path, body, opts)
export const del = (path, opts) => api('DELETE', path, undefined, opts)

/** `/api/v2/control-planes/{cp}/core-entities/{rest}` */
export const core = (cp, rest) => `/api/v2/control-planes/${encodeURIComponent(cp)}/core-entities/${rest}`

/** Every item of a Kong list (follows `next`, 1,000 a page). */
export async function listAll(cp, collection, opts) {
  const out = []
  let url = core(cp, collection) + (collection.includes('?') ? '&' : '?') + 'size=1000'
  for (let i = 0; i < 100 && url; i++) {
    const page = await get(url, opts)
    if (page && Array.isArray(page.data)) out.push(...page.data)
    const next = page && page.next
    if (!next) break
    // `next` is Kong's path (relative to the Admin API); keep the offset, ask again here.
    const offset = page.offset || new URLSearchParams(String(next).split('?')[1] || '').get('offset')
    if (!offset) break
    const base = core(cp, collection)
    url = `${base}${base.includes('?') ? '&' : '?'}size=1000&offset=${encodeURIComponent(offset)}`
  }
  return out
}

/** Schemas are fixed for a server's life: fetched once per control plane and path. */
const schemaCache = new Map()
export function schema(cp, path) {
  const key = `${cp} ${path}`
  if (!schemaCache.has(key)) {
    const p = get(core(cp, `schemas/${path}`))
    p.catch(() => schemaCache.delete(key))
    schemaCache.set(key, p)
  }
  return schemaCache.get(key)
}
