// Workspace members: list with roles; add, change role, remove and leave, each only when allowed.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, path, post, put } from '../api.js';
import { can, GRANTABLE, ROLES } from '../roles.js';
import { html, Confirm, Empty, ErrorBox, Loading, navigate, useAction } from '../ui.js';

function AddMember({ workspace, onAdded }) {
  const roles = GRANTABLE[workspace.role] || [];
  const [login, setLogin] = useState('');
  const [role, setRole] = useState(roles.includes('developer') ? 'developer' : roles[0]);
  const { busy, error, run } = useAction();
  const submit = (event) => {
    event.preventDefault();
    const who = login.trim();
    run(async () => {
      await post(path`/api/workspaces/${workspace.id}/members`, who.includes('@') ? { email: who, role } : { username: who, role });
      setLogin('');
      await onAdded();
    });
  };
  return html`<form class="inline-form" onSubmit=${submit} aria-label="Add a member">
    <div class="field">
      <label for="member-login">Username or email</label>
      <input id="member-login" required value=${login} autocomplete="off" onInput=${(e) => setLogin(e.currentTarget.value)} />
    </div>
    <div class="field">
      <label for="member-role">Role</label>
      <select id="member-role" value=${role} onChange=${(e) => setRole(e.currentTarget.value)}>
        ${roles.map((r) => html`<option value=${r}>${r}</option>`)}
      </select>
    </div>
    <button type="submit" class="primary" disabled=${busy || !login.trim()}>${busy ? 'Adding…' : 'Add member'}</button>
    <${ErrorBox} error=${error} />
  </form>`;
}

function RoleControl({ workspace, member, onChanged }) {
  const { busy, error, run } = useAction();
  const grantable = GRANTABLE[workspace.role] || [];
  if (!can(workspace.role, 'change_member_role')) {
    return html`<span class=${`badge role-${member.role}`}>${member.role}</span>`;
  }
  const change = (event) => {
    const role = event.currentTarget.value;
    run(async () => {
      await put(path`/api/workspaces/${workspace.id}/members/${member.userId}`, { role });
      await onChanged();
    });
  };
  const id = `role-${member.userId}`;
  return html`<span class="field compact">
    <label for=${id} class="visually-hidden">Role of ${member.username}</label>
    <select id=${id} value=${member.role} disabled=${busy} onChange=${change}>
      ${ROLES.filter((r) => grantable.includes(r) || r === member.role).map((r) => html`<option value=${r}>${r}</option>`)}
    </select>
    <${ErrorBox} error=${error} />
  </span>`;
}

export function Members({ workspace, me, reload }) {
  const [members, setMembers] = useState(null);
  const [error, setError] = useState(null);
  const [removing, setRemoving] = useState(null);
  const load = async () => {
    try {
      setMembers(await get(path`/api/workspaces/${workspace.id}/members`));
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  useEffect(() => { load(); }, [workspace.id, workspace.role]);

  const leaving = removing && removing.userId === me.id;
  const remove = async () => {
    await del(path`/api/workspaces/${workspace.id}/members/${removing.userId}`);
    if (leaving) {
      await reload();
      navigate('/workspaces');
    } else {
      await load();
    }
  };
  // Changing your own role changes what this page may show: reload the workspace list too.
  const changed = async () => {
    await load();
    await reload();
  };

  return html`<section aria-labelledby="members-title">
    <h1 id="members-title">Members <span class="muted small">of ${workspace.name}</span></h1>
    <p class="muted">Your role here: <span class=${`badge role-${workspace.role}`}>${workspace.role}</span></p>
    ${can(workspace.role, 'add_member') && html`<${AddMember} workspace=${workspace} onAdded=${load} />`}
    <${ErrorBox} error=${error} />
    ${members === null && !error && html`<${Loading} what="Loading members" />`}
    ${members && members.length === 0 && html`<${Empty}>No members.<//>`}
    ${members && members.length > 0 && html`<table class="table">
      <thead><tr><th scope="col">User</th><th scope="col">Role</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
      <tbody>${members.map((m) => html`<tr key=${m.userId} data-member=${m.username}>
        <td><strong>${m.username}</strong>${m.userId === me.id && html` <span class="muted">(you)</span>`}
          ${m.email && html`<div class="muted small">${m.email}</div>`}</td>
        <td><${RoleControl} workspace=${workspace} member=${m} onChanged=${changed} /></td>
        <td class="cell-actions">
          ${m.userId === me.id
            ? html`<button type="button" onClick=${() => setRemoving(m)}>Leave</button>`
            : can(workspace.role, 'remove_member') && html`<button type="button" class="danger" aria-label=${`Remove ${m.username}`} onClick=${() => setRemoving(m)}>Remove</button>`}
        </td>
      </tr>`)}</tbody>
    </table>`}
    ${removing && html`<${Confirm} title=${leaving ? 'Leave workspace' : 'Remove member'}
      message=${leaving ? `Leave “${workspace.name}”? You lose access until someone adds you again.`
        : `Remove ${removing.username} from “${workspace.name}”? They lose access to its sandboxes at once.`}
      action=${leaving ? 'Leave' : 'Remove'} onConfirm=${remove} onClose=${() => setRemoving(null)} />`}
  </section>`;
}
