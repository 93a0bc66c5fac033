"""Metric label values come from fixed sets (api/metrics.py)."""

from __future__ import annotations

import pytest

from agentserver.api.metrics import method_label, metrics_allowed, status_label


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("GET", "GET"),
        ("PATCH", "PATCH"),
        ("OPTIONS", "OPTIONS"),
        ("BREW", "other"),
        ("get", "other"),
    ],
)
def test_methods_outside_the_standard_set_are_other(method: str, label: str) -> None:
    """Standard methods label as themselves; anything else as "other"."""
    assert method_label(method) == label


@pytest.mark.parametrize(
    ("status", "label"), [(200, "200"), (404, "404"), (599, "other"), (1000, "other")]
)
def test_unregistered_statuses_are_other(status: int, label: str) -> None:
    """Registered status codes label as themselves; others as "other"."""
    assert status_label(status) == label


@pytest.mark.parametrize(
    ("token", "authorization", "allowed"),
    [
        (None, None, True),
        ("s3cret", None, False),
        ("s3cret", "Bearer s3cret", True),
        ("s3cret", "bearer s3cret", True),
        ("s3cret", "Bearer s3cre", False),
        ("s3cret", "Basic s3cret", False),
        ("s3cret", "s3cret", False),
    ],
)
def test_metrics_access(token: str | None, authorization: str | None, allowed: bool) -> None:
    """With a token only `Bearer <token>` reads the metrics; without one anyone may."""
    assert metrics_allowed(token, authorization) is allowed
