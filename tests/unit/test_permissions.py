"""The role matrix: who may do what in a workspace, and who may hand out which role."""

from __future__ import annotations

import pytest

from agentserver.auth.permissions import GRANTABLE, MATRIX, Action, allowed, may_grant, parse_role
from agentserver.models import Role

OW, M, D, G = Role.OWNER, Role.MAINTAINER, Role.DEVELOPER, Role.GUEST
STRONGEST_FIRST = [OW, M, D, G]

# The product rules, written independently of the table in auth/permissions.py.
EXPECTED: dict[Action, set[Role]] = {
    Action.VIEW_WORKSPACE: {OW, M, D, G},
    Action.RENAME_WORKSPACE: {OW, M},
    Action.DELETE_WORKSPACE: {OW},
    Action.LIST_MEMBERS: {OW, M, D, G},
    Action.ADD_MEMBER: {OW, M},
    Action.CHANGE_MEMBER_ROLE: {OW},
    Action.REMOVE_MEMBER: {OW},
    Action.VIEW_SANDBOXES: {OW, M, D, G},
    Action.CREATE_SANDBOX: {OW, M, D},
    Action.MANAGE_SANDBOX: {OW, M, D},
    Action.USE_SANDBOX: {OW, M, D},
    Action.VIEW_SANDBOX: {OW, M, D, G},
    Action.VIEW_LOGS: {OW, M, D},
    Action.CREATE_AGENT_CODE: {OW, M, D},
    Action.VIEW_USAGE: {OW, M, D, G},
    Action.MANAGE_ANY_SANDBOX: {OW, M},
    Action.MANAGE_ANY_SANDBOX_IF_ENABLED: {OW, M, D},
    Action.SET_SANDBOX_PRIVATE: {OW, M, D},
    Action.SEE_PRIVATE_SANDBOX: {OW, M},
    Action.CHANGE_WORKSPACE_SETTINGS: {OW, M},
    Action.READ_AUDIT_LOG: {OW, M},
}


def test_every_action_has_a_row() -> None:
    """The matrix declares every action, so none falls through to a default."""
    assert set(MATRIX) == set(Action)


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", list(Role))
def test_matrix_cell(action: Action, role: Role) -> None:
    """Each (role, action) cell answers as the product rules say."""
    assert allowed(role, action) == (role in EXPECTED[action])
    assert allowed(role.value, action) == (role in EXPECTED[action])


@pytest.mark.parametrize("action", list(Action))
def test_a_stronger_role_may_do_whatever_a_weaker_one_may(action: Action) -> None:
    """Roles are ordered: if a role is allowed an action, every stronger role is too."""
    for weaker_index, weaker in enumerate(STRONGEST_FIRST):
        if allowed(weaker, action):
            assert all(allowed(r, action) for r in STRONGEST_FIRST[:weaker_index])


@pytest.mark.parametrize("action", list(Action))
def test_a_non_member_may_do_nothing(action: Action) -> None:
    """`None` (not a member) is denied everything."""
    assert not allowed(None, action)


def test_guests_only_look() -> None:
    """A guest is allowed exactly the viewing actions."""
    assert {a for a in Action if allowed(G, a)} == {
        Action.VIEW_WORKSPACE,
        Action.LIST_MEMBERS,
        Action.VIEW_SANDBOXES,
        Action.VIEW_SANDBOX,
        Action.VIEW_USAGE,
    }


@pytest.mark.parametrize(
    ("actor", "grantable"),
    [(OW, {OW, M, D, G}), (M, {M, D, G}), (D, set()), (G, set())],
)
def test_who_may_grant_which_role(actor: Role, grantable: set[Role]) -> None:
    """Only an owner makes owners; a maintainer grants up to maintainer; others grant nothing."""
    assert set(GRANTABLE[actor]) == grantable
    for target in Role:
        assert may_grant(actor, target) == (target in grantable)


@pytest.mark.parametrize("text", ["owner", " Maintainer ", "DEVELOPER", "guest"])
def test_parse_role_accepts_the_four_roles_in_any_case(text: str) -> None:
    """User input is trimmed and case-folded before matching a role."""
    assert parse_role(text) == Role(text.strip().lower())


@pytest.mark.parametrize("text", ["", "admin", "root", "owners"])
def test_parse_role_refuses_others_naming_the_valid_ones(text: str) -> None:
    """An unknown role raises ValueError that lists the valid roles."""
    with pytest.raises(ValueError, match="owner, maintainer, developer, guest"):
        parse_role(text)
