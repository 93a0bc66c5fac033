// The signed-in user's account: change the password, see and end sessions, sign out everywhere.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, post } from '../api.js';
import { html, Confirm, ErrorBox, Loading, useAction, when } from '../ui.js';

const MIN_PASSWORD = 8; // auth/passwords.py MIN_PASSWORD

/** The rules registration states, checked as the user types (the server also refuses the
 * most common passwords, which only it knows). */
export function passwordProblems(password, username) {
  const problems = [];
  if (password.length < MIN_PASSWORD) problems.push(`At least ${MIN_PASSWORD} characters (${password.length} so far).`);
  if (password && password.trim().toLowerCase() === username.trim().toLowerCase()) problems.push('Not your username.');
  return problems;
}

function ChangePassword({ me, onChanged }) {
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [done, setDone] = useState('');
  const { busy, error, run } = useAction();
  const problems = next ? passwordProblems(next, me.username) : [];
  const submit = (event) => {
    event.preventDefault();
    setDone('');
    run(async () => {
      await post('/api/auth/password', { currentPassword: current, newPassword: next });
      setCurrent('');
      setNext('');
      setDone('Password changed. Your other sessions were ended.');
      await onChanged();
    });
  };
  return html`<section class="panel" aria-labelledby="password-title">
    <h2 id="password-title">Change password</h2>
    <form onSubmit=${submit} aria-label="Change password">
      <label for="current-password">Current password</label>
      <input id="current-password" type="password" autocomplete="current-password" required value=${current}
        onInput=${(e) => setCurrent(e.currentTarget.value)} />
      <label for="new-password">New password</label>
      <input id="new-password" type="password" autocomplete="new-password" required value=${next}
        aria-describedby="new-password-rules" onInput=${(e) => setNext(e.currentTarget.value)} />
      <p id="new-password-rules" class="hint muted">
        At least ${MIN_PASSWORD} characters, not a common password and not the username.</p>
      ${problems.length > 0 && html`<ul class="password-problems small" aria-live="polite">
        ${problems.map((p) => html`<li>${p}</li>`)}</ul>`}
      <${ErrorBox} error=${error} />
      <p role="status" class="small">${done}</p>
      <button type="submit" class="primary" disabled=${busy || !current || !next || problems.length > 0}>
        ${busy ? 'Changing…' : 'Change password'}</button>
    </form>
  </section>`;
}

function device(session) {
  return session.userAgent || 'Unknown browser';
}

function Sessions({ sessions, error, reload }) {
  const { busy, error: failed, run } = useAction();
  const end = (session) => run(async () => {
    await del(path`/api/auth/sessions/${session.id}`);
    if (session.current) location.assign('/');
    else await reload();
  });
  return html`<section class="panel" aria-labelledby="sessions-title">
    <h2 id="sessions-title">Sessions</h2>
    <p class="muted small">Every browser signed in to your account. Ending a session signs that
      browser out and closes the sandbox tabs it opened.</p>
    <${ErrorBox} error=${error || failed} />
    ${!sessions && !error && html`<${Loading} what="Loading sessions" />`}
    ${sessions && html`<div class="scroll"><table class="table" aria-label="Your sessions">
      <thead><tr><th scope="col">Browser</th><th scope="col">Address</th><th scope="col">Signed in</th>
        <th scope="col">Last used</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${sessions.map((s) => html`<tr key=${s.id} data-session=${s.id} data-current=${s.current ? 'true' : 'false'}>
        <th scope="row">${device(s)}${s.current && html` <span class="badge">this session</span>`}</th>
        <td>${s.clientAddress || '—'}</td>
        <td>${when(s.createdAt)}</td>
        <td>${when(s.lastUsedAt)}</td>
        <td><button type="button" class="danger" disabled=${busy}
          aria-label=${s.current ? 'End this session (sign out here)' : `End session of ${device(s)}`}
          onClick=${() => end(s)}>End</button></td>
      </tr>`)}</tbody>
    </table></div>`}
  </section>`;
}

function Everywhere() {
  const [asking, setAsking] = useState(false);
  const signOut = async () => {
    await post('/api/auth/logout-all');
    location.assign('/');
  };
  return html`<section class="panel" aria-labelledby="everywhere-title">
    <h2 id="everywhere-title">Sign out everywhere</h2>
    <p class="muted small">Ends every session of yours, this one included: other browsers and
      devices, and every sandbox tab.</p>
    <button type="button" class="danger" onClick=${() => setAsking(true)}>Sign out everywhere</button>
    ${asking && html`<${Confirm} title="Sign out everywhere"
      message="Every browser signed in to your account, this one included, will be signed out."
      action="Sign out everywhere" onConfirm=${signOut} onClose=${() => setAsking(false)} />`}
  </section>`;
}

export function Account({ me }) {
  const [sessions, setSessions] = useState(null);
  const [error, setError] = useState(null);
  const load = () => get('/api/auth/sessions').then((rows) => { setSessions(rows); setError(null); }, setError);
  useEffect(() => { load(); }, []);
  return html`<section aria-labelledby="account-title">
    <h1 id="account-title">Your account</h1>
    <p>Signed in as <strong>${me.username}</strong>${me.email && html` (${me.email})`}${me.role === 'admin' && ' · server admin'}.</p>
    <${ChangePassword} me=${me} onChanged=${load} />
    <${Sessions} sessions=${sessions} error=${error} reload=${load} />
    <${Everywhere} />
  </section>`;
}
