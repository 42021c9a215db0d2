// History API routing: one signal of the current path, `navigate`, and `Link` for anchors
// that stay in the app (a modified click still opens a new tab as usual).
import { h } from 'preact'
import { useEffect, useState } from 'preact/hooks'

const listeners = new Set()

function current() {
  return { path: location.pathname, search: location.search }
}

export function navigate(to, { replace = false } = {}) {
  if (to === location.pathname + location.search) return
  if (replace) history.replaceState(null, '', to)
  else history.pushState(null, '', to)
  window.scrollTo(0, 0)
  emit()
}

function emit() {
  const loc = current()
  for (const l of listeners) l(loc)
}

window.addEventListener('popstate', emit)

export function useLocation() {
  const [loc, setLoc] = useState(current)
  useEffect(() => {
    listeners.add(setLoc)
    return () => listeners.delete(setLoc)
  }, [])
  return loc
}

export function Link({ href, onClick, children, ...rest }) {
  const click = (e) => {
    if (onClick) onClick(e)
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return
    e.preventDefault()
    navigate(href)
  }
  return h('a', { href, onClick: click, ...rest }, children)
}

/** Matches `path` against patterns like `/control-planes/:id/nodes`; the params or null. */
export function match(pattern, path) {
  const p = pattern.split('/')
  const s = path.replace(/\/+$/, '').split('/')
  if (path === '/' && pattern === '/') return {}
  if (p.length !== s.length) return null
  const params = {}
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(':')) {
      if (!s[i]) return null
      params[p[i].slice(1)] = decodeURIComponent(s[i])
    } else if (p[i] !== s[i]) return null
  }
  return params
}
