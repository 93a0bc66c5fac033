"""The role matrix: which workspace role may take which action, declared once (pure)."""

from __future__ import annotations

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
    MANAGE_SANDBOX = "manage_sandbox"  # pause, resume, delete, rename
    USE_SANDBOX = "use_sandbox"  # full access through the subdomain proxy
    VIEW_SANDBOX = "view_sandbox"  # read-only access through the subdomain proxy
    VIEW_LOGS = "view_logs"
    CREATE_AGENT_CODE = "create_agent_code"
    VIEW_USAGE = "view_usage"


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
}

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


def may_grant(actor: Role | str, target: Role | str) -> bool:
    """True when a member with role `actor` may give someone role `target`."""
    return Role(target) in GRANTABLE[Role(actor)]


def parse_role(text: str) -> Role:
    """A role from user input; ValueError names the valid ones."""
    try:
        return Role(text.strip().lower())
    except ValueError:
        raise ValueError(f"role must be one of {', '.join(r.value for r in Role)}") from None
