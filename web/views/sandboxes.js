// The workspace's sandboxes, kept live from the event stream: create (private or not), open,
// pause, resume, restart, rename, delete, make private; each control only for those allowed
// (roles.js).

import { useEffect, useRef, useState } from '../vendor/hooks.module.js';
import { del, get, patch, path, post } from '../api.js';
import { can, canOnSandbox } from '../roles.js';
import { ago, html, Confirm, Empty, ErrorBox, LaptopIcon, Link, Loading, StatusBadge, TRANSITIONAL, useAction, when } from '../ui.js';
import { AgentDialog } from './agent-dialog.js';
import { CharCount, nameTooLong, RenameForm } from './name-length.js';
import { AdvancedSetup, EMPTY_SETUP, setupBody } from './sandbox-setup.js';

const RETRY_MS = 5000;
const POLL_MS = 3000;

function listOf(data) {
  return Array.isArray(data) ? data : (data && data.sandboxes) || [];
}

/**
 * What an event says happened: a sandbox's new state, or that it is gone. The server sends
 * `event: sandbox` with the sandbox JSON and `event: sandbox_deleted` with `{"id", "workspaceId"}`.
 */
export function readEvent(kind, data) {
  const event = typeof data === 'string' ? JSON.parse(data) : data;
  const sandbox = event.sandbox || (event.id ? event : null);
  const deleted = kind === 'sandbox_deleted' || event.type === 'sandbox_deleted';
  return { sandbox: deleted ? null : sandbox, deletedId: deleted && sandbox ? sandbox.id : null };
}

/**
 * The workspace's sandboxes: loaded once, then kept current from `GET …/events` (server-sent
 * events). If the stream drops, it reconnects and reloads the list, so no update is missed.
 */
export function useSandboxes(workspaceId, onGone) {
  const [sandboxes, setSandboxes] = useState(null);
  const [error, setError] = useState(null);
  const [live, setLive] = useState(false);
  // Per sandbox, how many times its previews changed (a `previews` event): readers reload them.
  const [previewChanges, setPreviewChanges] = useState({});
  const current = useRef([]);
  const gone = useRef(false);

  const set = (list) => {
    current.current = list;
    setSandboxes(list);
  };
  const upsert = (sandbox) => {
    const list = current.current || [];
    const found = list.some((s) => s.id === sandbox.id);
    // A withheld row (someone else's private sandbox: no `url`) replaces what was known before.
    const merged = (s) => (sandbox.private && !('url' in sandbox) ? sandbox : { ...s, ...sandbox });
    set(found ? list.map((s) => (s.id === sandbox.id ? merged(s) : s)) : [...list, sandbox]);
  };
  const remove = (id) => set((current.current || []).filter((s) => s.id !== id));
  const load = async () => {
    if (gone.current) return;
    try {
      set(listOf(await get(path`/api/workspaces/${workspaceId}/sandboxes`)));
      setError(null);
    } catch (err) {
      // The workspace was deleted (or we were removed): say so once, never retry.
      if (err.status === 404) {
        gone.current = true;
        if (onGone) onGone(workspaceId);
      }
      setError(err);
    }
  };

  useEffect(() => {
    let source = null;
    let retry = null;
    let closed = false;
    const apply = (message) => {
      try {
        const { sandbox, deletedId } = readEvent(message.type, message.data);
        if (deletedId) remove(deletedId);
        else if (sandbox && sandbox.workspaceId !== undefined && sandbox.workspaceId !== workspaceId) return;
        else if (sandbox) upsert(sandbox);
      } catch {
        // Not an event about a sandbox (or not JSON): nothing to show.
      }
    };
    const previewsChanged = (message) => {
      try {
        const { sandboxId } = JSON.parse(message.data);
        if (sandboxId) setPreviewChanges((seen) => ({ ...seen, [sandboxId]: (seen[sandboxId] || 0) + 1 }));
      } catch {
        // Not JSON: nothing to reload.
      }
    };
    const connect = () => {
      source = new EventSource(path`/api/workspaces/${workspaceId}/events`);
      source.addEventListener('sandbox', apply);
      source.addEventListener('previews', previewsChanged);
      source.addEventListener('sandbox_deleted', apply);
      source.addEventListener('message', apply);
      source.addEventListener('open', () => {
        setLive(true);
        load();
      });
      source.addEventListener('error', () => {
        setLive(false);
        if (gone.current) {
          source.close();
        } else if (source.readyState === EventSource.CLOSED && !closed) {
          // The stream was refused: reloading the list through the API shows why (a 401
          // returns to the sign-in screen, a 404 ends it) and keeps the list current until
          // it reconnects.
          load().then(() => {
            if (!gone.current && !closed) retry = setTimeout(connect, RETRY_MS);
          });
        }
      });
    };
    load();
    connect();
    return () => {
      closed = true;
      clearTimeout(retry);
      if (source) source.close();
    };
  }, [workspaceId]);

  // Without the event stream, a sandbox in transition is followed by polling until it settles.
  const moving = !live && (sandboxes || []).some((s) => TRANSITIONAL.has(s.status));
  useEffect(() => {
    if (!moving) return undefined;
    const timer = setInterval(load, POLL_MS);
    return () => clearInterval(timer);
  }, [moving]);

  return { sandboxes, error, live, upsert, remove, reload: load, previewChanges };
}

