// What each workspace role may do: a copy of MATRIX and GRANTABLE in
// src/agentserver/auth/permissions.py (tests/unit/test_web_roles.py keeps the two equal).
// The UI only hides what a role cannot do; the server enforces it.

export const ROLES = ['owner', 'maintainer', 'developer', 'guest'];

export const MATRIX = {
  view_workspace: ['owner', 'maintainer', 'developer', 'guest'],
  rename_workspace: ['owner', 'maintainer'],
  delete_workspace: ['owner'],
  list_members: ['owner', 'maintainer', 'developer', 'guest'],
  add_member: ['owner', 'maintainer'],
  change_member_role: ['owner'],
  remove_member: ['owner'],
  view_sandboxes: ['owner', 'maintainer', 'developer', 'guest'],
  create_sandbox: ['owner', 'maintainer', 'developer'],
  manage_sandbox: ['owner', 'maintainer', 'developer'],
  use_sandbox: ['owner', 'maintainer', 'developer'],
  view_sandbox: ['owner', 'maintainer', 'developer', 'guest'],
  view_logs: ['owner', 'maintainer', 'developer'],
  create_agent_code: ['owner', 'maintainer', 'developer'],
  view_usage: ['owner', 'maintainer', 'developer', 'guest'],
  manage_any_sandbox: ['owner', 'maintainer'],
  manage_any_sandbox_if_enabled: ['owner', 'maintainer', 'developer'],
  set_sandbox_private: ['owner', 'maintainer', 'developer'],
  see_private_sandbox: ['owner', 'maintainer'],
  change_workspace_settings: ['owner', 'maintainer'],
  read_audit_log: ['owner', 'maintainer'],
};

// What someone else's private sandbox withholds without see_private_sandbox (PRIVATE_ACTIONS).
export const PRIVATE_ACTIONS = ['use_sandbox', 'view_sandbox', 'view_logs'];

export const GRANTABLE = {
  owner: ['owner', 'maintainer', 'developer', 'guest'],
  maintainer: ['maintainer', 'developer', 'guest'],
  developer: [],
  guest: [],
};

// What each action means to a person, for the role table on the members page (generated from
// MATRIX above; tests/unit/test_web_roles.py checks every action has its words).
export const ACTION_TEXT = {
  view_workspace: 'See the workspace',
  rename_workspace: 'Rename the workspace',
  delete_workspace: 'Delete the workspace',
  list_members: 'See the members',
  add_member: 'Add members',
  change_member_role: 'Change members\' roles',
  remove_member: 'Remove members',
  view_sandboxes: 'See the sandboxes',
  create_sandbox: 'Create sandboxes',
  manage_sandbox: 'Pause, resume, restart, rename and delete their own sandboxes',
  use_sandbox: 'Work in a sandbox',
  view_sandbox: 'Look into a sandbox (read-only)',
  view_logs: 'Read sandbox logs',
  create_agent_code: 'Connect a local agent',
  view_usage: 'See LLM usage',
  manage_any_sandbox: 'Pause, resume, delete and make private anyone\'s sandboxes',
  manage_any_sandbox_if_enabled: 'The same, when the workspace lets members manage all sandboxes',
  set_sandbox_private: 'Make their own sandboxes private',
  see_private_sandbox: 'Open others\' private sandboxes',
  change_workspace_settings: 'Change the workspace\'s settings',
  read_audit_log: 'Read the audit log',
};

/** The role table: one row per action, in MATRIX's order, with who may take it. */
export function roleTable() {
  return Object.keys(MATRIX).map((action) => ({
    action,
    text: ACTION_TEXT[action] || action,
    roles: ROLES.map((role) => MATRIX[action].includes(role)),
  }));
}

/** True when `role` (a workspace role, or undefined for a non-member) may take `action`. */
export function can(role, action) {
  return Boolean(role) && (MATRIX[action] || []).includes(role);
}

/**
 * True when `role` may take `action` on one sandbox: `own` (the user created it), `private`,
 * and `membersManageAll` (the workspace's setting) count as may_on_sandbox in
 * src/agentserver/auth/permissions.py decides.
 */
export function canOnSandbox(role, action, { own = false, private: isPrivate = false, membersManageAll = false } = {}) {
  if (!can(role, action)) return false;
  if (own) return true;
  if (isPrivate && PRIVATE_ACTIONS.includes(action)) return can(role, 'see_private_sandbox');
  if (action === 'manage_sandbox') {
    return can(role, 'manage_any_sandbox') || (membersManageAll && can(role, 'manage_any_sandbox_if_enabled'));
  }
  if (action === 'set_sandbox_private') return can(role, 'manage_any_sandbox');
  return true;
}
