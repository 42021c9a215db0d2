import { useEffect, useState } from 'preact/hooks'
import { CpContext, SessionContext } from './context.js'
import { ApiError, del, get, setCsrf, setUnauthorizedHandler } from './api.js'
import { Link, match, navigate, useLocation } from './router.js'
import { Alert, Loading, Toasts } from './ui.jsx'
import { useAsync } from './util.js'
import { Login } from './pages/login.jsx'
import { ControlPlanes } from './pages/control-planes.jsx'
import { Overview } from './pages/overview.jsx'
import { Nodes } from './pages/nodes.jsx'
import { Wizard } from './pages/wizard.jsx'
import { Analytics } from './pages/analytics.jsx'
import {
  Certificates, CertificateDetail, ConsumerDetail, Consumers, Plugins, Routes, Services, UpstreamDetail, Upstreams,
} from './pages/entities.jsx'

const CP_PAGES = [
  ['', Overview],
  ['/nodes', Nodes],
  ['/nodes/new', Wizard],
  ['/analytics', Analytics],
  ['/services', Services],
  ['/routes', Routes],
  ['/consumers', Consumers],
  ['/consumers/:consumer', ConsumerDetail],
  ['/plugins', Plugins],
  ['/upstreams', Upstreams],
  ['/upstreams/:upstream', UpstreamDetail],
  ['/certificates', Certificates],
  ['/certificates/:certificate', CertificateDetail],
]

export function App() {
  const loc = useLocation()
  const [session, setSession] = useState(undefined) // undefined: checking; null: logged out

  useEffect(() => {
    setUnauthorizedHandler(() => {
      setCsrf(null)
      setSession(null)
    })
    get('/api/session', { quiet401: true })
      .then((s) => {
        if (!s || !s.authenticated) return setSession(null)
        setCsrf(s.csrf_token)
        setSession(s)
      })
      .catch(() => setSession(null))
  }, [])

  // Logged out: only the login page; logged in: never the login page.
  useEffect(() => {
    if (session === null && loc.path !== '/login') {
      const next = loc.path === '/' ? '' : `?next=${encodeURIComponent(loc.path + loc.search)}`
      navigate(`/login${next}`, { replace: true })
    } else if (session && loc.path === '/login') {
      const next = new URLSearchParams(loc.search).get('next')
      navigate(next && next.startsWith('/') && !next.startsWith('//') ? next : '/', { replace: true })
    }
  }, [session, loc.path])

  if (session === undefined) return <Loading />
  if (session === null || loc.path === '/login') {
    return (
      <>
        <Login
          onLogin={(s) => {
            setCsrf(s.csrf_token)
            setSession(s)
          }}
        />
        <Toasts />
      </>
    )
  }

  const logout = async () => {
    try {
      await del('/api/session')
    } catch {
      // Gone already: logged out either way.
    }
    setCsrf(null)
    // A deliberate logout starts afresh: no ?next= back to this page.
    navigate('/login', { replace: true })
    setSession(null)
  }

  let cpId = null
  let Page = null
  let params = {}
  const m = loc.path.match(/^\/control-planes\/([^/]+)(\/.*)?$/)
  if (m) {
    cpId = decodeURIComponent(m[1])
    const rest = (m[2] || '').replace(/\/+$/, '')
    for (const [pattern, C] of CP_PAGES) {
      const p = match(pattern || '/', rest || '/')
      if (p) {
        Page = C
        params = p
        break
      }
    }
  } else if (loc.path === '/' || loc.path === '') {
    Page = ControlPlanes
  }

  return (
    <SessionContext.Provider value={{ ...session, logout }}>
      <div class="shell">
        <header class="topbar">
          <Link href="/" class="brand" aria-label="Gantry home">
            <span class="brand-mark" aria-hidden="true">G</span> Gantry
          </Link>
          <span class="topbar-title">Gateway Manager</span>
          <span class="spacer" />
          {session.org_admin ? <span class="topbar-note">Organization admin</span> : null}
          <button type="button" class="btn btn-ghost" onClick={logout} data-testid="logout">
            Log out
          </button>
        </header>
        {cpId ? (
          <CpShell key={cpId} cpId={cpId} path={loc.path}>
            {Page ? <Page params={params} /> : <NotFound />}
          </CpShell>
        ) : (
          <div class="body">
            <nav class="sidenav" aria-label="Main">
              <Link href="/" class="nav-item nav-active">
                Control Planes
              </Link>
            </nav>
            <main class="main">{Page ? <Page params={params} /> : <NotFound />}</main>
          </div>
        )}
      </div>
      <Toasts />
    </SessionContext.Provider>
  )
}

function NotFound() {
  return (
    <div class="page">
      <h1>Not found</h1>
      <p>
        Nothing here. <Link href="/">Back to control planes</Link>
      </p>
    </div>
  )
}

const NAV = [
  ['', 'Overview'],
  ['/nodes', 'Data Plane Nodes'],
  ['/analytics', 'Analytics'],
  null,
  ['/services', 'Gateway Services'],
  ['/routes', 'Routes'],
  ['/consumers', 'Consumers'],
  ['/plugins', 'Plugins'],
  ['/upstreams', 'Upstreams'],
  ['/certificates', 'Certificates'],
]

function CpShell({ cpId, path, children }) {
  const info = useAsync(() => get(`/api/console/control-planes/${encodeURIComponent(cpId)}`), [cpId])
  const base = `/control-planes/${encodeURIComponent(cpId)}`
  const sub = path.slice(base.length).replace(/\/+$/, '')
  const cp = info.data && info.data.control_plane
  const active = (p) => (p === '' ? sub === '' : sub === p || sub.startsWith(`${p}/`))
  return (
    <div class="body">
      <nav class="sidenav" aria-label="Control plane">
        <Link href="/" class="nav-back">
          ‹ Control Planes
        </Link>
        <div class="nav-cp" title={cp ? cp.name : cpId} data-testid="nav-cp-name">
          {cp ? cp.name : '…'}
        </div>
        {NAV.map((n, i) =>
          n ? (
            <Link key={n[0]} href={base + n[0]} class={`nav-item${active(n[0]) ? ' nav-active' : ''}`} data-testid={`nav${n[0].replace('/', '-') || '-overview'}`}>
              {n[1]}
            </Link>
          ) : (
            <div key={`s${i}`} class="nav-section">
              Gateway
            </div>
          ),
        )}
      </nav>
      <main class="main" data-role={info.data ? info.data.role : 'unknown'}>
        {info.error && !info.data ? (
          <div class="page">
            <Alert>
              {info.error instanceof ApiError && info.error.status === 404
                ? 'This control plane does not exist, or this token has no role on it.'
                : info.error.message}
            </Alert>
            <Link href="/">Back to control planes</Link>
          </div>
        ) : (
          // The page loads its own data at once; what depends on the role (write buttons)
          // appears when the overview has answered.
          <CpContext.Provider
            value={{
              id: cpId,
              base,
              info: info.data || null,
              cp,
              role: info.data ? info.data.role : null,
              canWrite: !!info.data && info.data.role === 'admin',
              reload: info.reload,
            }}
          >
            {children}
          </CpContext.Provider>
        )}
      </main>
    </div>
  )
}
