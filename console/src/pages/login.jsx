import { useState } from 'preact/hooks'
import { post } from '../api.js'
import { Alert } from '../ui.jsx'

export function Login({ onLogin }) {
  const [token, setToken] = useState('')
  const [error, setError] = useState(null)
  const [busy, setBusy] = useState(false)
  const submit = async (e) => {
    e.preventDefault()
    if (!token.trim()) {
      setError('Enter an access token.')
      return
    }
    setBusy(true)
    setError(null)
    try {
      const s = await post('/api/session', { token: token.trim() }, { quiet401: true })
      setToken('')
      onLogin(s)
    } catch (err) {
      setError(err.message)
      setBusy(false)
    }
  }
  return (
    <div class="login-page">
      <form class="login-card form" onSubmit={submit} data-testid="login-form">
        <div class="login-brand">
          <span class="brand-mark" aria-hidden="true">G</span>
          <span>Gantry</span>
        </div>
        <h1>Sign in to Gateway Manager</h1>
        <p class="muted">
          Use a personal (<code>kpat_…</code>) or system account (<code>spat_…</code>) access token, as made by{' '}
          <code>gantry tokens create</code>.
        </p>
        <div class={`field${error ? ' has-error' : ''}`}>
          <label for="login-token">Access token</label>
          <input
            id="login-token"
            type="password"
            autocomplete="off"
            spellcheck={false}
            data-testid="login-token"
            value={token}
            aria-invalid={error ? 'true' : undefined}
            aria-describedby={error ? 'login-error' : undefined}
            onInput={(e) => setToken(e.currentTarget.value)}
          />
        </div>
        {error ? (
          <div id="login-error">
            <Alert testid="login-error">{error}</Alert>
          </div>
        ) : null}
        <button type="submit" class="btn btn-primary btn-block" disabled={busy} data-testid="login-submit">
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </div>
  )
}
