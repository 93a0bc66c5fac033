"""The role matrix: which workspace role may take which action, declared once (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from agentserver.models import Role


class Action(StrEnum):
    """Everything a member can try to do inside a workspace."""

    VIEW_WORKSPACE = "view_workspace"
    RENAME_WORKSPACE = "rename_workspace"
    DELETE_WORKSPACE = "delete_workspace"
    LIST_MEMBERS = "list_members"
    ADD_MEMBER = "add_member"
    CHANGE_MEMBER_ROLE = "change_member_role"
    REMOVE_MEMBER = "remove_member"
    VIEW_SANDBOXES = "view_sandboxes"
    CREATE_SANDBOX = "create_sandbox"
    MANAGE_SANDBOX = "manage_sandbox"  # pause, resume, delete, rename (their own)
    USE_SANDBOX = "use_sandbox"  # full access through the subdomain proxy
    VIEW_SANDBOX = "view_sandbox"  # read-only access through the subdomain proxy
    VIEW_LOGS = "view_logs"
    CREATE_AGENT_CODE = "create_agent_code"
    VIEW_USAGE = "view_usage"
    # Sandboxes of others (see may_on_sandbox): always, or when the workspace allows it.
    MANAGE_ANY_SANDBOX = "manage_any_sandbox"
    MANAGE_ANY_SANDBOX_IF_ENABLED = "manage_any_sandbox_if_enabled"
    SET_SANDBOX_PRIVATE = "set_sandbox_private"  # mark their own sandboxes private or not
    SEE_PRIVATE_SANDBOX = "see_private_sandbox"  # open and see others' private sandboxes
    CHANGE_WORKSPACE_SETTINGS = "change_workspace_settings"
    READ_AUDIT_LOG = "read_audit_log"


_O, _M, _D, _G = Role.OWNER, Role.MAINTAINER, Role.DEVELOPER, Role.GUEST

MATRIX: dict[Action, frozenset[Role]] = {
    Action.VIEW_WORKSPACE: frozenset({_O, _M, _D, _G}),
    Action.RENAME_WORKSPACE: frozenset({_O, _M}),
    Action.DELETE_WORKSPACE: frozenset({_O}),
    Action.LIST_MEMBERS: frozenset({_O, _M, _D, _G}),
    Action.ADD_MEMBER: frozenset({_O, _M}),
    Action.CHANGE_MEMBER_ROLE: frozenset({_O}),
    Action.REMOVE_MEMBER: frozenset({_O}),
    Action.VIEW_SANDBOXES: frozenset({_O, _M, _D, _G}),
    Action.CREATE_SANDBOX: frozenset({_O, _M, _D}),
    Action.MANAGE_SANDBOX: frozenset({_O, _M, _D}),
    Action.USE_SANDBOX: frozenset({_O, _M, _D}),
    Action.VIEW_SANDBOX: frozenset({_O, _M, _D, _G}),
    Action.VIEW_LOGS: frozenset({_O, _M, _D}),
    Action.CREATE_AGENT_CODE: frozenset({_O, _M, _D}),
    Action.VIEW_USAGE: frozenset({_O, _M, _D, _G}),
    Action.MANAGE_ANY_SANDBOX: frozenset({_O, _M}),
    Action.MANAGE_ANY_SANDBOX_IF_ENABLED: frozenset({_O, _M, _D}),
    Action.SET_SANDBOX_PRIVATE: frozenset({_O, _M, _D}),
    Action.SEE_PRIVATE_SANDBOX: frozenset({_O, _M}),
    Action.CHANGE_WORKSPACE_SETTINGS: frozenset({_O, _M}),
    Action.READ_AUDIT_LOG: frozenset({_O, _M}),
}

# What someone else's private sandbox withholds from roles without SEE_PRIVATE_SANDBOX: its
# subdomain, its logs, and its details beyond name, creator and status (VIEW_SANDBOX).
PRIVATE_ACTIONS = frozenset({Action.USE_SANDBOX, Action.VIEW_SANDBOX, Action.VIEW_LOGS})

# Which roles each role may hand out when adding or changing a member.
GRANTABLE: dict[Role, frozenset[Role]] = {
    _O: frozenset({_O, _M, _D, _G}),
    _M: frozenset({_M, _D, _G}),
    _D: frozenset(),
    _G: frozenset(),
}


def allowed(role: Role | str | None, action: Action) -> bool:
    """True when `role` (None: not a member) may take `action`."""
    if role is None:
        return False
    return Role(role) in MATRIX[action]


@dataclass(frozen=True, slots=True)
class SandboxFacts:
    """What, besides the role, decides an action on one sandbox."""

    own: bool  # the caller created it
    private: bool = False
    members_manage_all: bool = False  # the workspace lets members manage everyone's


def may_on_sandbox(role: Role | str | None, action: Action, facts: SandboxFacts) -> bool:
    """True when `role` may take `action` on a sandbox with these `facts`: the role must allow
    the action (MATRIX) and, on someone else's sandbox, MANAGE_SANDBOX also needs
    MANAGE_ANY_SANDBOX (or MANAGE_ANY_SANDBOX_IF_ENABLED with the workspace's setting on),
    SET_SANDBOX_PRIVATE needs MANAGE_ANY_SANDBOX, and a private one's PRIVATE_ACTIONS need
    SEE_PRIVATE_SANDBOX."""
    if not allowed(role, action):
        return False
    if facts.own:
        return True
    if facts.private and action in PRIVATE_ACTIONS:
        return allowed(role, Action.SEE_PRIVATE_SANDBOX)
    if action is Action.MANAGE_SANDBOX:
        return allowed(role, Action.MANAGE_ANY_SANDBOX) or (
            facts.members_manage_all and allowed(role, Action.MANAGE_ANY_SANDBOX_IF_ENABLED)
        )
    if action is Action.SET_SANDBOX_PRIVATE:
        return allowed(role, Action.MANAGE_ANY_SANDBOX)
    return True


def may_grant(actor: Role | str, target: Role | str) -> bool:
    """True when a member with role `actor` may give someone role `target`."""
    return Role(target) in GRANTABLE[Role(actor)]


def parse_role(text: str) -> Role:
    """A role from user input; ValueError names the valid ones."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ValueError(f"role must be one of {', '.join(r.value for r in Role)}") from None
