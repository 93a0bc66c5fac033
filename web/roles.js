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
};

export const GRANTABLE = {
  owner: ['owner', 'maintainer', 'developer', 'guest'],
  maintainer: ['maintainer', 'developer', 'guest'],
  developer: [],
  guest: [],
};

/** True when `role` (a workspace role, or undefined for a non-member) may take `action`. */
export function can(role, action) {
  return Boolean(role) && (MATRIX[action] || []).includes(role);
}
