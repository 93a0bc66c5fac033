"""Password hashing (argon2id) and the rules for usernames and passwords."""

from __future__ import annotations

import functools
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import trio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from agentserver.auth.tokens import random_text
from agentserver.errors import Invalid, RateLimited

_HASHER = PasswordHasher()
_USERNAME = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{1,30}[a-z0-9])?$")
# No whitespace or control characters anywhere (PostgreSQL text cannot even hold NUL).
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")
MIN_PASSWORD = 8
MAX_PASSWORD = 256
# A fixed hash to verify against when the user does not exist, so timing does not tell.
_DUMMY = _HASHER.hash("agentserver-timing-equaliser")


def check_username(username: str) -> str:
    name = username.strip()
    if not _USERNAME.match(name.lower()) or len(name) < 3:
        raise Invalid(
            "username must be 3-32 characters: letters, digits, '.', '_' or '-', "
            "starting and ending with a letter or digit",
            field="username",
        )
    return name


def check_password(password: str, username: str | None = None) -> str:
    if len(password) < MIN_PASSWORD:
        raise Invalid(f"password must be at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise Invalid(f"password must be at most {MAX_PASSWORD} characters", field="password")
    if password.lower() in _common_passwords():
        raise Invalid(
            "this password is one of the most common ones (it would be guessed first); "
            "choose another",
            field="password",
        )
    if username and password.lower() == username.strip().lower():
        raise Invalid("the password must not be the username", field="password")
    return password


def generate_password(username: str) -> str:
    """A random password that passes the rules (an admin's reset, shown once): four groups
    of five lowercase letters and digits, about 103 bits."""
    alphabet = "abcdefghijkmnpqrstuvwxyz23456789"  # nothing that reads as another character
    while True:
        password = "-".join(random_text(5, alphabet) for _ in range(4))
        try:
            return check_password(password, username)
        except Invalid:  # practically never; draw again rather than hand out a weak one
            continue


@functools.cache
def _common_passwords() -> frozenset[str]:
    """The 30,000 most common passwords of leaked lists, as zxcvbn ships them (loaded once).

    Only its word-list file is run where it is a file: importing the `zxcvbn` package builds
    ranked dictionaries of every list it has (names, English words, TV titles), ~17 MB more
    than this needs. In a bundle without the source file, the package is imported after all.
    """
    spec = importlib.util.find_spec("zxcvbn")
    folders = (spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "frequency_lists.py" if folders else None
    lists = importlib.util.spec_from_file_location("_zxcvbn_lists", path) if path else None
    if path is None or not path.is_file() or lists is None or lists.loader is None:
        from zxcvbn.frequency_lists import FREQUENCY_LISTS

        return frozenset(FREQUENCY_LISTS["passwords"])
    module = importlib.util.module_from_spec(lists)
    lists.loader.exec_module(module)
    return frozenset(module.FREQUENCY_LISTS["passwords"])


def check_email(email: str) -> str:
    value = email.strip()
    if len(value) > 254 or not _EMAIL.match(value):
        raise Invalid("email is not a valid address", field="email")
    return value


# argon2 takes 64 MiB and ~0.1 s of a core per hash: a few at once, and a short queue.
ARGON2_AT_ONCE = 2
ARGON2_MAX_WAITING = 16
T = TypeVar("T")
_ARGON2: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("argon2")


def argon2_limiter() -> trio.CapacityLimiter:
    """The limiter every password hash and check of this server goes through."""
    try:
        return _ARGON2.get()
    except LookupError:
        limiter = trio.CapacityLimiter(ARGON2_AT_ONCE)
        _ARGON2.set(limiter)
        return limiter


async def _argon2(work: Callable[[], T]) -> T:
    limiter = argon2_limiter()
    if limiter.statistics().tasks_waiting >= ARGON2_MAX_WAITING:
        raise RateLimited("the server is busy checking passwords; try again", retry_after=1)
    return await trio.to_thread.run_sync(work, limiter=limiter)


async def hash_password(password: str) -> str:
    return await _argon2(lambda: _HASHER.hash(password))


async def verify_password(stored: str | None, password: str) -> bool:
    """True when `password` matches `stored`; runs the same work when there is no hash."""

    def work() -> bool:
        try:
            return _HASHER.verify(stored or _DUMMY, password) and stored is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    return await _argon2(work)
