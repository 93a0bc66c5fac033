// What a new sandbox is given (sandboxes/setup.py on the server): environment variables for
// its agent (values never shown again, only names) and a git repository cloned onto the
// workspace disk on its first start.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { get, path } from '../api.js';
import { html } from '../ui.js';

export const EMPTY_SETUP = { rows: [], gitUrl: '', gitRef: '' };

/** The create request's extra fields: `env` from the named rows, `gitUrl`/`gitRef` if given. */
export function setupBody(setup) {
  const body = {};
  const rows = setup.rows.filter((r) => r.name.trim());
  if (rows.length) body.env = Object.fromEntries(rows.map((r) => [r.name.trim(), r.value]));
  if (setup.gitUrl.trim()) {
    body.gitUrl = setup.gitUrl.trim();
    if (setup.gitRef.trim()) body.gitRef = setup.gitRef.trim();
  }
  return body;
}

/** The create form's "Advanced" disclosure: variable rows (add, remove) and the repository. */
export function AdvancedSetup({ setup, onChange }) {
  const change = (patch) => onChange({ ...setup, ...patch });
  const setRow = (i, patch) => change({ rows: setup.rows.map((r, j) => (j === i ? { ...r, ...patch } : r)) });
  return html`<details class="advanced">
    <summary>Advanced</summary>
    <fieldset>
      <legend>Environment variables</legend>
      <p class="hint">Given to the agent on every start. Values are stored encrypted and never shown again.</p>
      ${setup.rows.map((row, i) => html`<div class="env-row">
        <input aria-label=${`Variable ${i + 1} name`} placeholder="NAME" value=${row.name} autocomplete="off"
          onInput=${(e) => setRow(i, { name: e.currentTarget.value })} />
        <input aria-label=${`Variable ${i + 1} value`} placeholder="value" type="password" value=${row.value} autocomplete="off"
          onInput=${(e) => setRow(i, { value: e.currentTarget.value })} />
        <button type="button" aria-label=${`Remove variable ${i + 1}`}
          onClick=${() => change({ rows: setup.rows.filter((_, j) => j !== i) })}>Remove</button>
      </div>`)}
      <button type="button" onClick=${() => change({ rows: [...setup.rows, { name: '', value: '' }] })}>Add variable</button>
    </fieldset>
    <div class="field">
      <label for="sandbox-git-url">Git repository</label>
      <input id="sandbox-git-url" value=${setup.gitUrl} placeholder="https://github.com/owner/repo.git"
        onInput=${(e) => change({ gitUrl: e.currentTarget.value })} />
    </div>
    <div class="field">
      <label for="sandbox-git-ref">Branch or tag</label>
      <input id="sandbox-git-ref" value=${setup.gitRef} placeholder="default branch"
        onInput=${(e) => change({ gitRef: e.currentTarget.value })} />
    </div>
  </details>`;
}

/** The detail page's facts about the setup: variable names and the repository. */
export function SetupFacts({ sandbox }) {
  const [setup, setSetup] = useState(null);
  useEffect(() => {
    get(path`/api/sandboxes/${sandbox.id}/setup`).then(setSetup, () => setSetup(null));
  }, [sandbox.id]);
  if (!setup) return null;
  return html`
    <dt>Environment variables</dt>
    <dd data-env-names>${setup.envNames.length ? setup.envNames.map((n) => html`<code>${n}</code> `) : '—'}</dd>
    <dt>Git repository</dt>
    <dd class="break" data-git-url>${setup.gitUrl ? `${setup.gitUrl}${setup.gitRef ? ` (${setup.gitRef})` : ''}` : '—'}</dd>`;
}
