"""Actions on one sandbox: whose it is, whether it is private, and the workspace's setting."""

from __future__ import annotations

import pytest

from agentserver.auth.permissions import Action, SandboxFacts, may_on_sandbox
from agentserver.models import Role

OW, M, D, G = Role.OWNER, Role.MAINTAINER, Role.DEVELOPER, Role.GUEST
OWN = SandboxFacts(own=True)
OTHERS = SandboxFacts(own=False)
OWN_PRIVATE = SandboxFacts(own=True, private=True)
OTHERS_PRIVATE = SandboxFacts(own=False, private=True)
OTHERS_SHARED = SandboxFacts(own=False, members_manage_all=True)
OTHERS_PRIVATE_SHARED = SandboxFacts(own=False, private=True, members_manage_all=True)

# The product rules, written independently of auth/permissions.py: (action, facts) → roles.
EXPECTED: list[tuple[Action, SandboxFacts, set[Role]]] = [
    (Action.MANAGE_SANDBOX, OWN, {OW, M, D}),
    (Action.MANAGE_SANDBOX, OTHERS, {OW, M}),
    (Action.MANAGE_SANDBOX, OTHERS_SHARED, {OW, M, D}),
    (Action.MANAGE_SANDBOX, OTHERS_PRIVATE, {OW, M}),
    (Action.MANAGE_SANDBOX, OTHERS_PRIVATE_SHARED, {OW, M, D}),
    (Action.SET_SANDBOX_PRIVATE, OWN, {OW, M, D}),
    (Action.SET_SANDBOX_PRIVATE, OWN_PRIVATE, {OW, M, D}),
    (Action.SET_SANDBOX_PRIVATE, OTHERS, {OW, M}),
    (Action.SET_SANDBOX_PRIVATE, OTHERS_SHARED, {OW, M}),
    (Action.SET_SANDBOX_PRIVATE, OTHERS_PRIVATE, {OW, M}),
    (Action.USE_SANDBOX, OTHERS, {OW, M, D}),
    (Action.USE_SANDBOX, OTHERS_PRIVATE, {OW, M}),
    (Action.USE_SANDBOX, OWN_PRIVATE, {OW, M, D}),
    (Action.VIEW_SANDBOX, OTHERS, {OW, M, D, G}),
    (Action.VIEW_SANDBOX, OTHERS_PRIVATE, {OW, M}),
    (Action.VIEW_SANDBOX, OTHERS_PRIVATE_SHARED, {OW, M}),
    (Action.VIEW_SANDBOX, OWN_PRIVATE, {OW, M, D, G}),
    (Action.VIEW_LOGS, OTHERS_PRIVATE, {OW, M}),
    (Action.VIEW_LOGS, OTHERS, {OW, M, D}),
    (Action.VIEW_SANDBOXES, OTHERS_PRIVATE, {OW, M, D, G}),
]


@pytest.mark.parametrize(("action", "facts", "roles"), EXPECTED)
@pytest.mark.parametrize("role", list(Role))
def test_sandbox_cell(role: Role, action: Action, facts: SandboxFacts, roles: set[Role]) -> None:
    """Each (role, action, sandbox) cell answers as the product rules say."""
    assert may_on_sandbox(role, action, facts) == (role in roles)


@pytest.mark.parametrize("facts", [OWN, OTHERS_PRIVATE_SHARED])
@pytest.mark.parametrize("action", list(Action))
def test_not_a_member_may_do_nothing_to_any_sandbox(action: Action, facts: SandboxFacts) -> None:
    """`None` (not a member) is denied every action, even on a sandbox marked as theirs."""
    assert not may_on_sandbox(None, action, facts)


def test_a_guest_manages_nothing_even_when_members_manage_all() -> None:
    """The workspace setting widens what developers may manage, never what guests may."""
    for facts in (OWN, OTHERS_SHARED, OTHERS_PRIVATE_SHARED):
        assert not may_on_sandbox(G, Action.MANAGE_SANDBOX, facts)
        assert not may_on_sandbox(G, Action.SET_SANDBOX_PRIVATE, facts)
