// Workspace members: list with roles; add, change role (confirmed), remove and leave, each only
// when allowed; the workspace's sandbox setting; and what each role may do, as a table
// generated from roles.js.

import { useEffect, useState } from '../vendor/hooks.module.js';
import { del, get, patch, path, post, put } from '../api.js';
import { can, GRANTABLE, ROLES, roleTable } from '../roles.js';
import { html, Confirm, Empty, ErrorBox, Loading, navigate, useAction } from '../ui.js';

/** Whether developers may pause, resume and delete everyone's sandboxes, not only their own
 * (owners and maintainers: `change_workspace_settings`). */
function SandboxSetting({ workspace, onChanged }) {
  const { busy, error, run } = useAction();
  const [on, setOn] = useState(Boolean(workspace.membersManageAllSandboxes));
  const change = (value) => {
    setOn(value); // at once; put back if the server refuses
    run(async () => {
      try {
        await patch(path`/api/workspaces/${workspace.id}`, { membersManageAllSandboxes: value });
      } catch (err) {
        setOn(!value);
        throw err;
      }
      await onChanged();
    });
  };
  return html`<section class="panel" aria-labelledby="settings-title">
    <h2 id="settings-title">Settings</h2>
    <label>
      <input id="members-manage-all" type="checkbox" checked=${on} disabled=${busy}
        onChange=${(e) => change(e.currentTarget.checked)} />
      Developers may pause, resume and delete everyone's sandboxes, not only their own
    </label>
    <${ErrorBox} error=${error} />
  </section>`;
}

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
  const [pending, setPending] = useState(null);
  const grantable = GRANTABLE[workspace.role] || [];
  if (!can(workspace.role, 'change_member_role')) {
    return html`<span class=${`badge role-${member.role}`}>${member.role}</span>`;
  }
  // The select keeps showing the current role until the change is confirmed.
  const choose = (event) => {
    const role = event.currentTarget.value;
    event.currentTarget.value = member.role;
    if (role !== member.role) setPending(role);
  };
  const change = async () => {
    await put(path`/api/workspaces/${workspace.id}/members/${member.userId}`, { role: pending });
    await onChanged();
  };
  const id = `role-${member.userId}`;
  return html`<span class="field compact">
    <label for=${id} class="visually-hidden">Role of ${member.username}</label>
    <select id=${id} value=${member.role} disabled=${pending !== null} onChange=${choose}>
      ${ROLES.filter((r) => grantable.includes(r) || r === member.role).map((r) => html`<option value=${r}>${r}</option>`)}
    </select>
    ${pending && html`<${Confirm} title="Change role"
      message=${`Make ${member.username} ${article(pending)} ${pending} instead of ${article(member.role)} ${member.role}? ${roleSummary(pending)}`}
      action="Change role" onConfirm=${change} onClose=${() => setPending(null)} />`}
  </span>`;
}

/** One sentence on what a role may do, from the same table. */
function roleSummary(role) {
  const index = ROLES.indexOf(role);
  const may = roleTable().filter((row) => row.roles[index]).map((row) => row.text.toLowerCase());
  const a = article(role);
  return `${a[0].toUpperCase()}${a.slice(1)} ${role} may: ${may.join('; ')}.`;
}

const article = (word) => (/^[aeiou]/.test(word) ? 'an' : 'a');

/** What each role may do: generated from roles.js (the server's matrix), never written by hand. */
export function RoleTable() {
  const rows = roleTable();
  const grants = ROLES.filter((r) => (GRANTABLE[r] || []).length > 0)
    .map((r) => `${r}s may give the roles ${ROLES.filter((g) => GRANTABLE[r].includes(g)).join(', ')}`);
  return html`<details class="panel role-help">
    <summary>What each role may do</summary>
    <div class="scroll"><table class="table roles-table" aria-label="What each role may do">
      <thead><tr><th scope="col">Action</th>${ROLES.map((r) => html`<th scope="col">${r}</th>`)}</tr></thead>
      <tbody>${rows.map((row) => html`<tr key=${row.action} data-action=${row.action}>
        <th scope="row">${row.text}</th>
        ${row.roles.map((yes, i) => html`<td data-role=${ROLES[i]}>${yes
          ? html`<span aria-label="yes">✓</span>` : html`<span class="muted" aria-label="no">—</span>`}</td>`)}
      </tr>`)}</tbody>
    </table></div>
    <p class="muted small">${grants.join('; ')}. Only owners change roles or remove members; anyone may leave.</p>
  </details>`;
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
    <${RoleTable} />
    ${can(workspace.role, 'change_workspace_settings') && html`<${SandboxSetting} workspace=${workspace} onChanged=${reload} />`}
    ${can(workspace.role, 'add_member') && html`<${AddMember} workspace=${workspace} onAdded=${load} />`}
    <${ErrorBox} error=${error} />
    ${members === null && !error && html`<${Loading} what="Loading members" />`}
    ${members && members.length === 0 && html`<${Empty}>No members.<//>`}
    ${members && members.length > 0 && html`<div class="scroll"><table class="table members-table">
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
    </table></div>`}
    ${removing && html`<${Confirm} title=${leaving ? 'Leave workspace' : 'Remove member'}
      message=${leaving ? `Leave “${workspace.name}”? You lose access until someone adds you again.`
        : `Remove ${removing.username} from “${workspace.name}”? They lose access to its sandboxes at once.`}
      action=${leaving ? 'Leave' : 'Remove'} onConfirm=${remove} onClose=${() => setRemoving(null)} />`}
  </section>`;
}
