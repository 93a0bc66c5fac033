"""The Kubernetes backend's settings: the backend's names, quantities, labels and namespaces."""

from __future__ import annotations

import pytest

from agentserver.errors import ConfigError
from agentserver.settings import build_settings


@pytest.mark.parametrize("name", ["kubernetes", "k8s", "KUBERNETES"])
def test_kubernetes_and_k8s_name_the_same_backend(name: str) -> None:
    """`--backend k8s` (the Helm value) and `kubernetes` choose the same backend."""
    assert build_settings({"backend": name}, {}).backend == "kubernetes"
    assert build_settings({}, {"AGENTSERVER_BACKEND": name}).backend == "kubernetes"


def test_kube_defaults() -> None:
    """Per-workspace namespaces, 5Gi homes and our pods known by their app name by default."""
    s = build_settings({}, {})
    assert s.kube_namespace is None
    assert s.kube_namespace_prefix == "agent-ws"
    assert s.home_size == "5Gi"
    assert s.kube_server_labels == (("app.kubernetes.io/name", "agentserver"),)


def test_kube_values_are_read() -> None:
    """Quantities, a namespace, a storage class and several labels are taken as given."""
    s = build_settings(
        {
            "kube_namespace": "sandboxes",
            "home_size": "10Gi",
            "workspace_disk_size": "1.5Ti",
            "kube_cpu_request": "500m",
            "workspace_storage_class": "efs.csi.aws.com",
            "kube_server_labels": "app=agentserver, tier=web",
        },
        {},
    )
    assert (s.kube_namespace, s.home_size, s.workspace_disk_size) == ("sandboxes", "10Gi", "1.5Ti")
    assert s.kube_cpu_request == "500m"
    assert s.workspace_storage_class == "efs.csi.aws.com"
    assert s.kube_server_labels == (("app", "agentserver"), ("tier", "web"))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"home_size": "5 gigs"}, "--home-size"),
        ({"kube_memory_request": "-1Gi"}, "--kube-memory-request"),
        ({"kube_namespace": "Not_A_Namespace"}, "--kube-namespace"),
        ({"kube_server_labels": "no-equals-sign"}, "--kube-server-labels"),
    ],
)
def test_bad_kube_values_name_their_flag(values: dict[str, str], named: str) -> None:
    """A value Kubernetes would refuse is refused at start, naming its flag."""
    with pytest.raises(ConfigError, match=named):
        build_settings(values, {})
