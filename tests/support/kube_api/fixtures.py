"""pytest fixtures: `kube_api` (a running stand-in) and `kube_api_served` (override to vary)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import opencode_binary
from tests.support.kube_api.resources import ServedVersion
from tests.support.kube_api.standin import KubeApi, open_kube_api


@pytest.fixture
def kube_api_served() -> ServedVersion:
    """Which agent-sandbox version discovery announces; parametrize it to change it."""
    return "v1beta1"


@pytest.fixture
def kube_api(tmp_path: Path, kube_api_served: ServedVersion) -> Iterator[KubeApi]:
    """A stand-in Kubernetes API server on 127.0.0.1 with its controller; `kubeconfig_path`
    points the official client at it. Sync, so it serves sync and trio tests alike."""
    with open_kube_api(
        tmp_path / "kube", served=kube_api_served, opencode_bin=opencode_binary()
    ) as api:
        yield api
