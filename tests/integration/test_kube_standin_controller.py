"""The stand-in's agent-sandbox controller: Sandboxes become local opencode pods and back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from kubernetes import client, watch

from tests.support.kube_api import KubeApi, objects
from tests.support.kube_api.fixtures import kube_api, kube_api_served

__all__ = ["kube_api", "kube_api_served"]

GROUP, VERSION = "agents.x-k8s.io", "v1beta1"
PASSWORD = "pw-of-the-agent"
WAIT = 60  # seconds: opencode may take a while to start on a loaded machine


@pytest.fixture
def custom(kube_api: KubeApi) -> client.CustomObjectsApi:
    api = client.CustomObjectsApi(kube_api.api_client())
    core = client.CoreV1Api(api.api_client)
    core.create_namespace(objects.namespace("ws"))
    core.create_namespaced_secret("ws", objects.secret("agent", {"password": PASSWORD}))
    return api


@pytest.fixture
def needs_opencode(opencode_bin: str) -> None:
    """Skip when opencode is not installed (the kube_api fixture finds it the same way)."""


def ready(sandbox: dict[str, Any]) -> dict[str, Any]:
    for condition in sandbox.get("status", {}).get("conditions", []):
        if condition["type"] == "Ready":
            return dict(condition)
    return {}


def wait_for(
    custom: client.CustomObjectsApi, name: str, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """The Sandbox once `check` holds, followed with a watch (no polling)."""
    stream = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "ws",
        "sandboxes",
        field_selector=f"metadata.name={name}",
        timeout_seconds=WAIT,
    )
    last = None
    for event in stream:
        last = event["object"]
        if event["type"] != "DELETED" and check(event["object"]):
            stream.close()
            return dict(event["object"])
    raise AssertionError(f"sandbox {name} never got there; last seen: {last}")


def create(custom: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = custom.create_namespaced_custom_object(
        GROUP, VERSION, "ws", "sandboxes", body
    )
    return created


def is_ready(sandbox: dict[str, Any]) -> bool:
    return ready(sandbox).get("status") == "True"


def reason_is(reason: str) -> Callable[[dict[str, Any]], bool]:
    return lambda sandbox: ready(sandbox).get("reason") == reason


@pytest.mark.usefixtures("needs_opencode")
def test_a_running_sandbox_becomes_ready_with_opencode_answering(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """Ready=True with a pod IP of its own, the Service's FQDN, and opencode answering at
    `http://<podIP>:<port>/` with the password from the Secret (and 401 without)."""
    create(custom, objects.agent_sandbox("sb"))
    sandbox = wait_for(custom, "sb", is_ready)
    (ip,) = sandbox["status"]["podIPs"]
    assert ip.startswith("127.")
    assert ip != "127.0.0.1"
    assert sandbox["status"]["serviceFQDN"] == "sb.ws.svc.cluster.local"
    assert ready(sandbox)["reason"] == "DependenciesReady"
    url = f"http://{ip}:{objects.AGENT_PORT}/"
    assert httpx.get(url, auth=("opencode", PASSWORD), timeout=30).status_code == 200
    assert httpx.get(url, timeout=30).status_code == 401
    pod = kube_api.get("pods", "ws", "sb")
    assert pod is not None
    assert pod["metadata"]["labels"]["app"] == "agent"
    assert pod["status"]["podIP"] == ip
    assert pod["metadata"]["ownerReferences"][0]["uid"] == sandbox["metadata"]["uid"]
    service = kube_api.get("services", "ws", "sb")
    assert service is not None
    assert service["spec"]["clusterIP"] == "None"
    log = client.CoreV1Api(custom.api_client).read_namespaced_pod_log(
        "sb", "ws", container="agent", tail_lines=5
    )
    assert f"listening on http://{ip}:{objects.AGENT_PORT}" in log


@pytest.mark.usefixtures("needs_opencode")
def test_suspend_stops_the_agent_and_resume_brings_it_back(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """Suspended: the process ends, the Pod goes, podIPs are cleared, the home PVC stays;
    Running again: a new agent with the same home."""
    create(custom, objects.agent_sandbox("sb"))
    wait_for(custom, "sb", is_ready)
    agent = kube_api.agent("ws", "sb")
    assert agent is not None
    assert agent.process is not None
    home = agent.home
    (home / "note").write_text("kept")
    args = (GROUP, VERSION, "ws", "sandboxes", "sb")
    custom.patch_namespaced_custom_object(*args, {"spec": {"operatingMode": "Suspended"}})
    sandbox = wait_for(custom, "sb", reason_is("SandboxSuspended"))
    assert "podIPs" not in sandbox["status"]
    assert agent.process.poll() is not None
    assert kube_api.get("pods", "ws", "sb") is None
    assert kube_api.get("pvc", "ws", "home-sb") is not None
    custom.patch_namespaced_custom_object(*args, {"spec": {"operatingMode": "Running"}})
    wait_for(custom, "sb", is_ready)
    again = kube_api.agent("ws", "sb")
    assert again is not None
    assert again is not agent
    assert (again.home / "note").read_text() == "kept"


@pytest.mark.usefixtures("needs_opencode")
def test_deleting_a_sandbox_stops_it_and_removes_its_pod_and_pvcs(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """Delete: the agent stops; Pod, Service and the volume-claim-template PVCs go with it."""
    create(custom, objects.agent_sandbox("sb"))
    wait_for(custom, "sb", is_ready)
    agent = kube_api.agent("ws", "sb")
    assert agent is not None
    assert agent.process is not None
    custom.delete_namespaced_custom_object(GROUP, VERSION, "ws", "sandboxes", "sb")
    assert kube_api.objects("pods", "ws") == []
    assert kube_api.objects("pvc", "ws") == []
    assert kube_api.objects("services", "ws") == []
    agent.process.wait(30)  # the controller stops it: this returns, or the test times out
    assert kube_api.agent("ws", "sb") is None


@pytest.mark.usefixtures("needs_opencode")
def test_two_sandboxes_share_their_workspace_pvc(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """The same claim at /data/disk0 is the same host directory, each agent's working
    directory; each home is its own."""
    core = client.CoreV1Api(custom.api_client)
    core.create_namespaced_persistent_volume_claim("ws", objects.pvc("disk"))
    for name in ("one", "two"):
        create(custom, objects.agent_sandbox(name, workspace_claim="disk"))
    for name in ("one", "two"):
        wait_for(custom, name, is_ready)
    one, two = kube_api.agent("ws", "one"), kube_api.agent("ws", "two")
    assert one is not None
    assert two is not None
    assert one.cwd == two.cwd == kube_api.volume_dir("ws", "disk")
    assert one.mounts["/data/disk0"] == two.mounts["/data/disk0"]
    assert one.home != two.home
    assert one.home == kube_api.volume_dir("ws", "home-one")
    assert one.ip != two.ip


@pytest.mark.usefixtures("needs_opencode")
def test_a_missing_secret_keeps_the_pod_waiting_until_it_exists(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """A secretKeyRef to a missing Secret: Pod waiting `CreateContainerConfigError`, Sandbox
    Ready=False; once the Secret exists the agent starts."""
    create(custom, objects.agent_sandbox("sb", env_from="later"))
    sandbox = wait_for(custom, "sb", lambda s: "later" in ready(s).get("message", ""))
    assert ready(sandbox)["reason"] == "DependenciesNotReady"
    pod = kube_api.get("pods", "ws", "sb")
    assert pod is not None
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CreateContainerConfigError"
    core = client.CoreV1Api(custom.api_client)
    core.create_namespaced_secret("ws", objects.secret("later", {"password": PASSWORD}))
    wait_for(custom, "sb", is_ready)


def test_an_image_that_cannot_be_pulled(kube_api: KubeApi, custom: client.CustomObjectsApi) -> None:
    """A fault: the image is not pullable; the Pod waits with `ErrImagePull`, never Ready."""
    kube_api.faults.image_pull_failures.add("no-such-image:1")
    create(custom, objects.agent_sandbox("sb", image="no-such-image:1"))
    sandbox = wait_for(custom, "sb", lambda s: "ErrImagePull" in ready(s).get("message", ""))
    assert ready(sandbox)["status"] == "False"
    pod = kube_api.get("pods", "ws", "sb")
    assert pod is not None
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
    assert kube_api.agent("ws", "sb") is None
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(custom.api_client).read_namespaced_pod_log("sb", "ws")
    assert exc.value.status == 400
    assert "waiting to start: ErrImagePull" in exc.value.body


@pytest.mark.usefixtures("needs_opencode")
def test_a_crashed_agent_is_pod_failed(kube_api: KubeApi, custom: client.CustomObjectsApi) -> None:
    """`fail_pod` kills the agent: the Pod is Failed and the Sandbox Ready=False `PodFailed`."""
    create(custom, objects.agent_sandbox("sb"))
    wait_for(custom, "sb", is_ready)
    kube_api.fail_pod("ws", "sb")
    sandbox = wait_for(custom, "sb", reason_is("PodFailed"))
    assert "podIPs" not in sandbox["status"]
    pod = kube_api.get("pods", "ws", "sb")
    assert pod is not None
    assert pod["status"]["phase"] == "Failed"


@pytest.mark.usefixtures("needs_opencode")
def test_a_sandbox_stuck_not_ready(kube_api: KubeApi, custom: client.CustomObjectsApi) -> None:
    """A fault: the agent runs but its pod never turns ready."""
    kube_api.faults.stuck_not_ready.add("ws/sb")
    create(custom, objects.agent_sandbox("sb"))
    sandbox = wait_for(custom, "sb", lambda s: bool(s.get("status", {}).get("podIPs")))
    agent = kube_api.agent("ws", "sb")
    assert agent is not None
    assert ready(sandbox)["reason"] == "DependenciesNotReady"
    kube_api.faults.stuck_not_ready.clear()
    kube_api.reconcile("ws", "sb")
    wait_for(custom, "sb", is_ready)


@pytest.mark.usefixtures("needs_opencode")
def test_an_http_readiness_probe_must_pass(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """An httpGet probe that opencode answers 401 keeps the pod not ready; one that sends the
    agent's credentials makes it ready."""
    import base64

    body = objects.agent_sandbox("plain")
    container = body["spec"]["podTemplate"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}
    create(custom, body)
    credentials = base64.b64encode(f"opencode:{PASSWORD}".encode()).decode()
    authed = objects.agent_sandbox("authed")
    container = authed["spec"]["podTemplate"]["spec"]["containers"][0]
    header = {"name": "Authorization", "value": f"Basic {credentials}"}
    container["readinessProbe"] = {
        "httpGet": {"path": "/", "port": objects.AGENT_PORT, "httpHeaders": [header]},
        "periodSeconds": 1,
    }
    create(custom, authed)
    wait_for(custom, "authed", is_ready)
    agent = kube_api.agent("ws", "plain")
    assert agent is not None
    assert agent.probe_failed.wait(WAIT)  # probes start once the agent is listening
    url = f"http://{agent.ip}:{agent.port}/"
    assert httpx.get(url, auth=("opencode", PASSWORD), timeout=30).status_code == 200
    plain = custom.get_namespaced_custom_object(GROUP, VERSION, "ws", "sandboxes", "plain")
    assert not is_ready(plain)


