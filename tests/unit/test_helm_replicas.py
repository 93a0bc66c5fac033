"""The Helm chart with several replicas (issue 16): each pod tells the others where to reach it,
drains within its termination grace, and the replicas spread over nodes behind one Service.

Rendered as tests/unit/test_helm_chart.py does (its goldens cover the `replicas` scenario).
"""

from __future__ import annotations

from typing import Any

from agentserver.settings import OPTIONS
from tests.unit.test_helm_chart import deployment, env_of, objects, render, values_of


def parsed(env_name: str, text: str) -> object:
    """`text` as `agentserver serve` reads the variable `env_name` (ValueError if it refuses)."""
    option = next(o for o in OPTIONS if o.env == env_name)
    return option.parse(text)


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(objs)["spec"]["template"]["spec"]
    return spec


def test_each_pod_advertises_its_pod_ip_and_port_as_its_relay_url() -> None:
    """POD_IP (downward API) comes before the relay URL that uses it (Kubernetes substitutes
    only earlier variables), and the URL, filled in, is one the server accepts."""
    objs = objects(render(values_of("replicas")))
    names = [e["name"] for e in pod_spec(objs)["containers"][0]["env"]]
    env = env_of(objs)
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["AGENTSERVER_RELAY_URL"]["value"] == "http://$(POD_IP):8080"
    assert names.index("POD_IP") < names.index("AGENTSERVER_RELAY_URL")
    filled = env["AGENTSERVER_RELAY_URL"]["value"].replace("$(POD_IP)", "10.1.2.3")
    assert parsed("AGENTSERVER_RELAY_URL", filled) == "http://10.1.2.3:8080"


def test_the_container_port_moves_the_listen_address_the_port_and_the_relay_url() -> None:
    values = values_of("replicas") | {"containerPort": 9090}
    objs = objects(render(values))
    env = env_of(objs)
    assert env["AGENTSERVER_LISTEN"]["value"] == "0.0.0.0:9090"
    assert env["AGENTSERVER_RELAY_URL"]["value"] == "http://$(POD_IP):9090"
    port = pod_spec(objs)["containers"][0]["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 9090)


def test_the_relay_secret_comes_from_an_existing_secret() -> None:
    env = env_of(objects(render(values_of("replicas"))))
    ref = env["AGENTSERVER_RELAY_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "agentserver-relay", "key": "relay-secret"}


def test_without_one_the_replicas_make_the_relay_secret_in_the_database() -> None:
    """No relay secret in the chart: no variable, and none generated into the chart's Secret
    (a random one per render would differ between upgrades)."""
    objs = objects(render(values_of("three-replicas")))
    assert "AGENTSERVER_RELAY_SECRET" not in env_of(objs)
    secret = next(o for o in objs if o["kind"] == "Secret")
    assert not [key for key in secret["stringData"] if "relay" in key]


def test_the_termination_grace_is_the_servers_drain_plus_a_margin() -> None:
    """One value sets both: the server drains for shutdownGraceSeconds, Kubernetes waits 15 s
    more before it kills the pod."""
    objs = objects(render(values_of("replicas")))
    grace = env_of(objs)["AGENTSERVER_SHUTDOWN_GRACE"]["value"]
    assert parsed("AGENTSERVER_SHUTDOWN_GRACE", grace) == 45.0
    assert pod_spec(objs)["terminationGracePeriodSeconds"] == 45 + 15
    default = objects(render(values_of("one-liner")))
    assert env_of(default)["AGENTSERVER_SHUTDOWN_GRACE"]["value"] == "30s"
    assert pod_spec(default)["terminationGracePeriodSeconds"] == 30 + 15


def test_several_replicas_may_lose_one_pod_at_a_time_to_a_disruption() -> None:
    objs = objects(render(values_of("replicas")))
    budget = next(o for o in objs if o["kind"] == "PodDisruptionBudget")
    assert budget["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in budget["spec"]
    assert budget["spec"]["selector"] == deployment(objs)["spec"]["selector"]


def test_a_minimum_available_replaces_the_budgets_maximum_unavailable() -> None:
    budget = next(
        o
        for o in objects(render(values_of("three-replicas")))
        if o["kind"] == "PodDisruptionBudget"
    )
    assert budget["spec"]["minAvailable"] == 2
    assert "maxUnavailable" not in budget["spec"]


def test_several_replicas_prefer_different_nodes() -> None:
    objs = objects(render(values_of("replicas")))
    pod = pod_spec(objs)
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert (
        "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    )
    [term] = [p["podAffinityTerm"] for p in preferred]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    labels = deployment(objs)["spec"]["template"]["metadata"]["labels"]
    assert term["labelSelector"]["matchLabels"].items() <= labels.items()


def test_one_replica_has_no_affinity_and_a_given_affinity_wins() -> None:
    assert "affinity" not in pod_spec(objects(render(values_of("one-liner"))))
    given = values_of("three-replicas")["affinity"]
    assert pod_spec(objects(render(values_of("three-replicas"))))["affinity"] == given


def test_one_cluster_ip_service_spreads_over_every_replica() -> None:
    """Any replica serves any request: no per-pod Service, no session affinity."""
    objs = objects(render(values_of("replicas")))
    [service] = [o for o in objs if o["kind"] == "Service"]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"].get("sessionAffinity", "None") == "None"
    assert service["spec"]["selector"] == deployment(objs)["spec"]["selector"]["matchLabels"]
    assert deployment(objs)["spec"]["replicas"] == 2
