import { useState } from 'preact/hooks'
import { get, post } from '../api.js'
import { useCp } from '../context.js'
import { Link } from '../router.js'
import { Alert, Loading, PageHeader, toast } from '../ui.jsx'
import { copyText, download, parseLabels, useAsync } from '../util.js'

const PLATFORMS = [
  ['docker', 'Docker'],
  ['linux', 'Linux binary'],
  ['kubernetes', 'Kubernetes'],
]

export function Wizard() {
  const cp = useCp()
  const versions = useAsync(() => get(`/api/console/control-planes/${encodeURIComponent(cp.id)}/versions`), [cp.id])
  const [version, setVersion] = useState('')
  const [platform, setPlatform] = useState('docker')
  const [labels, setLabels] = useState('')
  const [labelsError, setLabelsError] = useState(null)
  const [error, setError] = useState(null)
  const [busy, setBusy] = useState(false)
  const [result, setResult] = useState(null)

  if (!cp.role) return <Loading />
  if (!cp.canWrite) {
    return (
      <div class="page">
        <PageHeader title="New Data Plane Node" />
        <Alert kind="info">Adding a node needs the admin role on this control plane.</Alert>
      </div>
    )
  }

  const list = (versions.data && versions.data.versions) || []
  const chosen = version || (versions.data && (versions.data.control_plane_version || list[0])) || ''

  const generate = async (e) => {
    e.preventDefault()
    let parsed
    try {
      parsed = parseLabels(labels)
      setLabelsError(null)
    } catch (err) {
      setLabelsError(err.message)
      return
    }
    setBusy(true)
    setError(null)
    try {
      const r = await post(`/api/console/control-planes/${encodeURIComponent(cp.id)}/data-plane-certificates`, {
        version: chosen,
        platform,
        labels: parsed,
      })
      setResult({ ...r, platform, version: chosen })
    } catch (err) {
      setError(err.message)
    }
    setBusy(false)
  }

  return (
    <div class="page">
      <PageHeader title="New Data Plane Node" subtitle="Issue a certificate this control plane pins, then run the node with it.">
        <Link href={`${cp.base}/nodes`} class="btn" data-testid="back-to-nodes">
          Back to nodes
        </Link>
      </PageHeader>
      <ol class="steps">
        <li class={result ? 'step-done' : 'step-current'}>1. Choose version and platform</li>
        <li class={result ? 'step-current' : ''}>2. Run the node</li>
      </ol>
      {!result ? (
        <form class="form panel narrow" onSubmit={generate} data-testid="wizard-form">
          {versions.error ? <Alert>{versions.error.message}</Alert> : null}
          {!versions.data && versions.loading ? (
            <Loading />
          ) : (
            <div class="field">
              <label for="node-version">Gantry version</label>
              <select id="node-version" data-testid="node-version" value={chosen} onChange={(e) => setVersion(e.currentTarget.value)}>
                {list.map((v) => (
                  <option key={v} value={v}>
                    {v}
                    {versions.data && v === versions.data.control_plane_version ? ' (this control plane)' : ''}
                  </option>
                ))}
              </select>
            </div>
          )}
          <fieldset class="field">
            <legend>Platform</legend>
            <div class="segmented" role="radiogroup">
              {PLATFORMS.map(([v, l]) => (
                <label key={v} class={`segment${platform === v ? ' segment-active' : ''}`} for={`platform-${v}`}>
                  <input
                    type="radio"
                    name="platform"
                    id={`platform-${v}`}
                    value={v}
                    data-testid={`platform-${v}`}
                    checked={platform === v}
                    onChange={() => setPlatform(v)}
                  />
                  {l}
                </label>
              ))}
            </div>
          </fieldset>
          <div class={`field${labelsError ? ' has-error' : ''}`}>
            <label for="node-labels">Labels</label>
            <input
              id="node-labels"
              data-testid="node-labels"
              autocomplete="off"
              placeholder="region:eu, tier:edge"
              value={labels}
              onInput={(e) => setLabels(e.currentTarget.value)}
              aria-invalid={labelsError ? 'true' : undefined}
            />
            <div class="hint">key:value pairs, comma-separated; the node reports them and the nodes page filters by them.</div>
            {labelsError ? <div class="field-error">{labelsError}</div> : null}
          </div>
          <Alert>{error}</Alert>
          <div class="form-actions">
            <button type="submit" class="btn btn-primary" disabled={busy || !chosen} data-testid="generate-cert">
              {busy ? 'Generating…' : 'Generate certificate'}
            </button>
          </div>
        </form>
      ) : (
        <Result cp={cp} r={result} onAgain={() => setResult(null)} />
      )}
    </div>
  )
}

function Result({ cp, r, onAgain }) {
  const [copied, setCopied] = useState(false)
  const copy = async () => {
    const ok = await copyText(r.command)
    setCopied(ok)
    toast(ok ? 'Copied to the clipboard.' : 'Could not copy: select the text and copy it.', ok ? 'info' : 'danger')
  }
  const fileName = r.file_name || (r.platform === 'kubernetes' ? 'values.yaml' : 'run-gantry.sh')
  return (
    <div class="panel" data-testid="wizard-result">
      <Alert kind="warning" testid="key-once">
        The private key is shown only once: it is not stored anywhere. Download it now; leaving this page loses it.
      </Alert>
      <p class="muted">
        Certificate <code data-testid="certificate-id">{r.certificate_id}</code> is pinned by this control plane. Version{' '}
        <strong>{r.version}</strong>, platform <strong>{PLATFORMS.find((p) => p[0] === r.platform)?.[1]}</strong>.
      </p>
      {r.install ? (
        <>
          <h2>Install</h2>
          <pre class="code" data-testid="node-install">{r.install}</pre>
        </>
      ) : null}
      <h2>{r.platform === 'kubernetes' ? fileName : 'Run the node'}</h2>
      <pre class="code" data-testid="node-command">{r.command}</pre>
      <div class="form-actions left">
        <button type="button" class="btn btn-primary" onClick={copy} data-testid="copy-command">
          {copied ? 'Copied' : 'Copy'}
        </button>
        <button type="button" class="btn" onClick={() => download(fileName, r.command)} data-testid="download-command">
          Download {fileName}
        </button>
        <button type="button" class="btn" onClick={() => download('cluster.crt', r.cert, 'application/x-pem-file')} data-testid="download-cert">
          Download certificate (cluster.crt)
        </button>
        <button type="button" class="btn" onClick={() => download('cluster.key', r.key, 'application/x-pem-file')} data-testid="download-key">
          Download key (cluster.key)
        </button>
      </div>
      <div class="form-actions left">
        <Link href={`${cp.base}/nodes`} class="btn" data-testid="wizard-done">
          Done: view nodes
        </Link>
        <button type="button" class="btn btn-ghost" onClick={onAgain}>
          Another node
        </button>
      </div>
    </div>
  )
}
