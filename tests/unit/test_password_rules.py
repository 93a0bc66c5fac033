"""Password rules: long enough, not too long, not a common password, not the username."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentserver.auth.passwords import check_password
from agentserver.errors import Invalid


@pytest.mark.parametrize(
    "password", ["password", "Password1", "qwertyuiop", "ILOVEYOU", "12345678"]
)
def test_common_passwords_are_refused(password: str) -> None:
    """A password from the common-passwords list is refused, whatever its letter case."""
    with pytest.raises(Invalid, match="most common") as refused:
        check_password(password)
    assert refused.value.field == "password"


def test_the_username_is_not_a_password() -> None:
    """A password equal to the username (any case) is refused."""
    with pytest.raises(Invalid, match="must not be the username"):
        check_password("Alice-the-Admin", "alice-the-admin")


@pytest.mark.parametrize(
    ("password", "message"), [("short", "at least 8"), ("x" * 257, "at most 256")]
)
def test_length_limits(password: str, message: str) -> None:
    """Too short and too long passwords are refused with the limit named."""
    with pytest.raises(Invalid, match=message):
        check_password(password)


def test_an_uncommon_password_passes() -> None:
    """A password of good length that is not on the list is accepted as it is."""
    assert check_password("correct-horse", "alice") == "correct-horse"


def test_the_list_is_read_without_zxcvbns_dictionaries() -> None:
    """Loading the common-password list runs only zxcvbn's word-list file, not the package
    (whose import builds ~17 MB of ranked dictionaries this never uses)."""
    code = (
        "import sys; from agentserver.auth import passwords;"
        "assert 'password' in passwords._common_passwords();"
        "print('zxcvbn' in sys.modules, 'zxcvbn.matching' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