/** What decides, besides the role, what `me` may do to `sandbox` (roles.js canOnSandbox). */
export function sandboxFacts(workspace, sandbox, me) {
  return {
    own: Boolean(me && sandbox.createdBy && sandbox.createdBy === me.id),
    private: Boolean(sandbox.private),
    membersManageAll: Boolean(workspace.membersManageAllSandboxes),
  };
}

/** The "Private" badge of a sandbox only its creator, owners and maintainers may open. */
export function PrivateBadge({ sandbox }) {
  return sandbox.private
    ? html`<span class="badge private" title="Only its creator, owners and maintainers may open it">Private</span>`
    : null;
}

function CreateSandbox({ workspace, types, onCreated }) {
  const [name, setName] = useState('');
  const [type, setType] = useState('opencode');
  const [isPrivate, setPrivate] = useState(false);
  const [setup, setSetup] = useState(EMPTY_SETUP);
  const { busy, error, run } = useAction();
  const submit = (event) => {
    event.preventDefault();
    run(async () => {
      const sandbox = await post(path`/api/workspaces/${workspace.id}/sandboxes`, { name: name.trim() || 'New sandbox', type, private: isPrivate, ...setupBody(setup) });
      setName('');
      setPrivate(false);
      setSetup(EMPTY_SETUP);
      onCreated(sandbox);
    });
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label="New sandbox">
    <div class="field">
      <label for="sandbox-name">Name</label>
      <input id="sandbox-name" value=${name} placeholder="New sandbox" aria-describedby="sandbox-name-count"
        onInput=${(e) => setName(e.currentTarget.value)} />
      <${CharCount} id="sandbox-name-count" value=${name} />
    </div>
    <div class="field">
      <label for="sandbox-type">Type</label>
      <select id="sandbox-type" value=${type} onChange=${(e) => setType(e.currentTarget.value)}>
        <option value="opencode">OpenCode</option>
        ${(types || ['opencode', 'openclaw']).includes('openclaw') && html`<option value="openclaw">OpenClaw</option>`}
      </select>
    </div>
    ${can(workspace.role, 'set_sandbox_private') && html`<div class="field checkbox">
      <label title="Only you, the owners and the maintainers may open it">
        <input id="sandbox-private" type="checkbox" checked=${isPrivate} onChange=${(e) => setPrivate(e.currentTarget.checked)} />
        Private
      </label>
    </div>`}
    <button type="submit" class="primary" disabled=${busy || nameTooLong(name)}>${busy ? 'Creating…' : 'Create sandbox'}</button>
    <${AdvancedSetup} setup=${setup} onChange=${setSetup} />
    <${ErrorBox} error=${error} />
  </form>`;
}

/** A sandbox's new name, with the same live character count as the create form. */
function RenameSandbox({ sandbox, onChange, onDone }) {
  const save = async (name) => onChange(await patch(path`/api/sandboxes/${sandbox.id}`, { name }));
  return html`<${RenameForm} id=${`rename-sandbox-${sandbox.id}`} current=${sandbox.name}
    ariaLabel=${`Rename ${sandbox.name}`} save=${save} onDone=${onDone} />`;
}

/** Open, pause, resume, restart, rename, delete and make private or shared for one sandbox,
 * each shown only when it applies and `me` may (whose it is and whether it is private count). */
export function SandboxActions({ workspace, sandbox, me, onChange, onDeleted }) {
  const [confirming, setConfirming] = useState(false);
  const [renaming, setRenaming] = useState(false);
  const { busy, error, setError, run } = useAction();
  const facts = sandboxFacts(workspace, sandbox, me);
  const manage = canOnSandbox(workspace.role, 'manage_sandbox', facts);
  const open = canOnSandbox(workspace.role, 'view_sandbox', facts);
  const toggle = canOnSandbox(workspace.role, 'set_sandbox_private', facts);
  const step = (verb) => run(async () => onChange(await post(path`/api/sandboxes/${sandbox.id}/${verb}`)));
  const setPrivate = (value) => run(async () => onChange(await patch(path`/api/sandboxes/${sandbox.id}`, { private: value })));
  const remove = async () => {
    await del(path`/api/sandboxes/${sandbox.id}`);
    onDeleted(sandbox.id);
  };
  const openable = ['running', 'paused', 'resuming'].includes(sandbox.status);
  const restartable = ['running', 'paused'].includes(sandbox.status) && sandbox.type !== 'local';
  const label = (verb) => `${verb} ${sandbox.name}`;
  return html`<div class="row-actions">
    ${openable && open && html`<a class="button primary" href=${path`/api/sandboxes/${sandbox.id}/open`} target="_blank"
      rel="noopener" aria-label=${label('Open')}>Open</a>`}
    ${manage && sandbox.status === 'running' && sandbox.type !== 'local' && html`
      <button type="button" disabled=${busy} aria-label=${label('Pause')} onClick=${() => step('pause')}>Pause</button>`}
    ${manage && (sandbox.status === 'paused' || (sandbox.status === 'failed' && sandbox.type !== 'local')) && html`
      <button type="button" disabled=${busy} aria-label=${label('Resume')} onClick=${() => step('resume')}>Resume</button>`}
    ${manage && restartable && html`
      <button type="button" disabled=${busy} aria-label=${label('Restart')} title="Stop its agent and start it again"
        onClick=${() => step('restart')}>Restart</button>`}
    ${manage && !renaming && html`
      <button type="button" aria-label=${label('Rename')} onClick=${() => setRenaming(true)}>Rename</button>`}
    ${toggle && html`
      <button type="button" disabled=${busy} aria-label=${label(sandbox.private ? 'Make shared' : 'Make private')}
        onClick=${() => setPrivate(!sandbox.private)}>${sandbox.private ? 'Make shared' : 'Make private'}</button>`}
    ${manage && html`
      <button type="button" class="danger" disabled=${busy} aria-label=${label('Delete')} onClick=${() => setConfirming(true)}>Delete</button>`}
    <${ErrorBox} error=${error} onDismiss=${() => setError(null)} />
    ${renaming && html`<${RenameSandbox} sandbox=${sandbox} onChange=${onChange} onDone=${() => setRenaming(false)} />`}
    ${confirming && html`<${Confirm} title="Delete sandbox"
      message=${`Delete “${sandbox.name}”? Its process and its home directory are removed; the workspace disk stays.`}
      action="Delete sandbox" onConfirm=${remove} onClose=${() => setConfirming(false)} />`}
  </div>`;
}

function SandboxRow({ workspace, sandbox, me, upsert, remove }) {
  return html`<li class="row" data-sandbox=${sandbox.name} data-id=${sandbox.id}>
    <div class="row-main">
      <${StatusBadge} sandbox=${sandbox} />
      <${Link} class="name" href=${path`/w/${workspace.id}/sandboxes/${sandbox.id}`}>${sandbox.name}<//>
      <span class=${`badge type-${sandbox.type}`}>${sandbox.type}</span>
      <${PrivateBadge} sandbox=${sandbox} />
      ${sandbox.statusReason && html`<span class="reason">${sandbox.statusReason}</span>`}
      ${sandbox.type === 'local' && sandbox.status === 'offline' && html`
        <span class="last-seen muted small" title=${when(sandbox.lastSeenAt)}>last seen ${ago(sandbox.lastSeenAt)}</span>`}
    </div>
    <${SandboxActions} workspace=${workspace} sandbox=${sandbox} me=${me} onChange=${upsert} onDeleted=${remove} />
  </li>`;
}

export function Sandboxes({ workspace, me, types, onGone }) {
  const { sandboxes, error, live, upsert, remove } = useSandboxes(workspace.id, onGone);
  const [agent, setAgent] = useState(false);
  return html`<section aria-labelledby="sandboxes-title">
    <div class="heading">
      <h1 id="sandboxes-title">Sandboxes</h1>
      ${can(workspace.role, 'create_agent_code') && html`
        <button type="button" class="icon-button" aria-label="Connect a local agent" title="Connect a local agent"
          onClick=${() => setAgent(true)}><${LaptopIcon} /></button>`}
      <span class=${live ? 'live on' : 'live'} role="status">${live ? 'Live' : 'Connecting…'}</span>
    </div>
    ${can(workspace.role, 'create_sandbox') && html`<${CreateSandbox} workspace=${workspace} types=${types} onCreated=${upsert} />`}
    <${ErrorBox} error=${error} />
    ${sandboxes === null && !error && html`<${Loading} what="Loading sandboxes" />`}
    ${sandboxes && sandboxes.length === 0 && html`<${Empty}>No sandboxes yet.${can(workspace.role, 'create_sandbox') ? ' Create one above.' : ''}<//>`}
    ${sandboxes && sandboxes.length > 0 && html`<ul class="list" aria-label="Sandboxes">
      ${sandboxes.map((s) => html`<${SandboxRow} key=${s.id} workspace=${workspace} sandbox=${s} me=${me} upsert=${upsert} remove=${remove} />`)}
    </ul>`}
    ${agent && html`<${AgentDialog} workspace=${workspace} sandboxes=${sandboxes} onClose=${() => setAgent(false)} />`}
  </section>`;
}
