// The caller's workspaces: list with role, create, switch, rename and delete (per role).

import { useState } from '../vendor/hooks.module.js';
import { del, patch, path, post } from '../api.js';
import { can } from '../roles.js';
import { html, Confirm, Empty, ErrorBox, Link, navigate, useAction, when } from '../ui.js';
import { CharCount, nameTooLong, RenameForm } from './name-length.js';

function CreateWorkspace({ reload }) {
  const [name, setName] = useState('');
  const { busy, error, run } = useAction();
  const submit = (event) => {
    event.preventDefault();
    run(async () => {
      const ws = await post('/api/workspaces', { name: name.trim() });
      setName('');
      await reload();
      navigate(`/w/${encodeURIComponent(ws.id)}`);
    });
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label="New workspace">
    <div class="field">
      <label for="new-workspace-name">New workspace name</label>
      <input id="new-workspace-name" required value=${name} placeholder="e.g. Backend team"
        aria-describedby="new-workspace-count" onInput=${(e) => setName(e.currentTarget.value)} />
      <${CharCount} id="new-workspace-count" value=${name} />
    </div>
    <button type="submit" class="primary" disabled=${busy || !name.trim() || nameTooLong(name)}>${busy ? 'Creating…' : 'Create workspace'}</button>
    <${ErrorBox} error=${error} />
  </form>`;
}

function Rename({ ws, reload, onDone }) {
  const save = async (name) => {
    await patch(path`/api/workspaces/${ws.id}`, { name });
    await reload();
  };
  return html`<${RenameForm} id=${`rename-${ws.id}`} current=${ws.name} save=${save} onDone=${onDone} />`;
}

function Row({ ws, reload, onDelete }) {
  const [renaming, setRenaming] = useState(false);
  const href = `/w/${encodeURIComponent(ws.id)}`;
  return html`<li class="row" data-workspace=${ws.name}>
    <div class="row-main">
      <${Link} href=${href} class="name">${ws.name}<//>
      <span class=${`badge role-${ws.role}`}>${ws.role}</span>
      <span class="muted small">created ${when(ws.createdAt)}</span>
    </div>
    <div class="row-actions">
      <${Link} href=${href} class="button">Open</${Link}>
      ${can(ws.role, 'rename_workspace') && !renaming && html`
        <button type="button" onClick=${() => setRenaming(true)} aria-label=${`Rename ${ws.name}`}>Rename</button>`}
      ${can(ws.role, 'delete_workspace') && html`
        <button type="button" class="danger" onClick=${() => onDelete(ws)} aria-label=${`Delete ${ws.name}`}>Delete</button>`}
    </div>
    ${renaming && html`<${Rename} ws=${ws} reload=${reload} onDone=${() => setRenaming(false)} />`}
  </li>`;
}

export function Workspaces({ workspaces, reload }) {
  const [deleting, setDeleting] = useState(null);
  const remove = async () => {
    await del(path`/api/workspaces/${deleting.id}`);
    await reload();
  };
  return html`<section aria-labelledby="workspaces-title">
    <h1 id="workspaces-title">Workspaces</h1>
    <${CreateWorkspace} reload=${reload} />
    ${workspaces.length === 0
      ? html`<${Empty}>You are not in any workspace yet. Create one above, or ask a workspace owner to add you.<//>`
      : html`<ul class="list">${workspaces.map((ws) => html`<${Row} key=${ws.id} ws=${ws} reload=${reload} onDelete=${setDeleting} />`)}</ul>`}
    ${deleting && html`<${Confirm} title="Delete workspace"
      message=${`Delete “${deleting.name}”? All its sandboxes are stopped and removed, and its shared disk is deleted. This cannot be undone.`}
      action="Delete workspace" onConfirm=${remove} onClose=${() => setDeleting(null)} />`}
  </section>`;
}
