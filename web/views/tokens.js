// Personal API tokens: create (name, scope, workspace, expiry; shown once with a copy button),
// list and revoke your own; admins also see and revoke everyone's.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, post } from '../api.js';
import { html, Confirm, ErrorBox, Loading, useAction, when } from '../ui.js';
import { Copyable } from './agent-dialog.js';

const DEFAULT_DAYS = 30; // api/tokens.py: DEFAULT_LIFETIME

function CreateToken({ workspaces, onCreated }) {
  const [name, setName] = useState('');
  const [scope, setScope] = useState('full');
  const [workspaceId, setWorkspaceId] = useState('');
  const [days, setDays] = useState(String(DEFAULT_DAYS));
  const { busy, error, run } = useAction();
  const submit = (event) => {
    event.preventDefault();
    run(async () => {
      const made = await post('/api/tokens', {
        name: name.trim(), scope, workspaceId: workspaceId || null, expiresInDays: Number(days),
      });
      setName('');
      await onCreated(made);
    });
  };
  return html`<section class="panel" aria-labelledby="new-token-title">
    <h2 id="new-token-title">New token</h2>
    <form onSubmit=${submit} aria-label="New token">
      <label for="token-name">Name</label>
      <input id="token-name" required maxlength="100" value=${name} placeholder="e.g. CI on main"
        onInput=${(e) => setName(e.currentTarget.value)} />
      <label for="token-scope">Scope</label>
      <select id="token-scope" value=${scope} onChange=${(e) => setScope(e.currentTarget.value)}>
        <option value="full">Full: everything you may do</option>
        <option value="read">Read: look only (GET)</option>
      </select>
      <label for="token-workspace">Workspace</label>
      <select id="token-workspace" value=${workspaceId} onChange=${(e) => setWorkspaceId(e.currentTarget.value)}>
        <option value="">All your workspaces</option>
        ${workspaces.map((ws) => html`<option value=${ws.id}>Only ${ws.name}</option>`)}
      </select>
      <label for="token-days">Expires after (days)</label>
      <input id="token-days" type="number" min="1" required value=${days}
        onInput=${(e) => setDays(e.currentTarget.value)} />
      <${ErrorBox} error=${error} />
      <button type="submit" class="primary" disabled=${busy || !name.trim() || !(Number(days) >= 1)}>
        ${busy ? 'Creating…' : 'Create token'}</button>
    </form>
  </section>`;
}

function Created({ made, onDone }) {
  return html`<section class="panel token-created" aria-labelledby="created-title" role="status">
    <h2 id="created-title">Token "${made.name}" created</h2>
    <p><strong>Copy it now: it is shown only this once.</strong> Send it as
      <code>Authorization: Bearer …</code>, or run <code>agentserver login --server ${location.origin} --token …</code>.</p>
    <${Copyable} id="new-token" code="token" text=${made.token} label="Copy token" />
    <button type="button" onClick=${onDone}>Done</button>
  </section>`;
}

function TokenTable({ label, tokens, workspaces, showUser, onRevoke, busy }) {
  const names = Object.fromEntries(workspaces.map((ws) => [ws.id, ws.name]));
  if (tokens.length === 0) return html`<p class="muted">No tokens yet.</p>`;
  return html`<div class="scroll"><table class="table" aria-label=${label}>
    <thead><tr>${showUser && html`<th scope="col">User</th>`}<th scope="col">Name</th><th scope="col">Scope</th>
      <th scope="col">Workspace</th><th scope="col">Created</th><th scope="col">Last used</th>
      <th scope="col">Expires</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody>${tokens.map((t) => html`<tr key=${t.id} data-token=${t.name} data-state=${t.state}>
      ${showUser && html`<td>${t.username}</td>`}
      <th scope="row">${t.name}</th>
      <td>${t.scope}</td>
      <td>${t.workspaceId ? (names[t.workspaceId] || t.workspaceId) : 'all'}</td>
      <td>${when(t.createdAt)}</td>
      <td>${t.lastUsedAt ? when(t.lastUsedAt) : 'never'}</td>
      <td>${t.state === 'active' ? when(t.expiresAt) : html`<span class="badge">${t.state}</span>`}</td>
      <td>${t.state === 'active' && html`<button type="button" class="danger" disabled=${busy}
        aria-label=${`Revoke ${t.name}`} onClick=${() => onRevoke(t)}>Revoke</button>`}</td>
    </tr>`)}</tbody>
  </table></div>`;
}

export function Tokens({ me, workspaces }) {
  const [mine, setMine] = useState(null);
  const [all, setAll] = useState(null);
  const [made, setMade] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const [error, setError] = useState(null);
  const admin = me.role === 'admin';
  const load = async () => {
    try {
      setMine(await get('/api/tokens'));
      if (admin) setAll(await get('/api/admin/tokens'));
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => { load(); }, []);
  const revoke = async () => {
    const t = revoking.token;
    await del(revoking.admin ? path`/api/admin/tokens/${t.id}` : path`/api/tokens/${t.id}`);
    await load();
  };
  return html`<section aria-labelledby="tokens-title">
    <h1 id="tokens-title">API tokens</h1>
    <p class="muted">Tokens let scripts and the <code>agentserver</code> command line use the API as
      you, never more than their scope allows. They do not work on sandbox pages, and cannot change
      your password, sessions or tokens.</p>
    ${made ? html`<${Created} made=${made} onDone=${() => setMade(null)} />`
      : html`<${CreateToken} workspaces=${workspaces} onCreated=${async (m) => { setMade(m); await load(); }} />`}
    <section class="panel" aria-labelledby="my-tokens-title">
      <h2 id="my-tokens-title">Your tokens</h2>
      <${ErrorBox} error=${error} />
      ${mine ? html`<${TokenTable} label="Your tokens" tokens=${mine} workspaces=${workspaces}
        onRevoke=${(token) => setRevoking({ token, admin: false })} />` : !error && html`<${Loading} what="Loading tokens" />`}
    </section>
    ${admin && all && html`<section class="panel" aria-labelledby="all-tokens-title">
      <h2 id="all-tokens-title">Everyone's tokens</h2>
      <${TokenTable} label="Everyone's tokens" tokens=${all} workspaces=${workspaces} showUser=${true}
        onRevoke=${(token) => setRevoking({ token, admin: true })} />
    </section>`}
    ${revoking && html`<${Confirm} title="Revoke token"
      message=${`"${revoking.token.name}" stops working at once, wherever it is used.`}
      action="Revoke" onConfirm=${revoke} onClose=${() => setRevoking(null)} />`}
  </section>`;
}
