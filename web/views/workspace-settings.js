// A workspace's settings: its own idle timeout (owners and maintainers change it).

import { useState } from '../vendor/hooks.module.js';
import { patch, path } from '../api.js';
import { can } from '../roles.js';
import { html, ErrorBox, useAction } from '../ui.js';
import { durationWords } from './sandbox-detail.js';

/** "30 minutes (the server's default)", "2 hours", or "never" for a timeout of 0. */
export function idleText(workspace) {
  const own = workspace.idleTimeoutSeconds;
  if (own === null || own === undefined) {
    const fallback = workspace.defaultIdleTimeoutSeconds;
    return fallback > 0 ? `${durationWords(fallback)} (the server's default)` : 'never (the server pauses no sandbox)';
  }
  return own === 0 ? 'never' : durationWords(own);
}

function IdleTimeout({ workspace, reload }) {
  const own = workspace.idleTimeoutSeconds;
  const [minutes, setMinutes] = useState(own === null || own === undefined ? '' : String(own / 60));
  const { busy, error, run } = useAction();
  const max = workspace.maxIdleTimeoutSeconds;
  const save = (seconds) => run(async () => {
    await patch(path`/api/workspaces/${workspace.id}`, { idleTimeoutSeconds: seconds });
    await reload();
  });
  const submit = (event) => {
    event.preventDefault();
    save(Math.round(Number(minutes) * 60));
  };
  const editable = can(workspace.role, 'rename_workspace');
  return html`<section aria-labelledby="idle-title">
    <h2 id="idle-title">Idle timeout</h2>
    <p>Sandboxes of this workspace pause after <strong data-idle-timeout>${idleText(workspace)}</strong> without
      activity, and wake on the next request.</p>
    ${editable && html`<form class="inline-form" onSubmit=${submit} aria-label="Idle timeout">
      <div class="field">
        <label for="idle-minutes">Minutes without activity</label>
        <input id="idle-minutes" type="number" min=${max > 0 ? 1 : 0} step="any" required value=${minutes}
          aria-describedby="idle-limit" onInput=${(e) => setMinutes(e.currentTarget.value)} />
        <span id="idle-limit" class="small muted">${max > 0 ? `at most ${durationWords(max)}` : '0 never pauses'}</span>
      </div>
      <button type="submit" class="primary" disabled=${busy || minutes === ''}>Save</button>
      <button type="button" disabled=${busy || own === null || own === undefined}
        onClick=${() => { setMinutes(''); save(null); }}>Use the server's default</button>
      <${ErrorBox} error=${error} />
    </form>`}
  </section>`;
}

export function WorkspaceSettings({ workspace, reload }) {
  return html`<section aria-labelledby="settings-title">
    <h1 id="settings-title">Settings</h1>
    <${IdleTimeout} workspace=${workspace} reload=${reload} />
  </section>`;
}
