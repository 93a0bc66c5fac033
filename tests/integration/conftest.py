"""Fixtures shared by integration tests beyond the root conftest (sandbox servers)."""

from tests.support.cluster import shared_backend
from tests.support.kube_api.fixtures import kube_api, kube_api_served
from tests.support.lifecycle_world import lifecycle
from tests.support.preview_world import previews
from tests.support.proxy_world import world
from tests.support.replicas import replicas
from tests.support.sandboxes import sandbox_server, sandbox_settings
from tests.support.server_paths import server_path

__all__ = [
    "kube_api",
    "kube_api_served",
    "lifecycle",
    "previews",
    "replicas",
    "sandbox_server",
    "sandbox_settings",
    "server_path",
    "shared_backend",
    "world",
]
