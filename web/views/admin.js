// Server administration (admin only): users and their server role, per-workspace LLM quotas.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, put } from '../api.js';
import { html, Empty, ErrorBox, Loading, useAction, when } from '../ui.js';

function useList(url) {
  const [rows, setRows] = useState(null);
  const [error, setError] = useState(null);
  const load = () => get(url).then((data) => { setRows(data); setError(null); }, setError);
  useEffect(() => { load(); }, [url]);
  return { rows, error, load };
}

function UserRole({ user, me, onChanged }) {
  const { busy, error, run } = useAction();
  const change = (event) => {
    const role = event.currentTarget.value;
    run(async () => {
      await put(path`/api/admin/users/${user.id}/role`, { role });
      await onChanged();
    });
  };
  const id = `server-role-${user.id}`;
  return html`<span class="field compact">
    <label for=${id} class="visually-hidden">Server role of ${user.username}</label>
    <select id=${id} value=${user.role} disabled=${busy || user.id === me.id} onChange=${change}>
      <option value="user">user</option>
      <option value="admin">admin</option>
    </select>
    <${ErrorBox} error=${error} />
  </span>`;
}

function Users({ me }) {
  const { rows, error, load } = useList('/api/admin/users');
  return html`<section class="panel" aria-labelledby="admin-users-title">
    <h2 id="admin-users-title">Users</h2>
    <${ErrorBox} error=${error} />
    ${!rows && !error && html`<${Loading} what="Loading users" />`}
    ${rows && html`<div class="scroll"><table class="table">
      <thead><tr><th scope="col">User</th><th scope="col">Email</th><th scope="col">Server role</th><th scope="col">Joined</th></tr></thead>
      <tbody>${rows.map((u) => html`<tr key=${u.id} data-user=${u.username}>
        <th scope="row">${u.username}${u.id === me.id && html` <span class="muted">(you)</span>`}</th>
        <td>${u.email || '—'}</td>
        <td><${UserRole} user=${u} me=${me} onChanged=${load} /></td>
        <td>${when(u.createdAt)}</td>
      </tr>`)}</tbody>
    </table></div>`}
  </section>`;
}

const plural = (n, one, many = `${one}s`) => `${n} ${n === 1 ? one : many}`;
const asLimit = (text) => (text.trim() === '' ? null : Number(text));

function QuotaEditor({ workspace, onClose }) {
  const [form, setForm] = useState(null);
  const { busy, error, setError, run } = useAction();
  const [saved, setSaved] = useState('');
  const url = path`/api/admin/workspaces/${workspace.id}/quota`;
  useEffect(() => {
    get(url).then(
      (q) => setForm({ rpm: q.rpm ?? '', tokensPerDay: q.tokensPerDay ?? '', defaults: q.default || {} }),
      setError,
    );
  }, [url]);
  const save = (event) => {
    event.preventDefault();
    run(async () => {
      await put(url, { rpm: asLimit(String(form.rpm)), tokensPerDay: asLimit(String(form.tokensPerDay)) });
      setSaved('Saved.');
    });
  };
  const reset = () => run(async () => {
    await del(url);
    setForm({ ...form, rpm: '', tokensPerDay: '' });
    setSaved('Back to the server defaults.');
  });
  const fallback = (name) => {
    const value = form.defaults && form.defaults[name];
    return value ? `default: ${value.toLocaleString()}` : 'default: unlimited';
  };
  const field = (name, label) => html`<div class="field">
    <label for=${`quota-${name}-${workspace.id}`}>${label}</label>
    <input id=${`quota-${name}-${workspace.id}`} type="number" min="0" step="1" inputmode="numeric" placeholder=${fallback(name)}
      value=${form[name]} onInput=${(e) => setForm({ ...form, [name]: e.currentTarget.value })} />
  </div>`;
  return html`<form class="inline-form quota" onSubmit=${save} aria-label=${`LLM quota of ${workspace.name}`}>
    ${!form && !error && html`<${Loading} what="Loading quota" />`}
    ${form && html`
      ${field('rpm', 'Requests per minute')}
      ${field('tokensPerDay', 'Tokens per day')}
      <button type="submit" class="primary" disabled=${busy}>Save quota</button>
      <button type="button" disabled=${busy} onClick=${reset}>Use defaults</button>`}
    <button type="button" onClick=${onClose}>Close</button>
    <p class="muted small" role="status">${saved}</p>
    <${ErrorBox} error=${error} />
  </form>`;
}

function Workspaces() {
  const { rows, error } = useList('/api/admin/workspaces');
  const [open, setOpen] = useState(null);
  return html`<section class="panel" aria-labelledby="admin-ws-title">
    <h2 id="admin-ws-title">Workspaces and LLM quotas</h2>
    <p class="muted small">Empty limits use the server-wide defaults; 0 means unlimited.</p>
    <${ErrorBox} error=${error} />
    ${!rows && !error && html`<${Loading} what="Loading workspaces" />`}
    ${rows && rows.length === 0 && html`<${Empty}>No workspaces yet.<//>`}
    ${rows && rows.length > 0 && html`<ul class="list">${rows.map((ws) => html`<li class="row" key=${ws.id} data-workspace=${ws.name}>
      <div class="row-main">
        <span class="name">${ws.name}</span>
        <span class="muted small">${plural(ws.memberCount, 'member')} · ${plural(ws.sandboxCount, 'sandbox', 'sandboxes')}</span>
      </div>
      <div class="row-actions">
        ${open !== ws.id && html`<button type="button" aria-label=${`Edit LLM quota of ${ws.name}`} onClick=${() => setOpen(ws.id)}>Edit quota</button>`}
      </div>
      ${open === ws.id && html`<${QuotaEditor} workspace=${ws} onClose=${() => setOpen(null)} />`}
    </li>`)}</ul>`}
  </section>`;
}

export function Admin({ me }) {
  return html`<section aria-labelledby="admin-title">
    <h1 id="admin-title">Server admin</h1>
    <${Users} me=${me} />
    <${Workspaces} />
  </section>`;
}
