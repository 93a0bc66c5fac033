"""Which account a GitHub / OIDC identity signs in as: the linking rules and their transaction."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from agentserver.auth import passwords
from agentserver.auth.tokens import new_id
from agentserver.db.database import Database, Tx
from agentserver.errors import AgentServerError, Invalid
from agentserver.models import User

MAX_NUMBERED = 50


class SignInFailed(AgentServerError):
    """A sign-in with an external provider did not complete; nobody was signed in."""

    def __init__(self, message: str, *, status: int = 400, code: str = "sign_in_failed") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """What a provider vouched for, after its signature or API answer was checked."""

    provider: str  # the OIDC issuer, or the GitHub OAuth base URL
    subject: str  # the provider's stable id for the person (never the email)
    email: str | None
    email_verified: bool  # True only when the provider said so with a JSON boolean `true`
    username_hints: tuple[str, ...] = ()
    provider_name: str = "the provider"


@dataclass(frozen=True, slots=True)
class Policy:
    """The server's rules for SSO sign-ins."""

    link_by_email: bool = True
    allowed_domains: tuple[str, ...] = ()
    open_signup: bool = True  # new accounts may be created (the first user always may)


@dataclass(frozen=True, slots=True)
class SignIn:
    user_id: str


@dataclass(frozen=True, slots=True)
class Link:
    user_id: str


@dataclass(frozen=True, slots=True)
class Create:
    email: str | None


@dataclass(frozen=True, slots=True)
class Refuse:
    status: int
    code: str
    message: str


Decision = SignIn | Link | Create | Refuse


def email_domain(email: str) -> str:
    """The whole domain after the last `@`, lower-cased (compared exactly, never as a suffix)."""
    return email.rpartition("@")[2].strip().lower()


def domain_allowed(identity: ExternalIdentity, allowed: tuple[str, ...]) -> bool:
    """With an allow-list, only a verified email whose exact domain is listed gets in."""
    if not allowed:
        return True
    if identity.email is None or not identity.email_verified:
        return False
    return email_domain(identity.email) in {d.strip().lower().lstrip("@") for d in allowed}


def decide(
    identity: ExternalIdentity,
    policy: Policy,
    *,
    linked_user: str | None,
    email_owner: str | None,
    owner_email_verified: bool,
    may_create: bool,
) -> Decision:
    """The one place that says whether an identity signs in, links, gets an account, or is refused.

    `linked_user` is the account this (provider, subject) already belongs to; `email_owner` is an
    existing account with the identity's email (looked up only for new identities), and
    `owner_email_verified` whether a provider ever vouched for that account's address.
    """
    if not domain_allowed(identity, policy.allowed_domains):
        return Refuse(
            403,
            "domain_not_allowed",
            "Your email domain is not allowed to sign in to this server (a verified "
            "email address from an allowed domain is required).",
        )
    if linked_user is not None:
        return SignIn(linked_user)
    if email_owner is not None:
        if not identity.email_verified:
            return Refuse(
                409,
                "email_not_verified",
                f"An account with the email {identity.email} already exists, but "
                f"{identity.provider_name} did not confirm that this address is verified, "
                "so the sign-in was not linked to it. Sign in with your password instead.",
            )
        if not owner_email_verified:
            # Both must vouch: an address typed in at registration could be anyone's, and
            # linking to it would hand this person's sign-in to whoever registered it.
            return Refuse(
                409,
                "account_email_unconfirmed",
                f"An account with the email {identity.email} already exists, but that "
                "address was typed in when the account was registered and was never "
                "confirmed, so this sign-in was not linked to it. Sign in with your "
                "password instead.",
            )
        if policy.link_by_email:
            return Link(email_owner)
        return Refuse(
            409,
            "email_taken",
            f"An account with the email {identity.email} already exists and this server "
            "does not link sign-in providers to existing accounts by email. Sign in with "
            "your password, or ask an admin.",
        )
    if not may_create:
        return Refuse(
            403,
            "registration_closed",
            "This server does not create new accounts on sign-in; ask an admin.",
        )
    # An unverified address is not stored: it could block or later capture its real owner's account.
    return Create(email=identity.email if identity.email_verified else None)


def sanitise_username(hint: str) -> str | None:
    """A username that passes our rules, made from a provider's login, name or email."""
    text = unicodedata.normalize("NFKD", hint).encode("ascii", "ignore").decode().strip().lower()
    text = text.partition("@")[0]
    text = re.sub(r"[^a-z0-9._-]+", "-", text)
    text = re.sub(r"([._-])[._-]+", r"\1", text).strip("._-")[:28].strip("._-")
    if not text:
        return None
    if len(text) < 3:
        text = f"{text}-user"
    try:
        return passwords.check_username(text)
    except Invalid:
        return None


def username_candidates(hints: tuple[str, ...]) -> Iterator[str]:
    """The best name from the hints, then `name-2`, `name-3`, …, then a random suffix."""
    base = next((n for n in map(sanitise_username, hints) if n), "user")
    yield base
    for number in range(2, MAX_NUMBERED + 1):
        yield f"{base}-{number}"
    while True:
        yield f"{base}-{new_id(6)}"


def _free_username(tx: Tx, hints: tuple[str, ...]) -> str:
    for candidate in username_candidates(hints):
        if tx.one("get_user_by_username", User, username=candidate) is None:
            return candidate
    raise AssertionError("unreachable: the candidates never end")


def resolve_in(tx: Tx, identity: ExternalIdentity, policy: Policy) -> tuple[User, bool]:
    """Apply `decide` inside one transaction: the account, and whether it was created now;
    raises SignInFailed on a refusal."""
    key = {"provider": identity.provider, "subject": identity.subject}
    linked = tx.scalar("oidc_get_identity_user", **key)
    owner: User | None = None
    owner_verified = may_create = False
    if linked is None:
        # Serialises with registrations and other first sign-ins (one first admin, no dup emails).
        tx.exec("lock_users")
        linked = tx.scalar("oidc_get_identity_user", **key)
        if linked is None and identity.email:
            owner = tx.one("oidc_get_user_by_email", User, email=identity.email)
            if owner is not None:
                owner_verified = bool(tx.scalar("oidc_email_verified", id=owner.id))
        may_create = policy.open_signup or tx.scalar("count_users") == 0
    decision = decide(
        identity,
        policy,
        linked_user=linked,
        email_owner=owner.id if owner else None,
        owner_email_verified=owner_verified,
        may_create=may_create,
    )
    match decision:
        case Refuse(status, code, message):
            raise SignInFailed(message, status=status, code=code)
        case SignIn(user_id):
            tx.exec("oidc_touch_identity", email=identity.email, **key)
        case Link(user_id):
            tx.exec("oidc_create_identity", user_id=user_id, email=identity.email, **key)
        case Create(email):
            username = _free_username(tx, identity.username_hints)
            created = tx.one(
                "create_user",
                User,
                username=username,
                email=email,
                email_verified=email is not None,  # Create carries only a verified address
                password_hash=None,
            )
            assert created is not None
            user_id = created.id
            tx.exec("oidc_create_identity", user_id=user_id, email=identity.email, **key)
    user = tx.one("get_user", User, id=user_id)
    assert user is not None
    return user, isinstance(decision, Create)


async def resolve_identity(
    db: Database, identity: ExternalIdentity, policy: Policy
) -> tuple[User, bool]:
    """The account `identity` signs in as (linking or creating one when the rules allow), and
    whether it was created just now (a registration, for the audit log)."""
    return await db.transaction(lambda tx: resolve_in(tx, identity, policy))
