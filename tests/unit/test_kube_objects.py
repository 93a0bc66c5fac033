"""The Kubernetes backend's object builder: golden objects per agent kind and setting, each
valid against the agent-sandbox v1beta1 CRD (or the core schemas), with no secret inline.

After a deliberate change, rewrite the golden files with
`UPDATE_GOLDEN=1 pytest tests/unit/test_kube_objects.py` and review the diff.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentserver.models import SandboxType
from agentserver.sandboxes import kube_objects as ko
from agentserver.sandboxes.base import SandboxSpec
from agentserver.settings import Settings, build_settings
from tests.support.kube_api.resources import (
    NAMESPACES,
    NETWORK_POLICIES,
    PVCS,
    SANDBOXES,
    SECRETS,
)
from tests.support.kube_api.validation import validate

GOLDEN = Path(__file__).parent / "golden" / "kube"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
NOW = datetime(2026, 12, 6, 12, 0, 0, tzinfo=UTC)
REAL_KEY = "sk-ant-api03-real-key"
REAL_TOKEN = "real-bearer-token"
RESOURCE = {
    "Sandbox": SANDBOXES,
    "Secret": SECRETS,
    "Namespace": NAMESPACES,
    "PersistentVolumeClaim": PVCS,
    "NetworkPolicy": NETWORK_POLICIES,
}
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def settings(**values: str) -> Settings:
    base: dict[str, str | None] = {
        "backend": "kubernetes",
        "anthropic_api_key": REAL_KEY,
        "anthropic_auth_token": REAL_TOKEN,
        "openclaw_image": "agentserver-openclaw:latest",
    }
    base.update(values)
    return build_settings(base, {})


def spec(kind: SandboxType = SandboxType.OPENCODE, **changes: Any) -> SandboxSpec:
    values: dict[str, Any] = {
        "id": "abc123def456ghi7",
        "workspace_id": "wsp0000000000001",
        "type": kind,
        "agent_secret": "agent-secret-value",
        "llm_base_url": "http://agentserver.agentserver.svc:8080/proxy/anthropic",
        "proxy_token": "proxy-token-value",
        "idle_timeout": 1800.0,
    }
    values.update(changes)
    return SandboxSpec(**values)


CASES: dict[str, tuple[SandboxSpec, Settings]] = {
    "opencode-default": (spec(), settings()),
    "openclaw-default": (spec(SandboxType.OPENCLAW), settings()),
    "opencode-gvisor-one-namespace": (
        spec(
            env={"GITHUB_TOKEN": "ghp_users_own", "LEAK": REAL_KEY},
            git_url="https://github.com/example/repo.git",
            git_ref="main",
        ),
        settings(
            runtime_class="gvisor",
            kube_namespace="sandboxes",
            home_size="10Gi",
            workspace_disk_size="100Gi",
            workspace_storage_class="efs-rwx",
            kube_cpu_request="1",
            kube_memory_request="1Gi",
            agent_memory_limit="4GiB",
            agent_nano_cpus="1500000000",
            kube_server_labels="app=agentserver,tier=web",
            kube_server_namespace="platform",
        ),
    ),
    "opencode-never-idle-no-limits": (
        spec(idle_timeout=0.0),
        settings(agent_memory_limit="0", agent_nano_cpus="0"),
    ),
}


def objects(case: str) -> dict[str, Any]:
    sandbox_spec, config = CASES[case]
    namespace = config.kube_server_namespace or "agentserver"
    return {
        "sandbox": ko.sandbox_object(sandbox_spec, config, NOW),
        "secret": ko.secret_object(sandbox_spec, config),
        "namespace": ko.namespace_object(sandbox_spec.workspace_id, config),
        "disk": ko.disk_object(sandbox_spec.workspace_id, config),
        "networkPolicy": ko.network_policy(config, namespace),
    }


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_match_their_golden_file(case: str) -> None:
    """What the builder makes for each agent kind and setting is exactly the reviewed file."""
    path = GOLDEN / f"{case}.json"
    text = json.dumps(objects(case), indent=2, sort_keys=True) + "\n"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text


@pytest.mark.parametrize("case", sorted(CASES))
def test_objects_are_valid_for_the_api_server(case: str) -> None:
    """Every object passes the API server's checks: the Sandbox the v1beta1 CRD schema
    (unknown fields and wrong enums refused), the rest the core schemas and name rules."""
    for obj in objects(case).values():
        validate(RESOURCE[obj["kind"]], json.loads(json.dumps(obj)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_secret_is_inline_and_the_real_key_is_nowhere(case: str) -> None:
    """The Sandbox object holds no secret value (they are in the Secret, by reference), and
    the real Anthropic key or token is in no object at all."""
    sandbox_spec, _ = CASES[case]
    built = objects(case)
    sandbox_text = json.dumps(built["sandbox"])
    secrets = [sandbox_spec.agent_secret, sandbox_spec.proxy_token, "ghp_users_own"]
    for value in secrets:
        assert value not in sandbox_text
    decoded = [base64.b64decode(v).decode() for v in built["secret"]["data"].values()]
    everything = json.dumps(built) + json.dumps(decoded)
    assert REAL_KEY not in everything
    assert REAL_TOKEN not in everything
    assert any(sandbox_spec.proxy_token in value for value in decoded)


def test_the_pod_reads_every_secret_from_the_sandboxes_secret() -> None:
    """Each variable the Secret holds reaches the agent by `secretKeyRef` into that Secret."""
    sandbox_spec, config = CASES["opencode-gvisor-one-namespace"]
    secret = ko.secret_object(sandbox_spec, config)
    pod = ko.sandbox_object(sandbox_spec, config, NOW)["spec"]["podTemplate"]["spec"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert {r["name"] for r in refs.values()} == {secret["metadata"]["name"]}
    assert {r["key"] for r in refs.values()} == set(secret["data"])
    assert {"OPENCODE_SERVER_PASSWORD", "OPENCODE_CONFIG_CONTENT", "GITHUB_TOKEN"} <= set(refs)
    assert "LEAK" not in refs  # a variable whose value is the real key is dropped


def test_sandbox_pods_run_as_the_images_user_with_writable_volumes() -> None:
    """Non-root as the image's uid 1000, fsGroup so fresh PVCs are writable, no token mounted."""
    pod = ko.pod_spec(*CASES["opencode-default"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["fsGroup"] == 1000
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/home/agent", "/data/disk0"} <= mounts


def test_shutdown_time_is_a_little_past_the_idle_timeout() -> None:
    """shutdownTime is the idle timeout plus the margin from now; none when never idle."""
    assert ko.shutdown_time(1800, NOW) == "2026-12-06T12:40:00Z"
    assert ko.shutdown_time(0, NOW) is None


def test_running_again_puts_the_shutdown_time_off_or_removes_it() -> None:
    """The resume patch runs the Sandbox with a fresh shutdownTime and the timeout it follows;
    for a workspace that never idles, it removes the shutdownTime (null in a merge patch)."""
    patch = ko.running_patch(600, NOW)
    assert patch["spec"] == {"operatingMode": "Running", "shutdownTime": "2026-12-06T12:20:00Z"}
    assert patch["metadata"]["annotations"] == {ko.ANNOTATION_IDLE: "600"}
    assert ko.running_patch(0, NOW)["spec"]["shutdownTime"] is None


@given(st.text(min_size=1, max_size=120))
def test_sandbox_names_are_dns_1035_labels(sandbox_id: str) -> None:
    """Whatever the id, the Sandbox's name is a DNS-1035 label of at most 63 characters."""
    name = ko.sandbox_name(sandbox_id)
    assert DNS_1035.fullmatch(name)
    assert len(name) <= 63
    assert DNS_1035.fullmatch(ko.secret_name(sandbox_id))
    assert len(ko.secret_name(sandbox_id)) <= 63


def test_distinct_ids_that_clean_up_alike_get_distinct_names() -> None:
    """Two ids that differ only in characters a name cannot hold still name two objects."""
    assert ko.sandbox_name("AB_c") != ko.sandbox_name("ab-c")
    assert ko.sandbox_name("x" * 80) != ko.sandbox_name("x" * 81)


def ready(status: str, reason: str, message: str = "", **extra: Any) -> dict[str, Any]:
    """A Sandbox at generation 2 whose Ready condition says `status` for `reason`."""
    mode, ips = extra.pop("mode", "Running"), extra.pop("ips", ["127.1.2.3"])
    condition = {"type": "Ready", "status": status, "reason": reason, "message": message}
    return {
        "metadata": {"generation": 2},
        "spec": {"operatingMode": mode},
        "status": {"conditions": [condition | extra], "podIPs": ips},
    }


@pytest.mark.parametrize(
    ("obj", "address", "failed"),
    [
        (ready("True", "DependenciesReady"), "127.1.2.3", None),
        (ready("True", "DependenciesReady", observedGeneration=1), None, None),
        (ready("False", "DependenciesNotReady", "Pod is not Ready"), None, None),
        (ready("False", "PodFailed", "Pod failed: boom"), None, "PodFailed: Pod failed: boom"),
        (ready("False", "InvalidConfiguration"), None, "InvalidConfiguration"),
        (
            ready("False", "DependenciesNotReady", "container waiting: ErrImagePull"),
            None,
            "DependenciesNotReady: container waiting: ErrImagePull",
        ),
        ({"metadata": {}, "spec": {}}, None, None),
    ],
)
def test_status_reading(obj: dict[str, Any], address: str | None, failed: str | None) -> None:
    """Ready (for the current generation) with an address gives the endpoint; a terminal
    reason gives a failure with a readable text; anything else means wait."""
    assert ko.pod_ip(obj) == address
    assert ko.failure(obj) == failed


def test_suspended_means_no_pod_left() -> None:
    """Suspended counts as stopped only once the pod's address is gone."""
    assert not ko.suspended(ready("False", "SandboxSuspended", mode="Suspended"))
    assert ko.suspended(ready("False", "SandboxSuspended", mode="Suspended", ips=[]))


class _Agent(http.server.BaseHTTPRequestHandler):
    """Answers like opencode: 200 with its password, 401 without."""

    def do_GET(self) -> None:
        good = self.headers.get("authorization") == AUTHORIZATION
        self.send_response(200 if good else 401)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


AUTHORIZATION = "Basic b3BlbmNvZGU6YWdlbnQtc2VjcmV0LXZhbHVl"  # opencode:agent-secret-value


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node, as the sandbox image has")
@pytest.mark.parametrize(("authorization", "ready"), [(AUTHORIZATION, True), ("Basic x", False)])
def test_the_readiness_probe_passes_only_with_the_agents_credentials(
    authorization: str, ready: bool
) -> None:
    """The pod's exec probe (node in the image) succeeds only when the agent accepts the
    credentials from the Secret, as kinds.py's readiness rule says."""
    sandbox_spec, config = CASES["opencode-default"]
    assert ko.secret_values(sandbox_spec, config)[ko.SECRET_PREFIX + ko.PROBE_VARIABLE] == (
        AUTHORIZATION
    )
    command = ko.pod_spec(sandbox_spec, config)["containers"][0]["readinessProbe"]["exec"]
    server = http.server.HTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        argv = list(command["command"])
        argv[4] = argv[4].replace("127.0.0.1:4096", f"127.0.0.1:{server.server_port}")
        env = {**os.environ, ko.PROBE_VARIABLE: authorization}
        result = subprocess.run(argv, env=env, timeout=30, check=False)
    finally:
        server.shutdown()
        thread.join()
    assert (result.returncode == 0) == ready


def test_pods_match_the_sandbox_image_as_it_is_built() -> None:
    """container/sandbox.Dockerfile runs unchanged: the pod runs as the image's agent uid and
    gid (fsGroup making the volumes its own) and mounts its home and disk where it has them."""
    dockerfile = (Path(__file__).resolve().parents[2] / "container/sandbox.Dockerfile").read_text()
    user = re.search(r"useradd --uid (\d+) --gid (\d+) .*--home-dir (\S+)", dockerfile)
    assert user is not None
    uid, gid, home = int(user[1]), int(user[2]), user[3]
    assert "mkdir -p /data/disk0" in dockerfile
    pod = ko.pod_spec(*CASES["opencode-default"])
    context = pod["securityContext"]
    assert (context["runAsUser"], context["runAsGroup"], context["fsGroup"]) == (uid, gid, gid)
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {home, "/data/disk0"} <= mounts
    assert "node" in pod["containers"][0]["readinessProbe"]["exec"]["command"][0]
    assert re.search(r"\bnodejs\b", dockerfile)  # the probe's runtime is in the image
