// Server administration (admin only): users (server role, disable, password reset), every
// sandbox, per-workspace LLM quotas.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, post, put } from '../api.js';
import { html, Confirm, Empty, ErrorBox, Link, Loading, StatusBadge, useAction, when } from '../ui.js';

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

function UserAccess({ user, me, onChanged }) {
  const [confirming, setConfirming] = useState(false);
  const { busy, error, run } = useAction();
  if (user.id === me.id) return html`<span class="muted small">—</span>`;
  const enable = () => run(async () => {
    await post(path`/api/admin/users/${user.id}/enable`);
    await onChanged();
  });
  const disable = async () => {
    await post(path`/api/admin/users/${user.id}/disable`);
    await onChanged();
  };
  return html`<span>
    ${user.disabled
      ? html`<button type="button" disabled=${busy} aria-label=${`Enable ${user.username}`} onClick=${enable}>Enable</button>`
      : html`<button type="button" class="danger" aria-label=${`Disable ${user.username}`} onClick=${() => setConfirming(true)}>Disable</button>`}
    <${ErrorBox} error=${error} />
    ${confirming && html`<${Confirm} title="Disable user"
      message=${`Disable ${user.username}? They are signed out everywhere at once (sandbox tabs included) and cannot sign in again, by any method, until you enable them.`}
      action="Disable user" onConfirm=${disable} onClose=${() => setConfirming(false)} />`}
  </span>`;
}

function ResetPassword({ user, onClose }) {
  const [password, setPassword] = useState('');
  const [shown, setShown] = useState(null);
  const { busy, error, run } = useAction();
  const reset = (body) => run(async () => {
    const answer = await post(path`/api/admin/users/${user.id}/password`, body);
    setPassword('');
    setShown(answer.password ? { generated: answer.password } : { set: true });
  });
  const submit = (event) => {
    event.preventDefault();
    reset({ password });
  };
  const id = `reset-password-${user.id}`;
  return html`<form class="inline-form" onSubmit=${submit} aria-label=${`Reset the password of ${user.username}`}>
    ${!shown && html`
      <div class="field">
        <label for=${id}>New password for ${user.username}</label>
        <input id=${id} type="password" autocomplete="new-password" value=${password}
          aria-describedby=${`${id}-rules`} onInput=${(e) => setPassword(e.currentTarget.value)} />
        <span id=${`${id}-rules`} class="muted small">At least 8 characters, not a common password and not the username.</span>
      </div>
      <button type="submit" class="primary" disabled=${busy || !password}>Set password</button>
      <button type="button" disabled=${busy} onClick=${() => reset({})}>Generate one</button>`}
    ${shown && shown.generated && html`<p role="status">New password for ${user.username}:${" "}
      <code data-generated-password>${shown.generated}</code> — shown only now; give it to them.
      Their sessions were ended.</p>`}
    ${shown && shown.set && html`<p role="status">Password set. Their sessions were ended.</p>`}
    <button type="button" onClick=${onClose}>${shown ? 'Done' : 'Cancel'}</button>
    <${ErrorBox} error=${error} />
  </form>`;
}

function Users({ me }) {
  const { rows, error, load } = useList('/api/admin/users');
  const [resetting, setResetting] = useState(null);
  return html`<section class="panel" aria-labelledby="admin-users-title">
    <h2 id="admin-users-title">Users</h2>
    <${ErrorBox} error=${error} />
    ${!rows && !error && html`<${Loading} what="Loading users" />`}
    ${rows && html`<div class="scroll"><table class="table">
      <thead><tr><th scope="col">User</th><th scope="col">Email</th><th scope="col">Server role</th><th scope="col">Joined</th>
        <th scope="col">Status</th><th scope="col">Access</th><th scope="col">Password</th></tr></thead>
      <tbody>${rows.map((u) => html`<tr key=${u.id} data-user=${u.username} data-disabled=${u.disabled ? 'true' : 'false'}>
        <th scope="row">${u.username}${u.id === me.id && html` <span class="muted">(you)</span>`}</th>
        <td>${u.email || '—'}</td>
        <td><${UserRole} user=${u} me=${me} onChanged=${load} /></td>
        <td>${when(u.createdAt)}</td>
        <td>${u.disabled ? html`<span class="badge status-failed">Disabled</span>` : html`<span class="badge status-running">Active</span>`}</td>
        <td><${UserAccess} user=${u} me=${me} onChanged=${load} /></td>
        <td>${u.id === me.id ? html`<span class="muted small">—</span>`
          : html`<button type="button" aria-label=${`Reset the password of ${u.username}`} onClick=${() => setResetting(u)}>Reset</button>`}</td>
      </tr>`)}</tbody>
    </table></div>`}
    ${resetting && html`<${ResetPassword} user=${resetting} key=${resetting.id} onClose=${() => setResetting(null)} />`}
  </section>`;
}

function AllSandboxes() {
  const { rows, error } = useList('/api/admin/sandboxes');
  return html`<section class="panel" aria-labelledby="admin-sandboxes-title">
    <h2 id="admin-sandboxes-title">Every sandbox</h2>
    <${ErrorBox} error=${error} />
    ${!rows && !error && html`<${Loading} what="Loading sandboxes" />`}
    ${rows && rows.length === 0 && html`<${Empty}>No sandboxes on this server.<//>`}
    ${rows && rows.length > 0 && html`<div class="scroll"><table class="table" aria-label="Every sandbox on the server">
      <thead><tr><th scope="col">Sandbox</th><th scope="col">Workspace</th><th scope="col">Created by</th>
        <th scope="col">Status</th><th scope="col">Type</th><th scope="col">Last activity</th></tr></thead>
      <tbody>${rows.map((s) => html`<tr key=${s.id} data-admin-sandbox=${s.name}>
        <th scope="row">${s.name}</th>
        <td>${s.workspaceName}</td>
        <td>${s.creator || '—'}</td>
        <td><${StatusBadge} sandbox=${s} /></td>
        <td><span class=${`badge type-${s.type}`}>${s.type}</span></td>
        <td>${when(s.lastActivityAt)}</td>
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
    <p><${Link} href="/admin/audit">Audit log of the whole server<//></p>
    <${Users} me=${me} />
    <${AllSandboxes} />
    <${Workspaces} />
  </section>`;
}