def test_a_past_shutdown_time_stops_the_sandbox_and_keeps_it_with_retain(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """shutdownTime in the past: no pod, Ready=False `SandboxExpired`, the object stays."""
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(custom, objects.agent_sandbox("sb", shutdownTime=past, shutdownPolicy="Retain"))
    sandbox = wait_for(custom, "sb", reason_is("SandboxExpired"))
    assert "podIPs" not in sandbox["status"]
    assert kube_api.get("pods", "ws", "sb") is None
    assert kube_api.get("sandboxes", "ws", "sb") is not None


def test_a_past_shutdown_time_with_delete_policy_deletes_it(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """shutdownPolicy Delete: at shutdownTime the Sandbox itself goes (and what it owns)."""
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = custom.list_namespaced_custom_object(GROUP, VERSION, "ws", "sandboxes")
    create(custom, objects.agent_sandbox("sb", shutdownTime=past, shutdownPolicy="Delete"))
    events = watch.Watch().stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "ws",
        "sandboxes",
        resource_version=start["metadata"]["resourceVersion"],
        timeout_seconds=WAIT,
    )
    for event in events:
        if event["type"] == "DELETED":
            events.close()
            break
    assert kube_api.objects("sandboxes", "ws") == []
    assert kube_api.objects("pvc", "ws") == []


@pytest.mark.usefixtures("needs_opencode")
def test_a_deleted_pod_is_replaced_with_a_new_agent(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """Deleting a sandbox's Pod stops its agent; the controller makes a new Pod and agent."""
    create(custom, objects.agent_sandbox("sb"))
    wait_for(custom, "sb", is_ready)
    agent = kube_api.agent("ws", "sb")
    assert agent is not None
    assert agent.process is not None
    client.CoreV1Api(custom.api_client).delete_namespaced_pod("sb", "ws")
    agent.process.wait(30)
    sandbox = wait_for(custom, "sb", lambda s: is_ready(s) and s["status"]["podIPs"] != [agent.ip])
    again = kube_api.agent("ws", "sb")
    assert again is not None
    assert again is not agent
    assert sandbox["status"]["podIPs"] == [again.ip]


def test_a_shutdown_time_that_passes_stops_a_running_sandbox(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """The controller keeps a timer for shutdownTime: when it passes, the pod goes."""
    soon = (datetime.now(UTC) + timedelta(seconds=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    kube_api.faults.image_pull_failures.add("slow:1")  # a pod that exists, no agent needed
    create(custom, objects.agent_sandbox("sb", image="slow:1", shutdownTime=soon))
    wait_for(custom, "sb", lambda s: kube_api.get("pods", "ws", "sb") is not None)
    sandbox = wait_for(custom, "sb", reason_is("SandboxExpired"))
    assert datetime.now(UTC) >= datetime.fromisoformat(soon)
    assert kube_api.get("pods", "ws", "sb") is None
    (finished,) = [c for c in sandbox["status"]["conditions"] if c["type"] == "Finished"]
    assert finished["status"] == "True"


@pytest.mark.usefixtures("needs_opencode")
def test_moving_shutdown_time_into_the_future_brings_it_back(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """An expired (Retain) Sandbox whose shutdownTime moves ahead runs again."""
    past = (datetime.now(UTC) - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    create(custom, objects.agent_sandbox("sb", shutdownTime=past))
    wait_for(custom, "sb", reason_is("SandboxExpired"))
    later = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "ws", "sandboxes", "sb", {"spec": {"shutdownTime": later}}
    )
    sandbox = wait_for(custom, "sb", is_ready)
    assert sandbox["status"]["podIPs"]


@pytest.mark.usefixtures("needs_opencode")
def test_an_exec_readiness_probe_runs_here_against_the_pod(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """An exec probe runs with the container's env, its 127.0.0.1 meaning the pod: one that
    fetches the agent with the right credentials makes it ready, one that fails never does."""
    import base64
    import shutil

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    script = (
        "fetch(process.argv[1], {headers: {authorization: process.env.PROBE_AUTH}})"
        ".then(r => process.exit(r.status === 200 ? 0 : 1), () => process.exit(1))"
    )
    credentials = base64.b64encode(f"opencode:{PASSWORD}".encode()).decode()
    for name, auth in (("wrong", "Basic d3Jvbmc6d3Jvbmc="), ("right", f"Basic {credentials}")):
        body = objects.agent_sandbox(name)
        container = body["spec"]["podTemplate"]["spec"]["containers"][0]
        container["env"].append({"name": "PROBE_AUTH", "value": auth})
        url = f"http://127.0.0.1:{objects.AGENT_PORT}/"
        container["readinessProbe"] = {
            "exec": {"command": ["node", "-e", script, url]},
            "periodSeconds": 1,
        }
        create(custom, body)
    wait_for(custom, "right", is_ready)
    agent = kube_api.agent("ws", "wrong")
    assert agent is not None
    assert agent.probe_failed.wait(WAIT)
    wrong = custom.get_namespaced_custom_object(GROUP, VERSION, "ws", "sandboxes", "wrong")
    assert not is_ready(wrong)
