// The audit log: a workspace's (owners and maintainers) or the whole server's (admins), newest
// first, with filters (action, actor, period) and "Show more" paging; admins can export it.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { get, path } from '../api.js';
import { html, Empty, ErrorBox, Loading, when } from '../ui.js';

// The action families the filter offers (any dotted name or prefix works in the API).
const FAMILIES = [
  ['', 'All actions'],
  ['auth.', 'Sign-in and sign-out'],
  ['user.', 'Users (admin)'],
  ['workspace.', 'Workspaces'],
  ['member.', 'Members'],
  ['sandbox.', 'Sandboxes'],
  ['agent.', 'Local agents'],
  ['token.', 'API tokens'],
  ['quota.', 'LLM quotas'],
  ['preview.', 'Previews'],
];

/** The query string of a filter: only the parts that are set. */
export function auditQuery(filters, cursor) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(filters)) if (value) params.set(name, value);
  if (cursor) params.set('cursor', cursor);
  const text = params.toString();
  return text ? `?${text}` : '';
}

/** Who acted, in words: a user (or token) by name, an agent by its sandbox, or the server. */
export function actorText(actor) {
  if (actor.kind === 'system') return `server (${actor.name || actor.id})`;
  if (actor.kind === 'agent') return `agent ${actor.name || actor.id || ''}`.trim();
  return actor.name || actor.id || 'someone';
}

function targetText(target) {
  if (!target || !target.kind) return '—';
  return `${target.kind} ${target.name || target.id || ''}`.trim();
}

function Filters({ initial, onApply }) {
  const [filters, setFilters] = useState(initial);
  const field = (name) => (event) => setFilters({ ...filters, [name]: event.currentTarget.value });
  const submit = (event) => {
    event.preventDefault();
    onApply(filters);
  };
  return html`<form class="inline-form audit-filters" onSubmit=${submit} aria-label="Filter the audit log">
    <div class="field">
      <label for="audit-action">Action</label>
      <select id="audit-action" value=${filters.action} onChange=${field('action')}>
        ${FAMILIES.map(([value, label]) => html`<option value=${value}>${label}</option>`)}
      </select>
    </div>
    <div class="field">
      <label for="audit-actor">Who (name or id)</label>
      <input id="audit-actor" value=${filters.actor} onInput=${field('actor')} maxlength="254" />
    </div>
    <div class="field">
      <label for="audit-from">From</label>
      <input id="audit-from" type="date" value=${filters.from} onInput=${field('from')} />
    </div>
    <div class="field">
      <label for="audit-to">To</label>
      <input id="audit-to" type="date" value=${filters.to} onInput=${field('to')} />
    </div>
    <button type="submit">Apply</button>
  </form>`;
}

function Entries({ entries, showWorkspace }) {
  return html`<table class="table audit-table">
    <caption class="visually-hidden">Audit entries, newest first</caption>
    <thead><tr>
      <th scope="col">When</th><th scope="col">Who</th><th scope="col">Action</th>
      <th scope="col">On</th><th scope="col">Result</th>
      ${showWorkspace && html`<th scope="col">Workspace</th>`}
      <th scope="col">From</th>
    </tr></thead>
    <tbody>
      ${entries.map((e) => html`<tr data-testid="audit-entry" data-action=${e.action}>
        <td>${when(e.at)}</td>
        <td>${actorText(e.actor)}</td>
        <td><code>${e.action}</code></td>
        <td>${targetText(e.target)}</td>
        <td><span class=${`badge result-${e.result}`}>${e.result}</span>
          ${e.reason && html`<div class="muted small">${e.reason}</div>`}</td>
        ${showWorkspace && html`<td>${e.workspaceId || '—'}</td>`}
        <td>${e.clientAddress || '—'}</td>
      </tr>`)}
    </tbody>
  </table>`;
}

/** The log of one workspace (`workspace`) or, without one, the whole server's (admins). */
export function Audit({ workspace }) {
  const [filters, setFilters] = useState({ action: '', actor: '', from: '', to: '' });
  const [entries, setEntries] = useState(null);
  const [next, setNext] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const base = workspace ? path`/api/workspaces/${workspace.id}/audit` : '/api/admin/audit';

  const load = async (cursor) => {
    setBusy(true);
    try {
      const page = await get(base + auditQuery(filters, cursor));
      setEntries((shown) => (cursor && shown ? [...shown, ...page.entries] : page.entries));
      setNext(page.nextCursor);
      setError(null);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  useEffect(() => { load(null); }, [base, filters]);

  const title = workspace ? `Audit log of ${workspace.name}` : 'Audit log';
  return html`<section aria-labelledby="audit-title">
    <div class="heading">
      <h1 id="audit-title">${title}</h1>
      ${!workspace && html`<a href=${`/api/admin/audit/export${auditQuery(filters)}`} download="audit.jsonl">Export (JSON lines)</a>`}
    </div>
    <p class="muted small">Who did what, when and from where. Entries cannot be changed.</p>
    <${Filters} initial=${filters} onApply=${setFilters} />
    <${ErrorBox} error=${error} />
    ${entries === null ? html`<${Loading} what="Loading the audit log" />`
      : entries.length === 0 ? html`<${Empty}>Nothing recorded that matches.<//>`
        : html`<${Entries} entries=${entries} showWorkspace=${!workspace} />`}
    ${next && html`<button type="button" disabled=${busy} onClick=${() => load(next)}>Show more</button>`}
  </section>`;
}
