"""The stand-in Kubernetes API speaks the real wire format to the official `kubernetes` client."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, watch

from tests.support.kube_api import KubeApi, objects, open_kube_api
from tests.support.kube_api.fixtures import kube_api, kube_api_served
from tests.support.kube_api.resources import SECRETS

__all__ = ["kube_api", "kube_api_served"]

GROUP, VERSION = "agents.x-k8s.io", "v1beta1"


@pytest.fixture
def core(kube_api: KubeApi) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client())


@pytest.fixture
def custom(kube_api: KubeApi) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api.api_client())


def status_of(exc: client.ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


def test_discovery_announces_v1beta1_sandboxes(kube_api: KubeApi) -> None:
    """`/apis` lists agents.x-k8s.io at v1beta1 and its resource list has sandboxes/status."""
    api = kube_api.api_client()
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert groups[GROUP].preferred_version.version == VERSION
    resources = client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    assert {r.name for r in resources.resources} == {"sandboxes", "sandboxes/status"}
    assert client.VersionApi(api).get_code().major == "1"
    core = client.CoreV1Api(api).get_api_resources()
    assert {"namespaces", "secrets", "pods", "services", "persistentvolumeclaims"} <= {
        r.name for r in core.resources
    }


@pytest.mark.parametrize("kube_api_served", ["v1alpha1"])
def test_discovery_of_an_old_agent_sandbox(kube_api: KubeApi) -> None:
    """A cluster with agent-sandbox before v1.0 serves only v1alpha1: v1beta1 is a 404."""
    api = kube_api.api_client()
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert [v.version for v in groups[GROUP].versions] == ["v1alpha1"]
    with pytest.raises(client.ApiException) as exc:
        client.CustomObjectsApi(api).get_api_resources(GROUP, VERSION)
    assert exc.value.status == 404
    assert status_of(exc.value)["kind"] == "Status"


@pytest.mark.parametrize("kube_api_served", ["none"])
def test_discovery_without_the_crds(kube_api: KubeApi) -> None:
    """Without the CRDs the group is missing from `/apis` and its sandboxes are 404."""
    api = kube_api.api_client()
    assert GROUP not in {g.name for g in client.ApisApi(api).get_api_versions().groups}
    with pytest.raises(client.ApiException) as exc:
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            GROUP, VERSION, "default", "sandboxes"
        )
    assert exc.value.status == 404


def test_an_unreachable_cluster_refuses_connections(tmp_path: Path) -> None:
    """`start=False` leaves the kubeconfig's address closed: the client cannot connect."""
    with open_kube_api(tmp_path / "kube", start=False) as api:
        version = client.VersionApi(api.api_client())
        with pytest.raises(urllib3.exceptions.MaxRetryError):
            version.get_code(_request_timeout=5)


def test_a_wrong_token_is_401(kube_api: KubeApi) -> None:
    """The bearer token from the kubeconfig is checked."""
    config = client.Configuration(host=kube_api.url, api_key={"BearerToken": "Bearer wrong"})
    api = client.ApiClient(config)
    with pytest.raises(client.ApiException) as exc:
        client.CoreV1Api(api).list_namespace()
    assert exc.value.status == 401


def test_crud_and_status_errors(core: client.CoreV1Api) -> None:
    """Create, get, replace and delete a Secret; 409 AlreadyExists, 409 Conflict on a stale
    resourceVersion and 404 NotFound come as `Status` objects."""
    created = core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    assert (exc.value.status, status_of(exc.value)["reason"]) == (409, "AlreadyExists")

    got = core.read_namespaced_secret("s", "default")
    got.data = {"k": "dzI="}
    replaced = core.replace_namespaced_secret("s", "default", got)
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(client.ApiException) as exc:
        core.replace_namespaced_secret("s", "default", got)  # got's version is stale now
    assert (exc.value.status, status_of(exc.value)["reason"]) == (409, "Conflict")

    core.delete_namespaced_secret("s", "default")
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_secret("s", "default")
    status = status_of(exc.value)
    assert (exc.value.status, status["kind"], status["status"], status["reason"]) == (
        404,
        "Status",
        "Failure",
        "NotFound",
    )
    assert status["details"] == {"name": "s", "group": "", "kind": "secrets"}


def test_create_in_a_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    """Namespaced objects need their namespace."""
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_secret("nowhere", objects.secret("s", {"k": "v"}))
    assert exc.value.status == 404
    assert 'namespaces "nowhere" not found' in status_of(exc.value)["message"]


def test_list_with_label_and_field_selectors(core: client.CoreV1Api) -> None:
    """Equality, set-based and existence selectors, and `metadata.name`, pick the right objects."""
    for name, labels in [("a", {"tier": "x"}), ("b", {"tier": "y"}), ("c", {})]:
        core.create_namespaced_secret("default", objects.secret(name, {"k": "v"}, labels))

    def names(**kwargs: str) -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_secret("default", **kwargs).items]

    assert names() == ["a", "b", "c"]
    assert names(label_selector="tier=x") == ["a"]
    assert names(label_selector="tier in (x,y)") == ["a", "b"]
    assert names(label_selector="tier notin (x)") == ["b", "c"]
    assert names(label_selector="!tier") == ["c"]
    assert names(label_selector="tier") == ["a", "b"]
    assert names(field_selector="metadata.name=b") == ["b"]
    everywhere = core.list_secret_for_all_namespaces(label_selector="tier=y").items
    assert [s.metadata.name for s in everywhere] == ["b"]


def test_patches(core: client.CoreV1Api) -> None:
    """Merge, strategic merge and JSON patches change what they say and nothing else."""
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}, {"a": "1"}))
    patched = core.patch_namespaced_secret(
        "s", "default", {"metadata": {"labels": {"a": None, "b": "2"}}}
    )  # the client sends a dict as strategic merge
    assert patched.metadata.labels == {"b": "2"}
    assert patched.data == {"k": "dg=="}
    ops = [{"op": "add", "path": "/metadata/labels/c", "value": "3"}]
    patched = core.patch_namespaced_secret("s", "default", ops)  # a list is a JSON patch
    assert patched.metadata.labels == {"b": "2", "c": "3"}
    ops = [{"op": "remove", "path": "/metadata/labels/nope"}]
    with pytest.raises(client.ApiException) as exc:
        core.patch_namespaced_secret("s", "default", ops)
    assert exc.value.status == 422


def test_sandbox_validation_is_422_naming_the_field(custom: client.CustomObjectsApi) -> None:
    """An unknown field and a wrong enum in a Sandbox are refused with causes naming them."""
    body = objects.agent_sandbox("sb", replicas=1, operatingMode="Paused")
    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", "sandboxes", body)
    status = status_of(exc.value)
    assert (exc.value.status, status["reason"]) == (422, "Invalid")
    assert {(c["field"], c["reason"]) for c in status["details"]["causes"]} == {
        ("spec.replicas", "FieldValueInvalid"),
        ("spec.operatingMode", "FieldValueNotSupported"),
    }
    assert (
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", "sandboxes")["items"] == []
    )


def test_sandbox_status_is_a_subresource(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """The main resource ignores `status`; the status subresource changes only `status`; a
    spec change bumps `generation`, a status change does not."""
    body = objects.agent_sandbox("sb", image="never-pulled", operatingMode="Suspended")
    body["status"] = {"podIPs": ["10.0.0.1"]}
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", "sandboxes", body)
    assert "podIPs" not in created.get("status", {})
    args = (GROUP, VERSION, "default", "sandboxes", "sb")
    after_status = custom.patch_namespaced_custom_object_status(
        *args, {"status": {"nodeName": "x"}, "spec": {"service": False}}
    )
    assert after_status["status"]["nodeName"] == "x"
    assert after_status["spec"]["service"] is True
    assert after_status["metadata"]["generation"] == 1
    after_spec = custom.patch_namespaced_custom_object(*args, {"spec": {"service": False}})
    assert after_spec["metadata"]["generation"] == 2


def test_sandbox_replace_needs_a_resource_version(custom: client.CustomObjectsApi) -> None:
    """A custom resource cannot be replaced unconditionally (422), nor with a stale version."""
    body = objects.agent_sandbox("sb", operatingMode="Suspended")
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", "sandboxes", body)
    args = (GROUP, VERSION, "default", "sandboxes", "sb")
    with pytest.raises(client.ApiException) as exc:
        custom.replace_namespaced_custom_object(*args, body)
    assert exc.value.status == 422
    custom.patch_namespaced_custom_object(*args, {"metadata": {"labels": {"x": "y"}}})
    with pytest.raises(client.ApiException) as exc:
        custom.replace_namespaced_custom_object(*args, created)
    assert exc.value.status == 409


def test_deleting_a_namespace_deletes_its_objects(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    """Everything in a namespace goes with it."""
    core.create_namespace(objects.namespace("ws"))
    core.create_namespaced_secret("ws", objects.secret("s", {"k": "v"}))
    core.create_namespaced_persistent_volume_claim("ws", objects.pvc("disk"))
    core.delete_namespace("ws")
    assert kube_api.objects("secrets", "ws") == []
    assert kube_api.objects("pvc", "ws") == []
    assert [n.metadata.name for n in core.list_namespace().items] == ["default", "kube-system"]


def test_a_watch_sees_added_modified_deleted(core: client.CoreV1Api) -> None:
    """From a list's resourceVersion a watch sees each later change once, in order."""
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    core.patch_namespaced_secret("s", "default", {"metadata": {"labels": {"a": "1"}}})
    core.delete_namespaced_secret("s", "default")
    seen = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            core.list_namespaced_secret, "default", resource_version=start, timeout_seconds=1
        )
    ]
    assert seen == [("ADDED", "s"), ("MODIFIED", "s"), ("DELETED", "s")]


def test_a_selecting_watch_sees_objects_leave_the_selection(core: client.CoreV1Api) -> None:
    """An object whose labels stop matching is DELETED for that watch, ADDED when it matches."""
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}, {"a": "1"}))
    core.patch_namespaced_secret("s", "default", {"metadata": {"labels": {"a": "2"}}})
    core.patch_namespaced_secret("s", "default", {"metadata": {"labels": {"a": "1"}}})
    seen = [
        e["type"]
        for e in watch.Watch().stream(
            core.list_namespaced_secret,
            "default",
            label_selector="a=1",
            resource_version=start,
            timeout_seconds=1,
        )
    ]
    assert seen == ["ADDED", "DELETED", "ADDED"]


def test_a_watch_from_compacted_history_is_410(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    """After `compact()`, a watch from an older version gets an ERROR event with a 410 Status,
    which the client raises as ApiException(410) for the caller to relist."""
    start = core.list_namespaced_secret("default").metadata.resource_version
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    kube_api.compact()
    stream = watch.Watch().stream(
        core.list_namespaced_secret, "default", resource_version=start, timeout_seconds=5
    )
    with pytest.raises(client.ApiException) as exc:
        next(stream)
    assert exc.value.status == 410
    raw = core.list_namespaced_secret(
        "default", watch=True, resource_version=start, _preload_content=False
    )
    (line,) = raw.data.decode().splitlines()
    event = json.loads(line)
    assert event["type"] == "ERROR"
    assert (event["object"]["code"], event["object"]["reason"]) == (410, "Expired")


def test_ending_watches_makes_the_client_resume_without_a_gap(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    """`end_watches()` closes every stream; the client's next watch from its last version sees
    the change made while it was away."""
    seen: list[str] = []
    first = threading.Event()
    watcher = watch.Watch()

    def follow() -> None:
        for event in watcher.stream(core.list_namespaced_secret, "default", resource_version="1"):
            seen.append(event["object"].metadata.name)
            if len(seen) == 1:
                first.set()
            if len(seen) == 2:
                watcher.stop()

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        core.create_namespaced_secret("default", objects.secret("one", {"k": "v"}))
        assert first.wait(30)
        kube_api.end_watches()
        core.create_namespaced_secret("default", objects.secret("two", {"k": "v"}))
    finally:
        thread.join(30)
    assert seen == ["one", "two"]
    watches = [c for c in kube_api.requests if c.verb == "watch"]
    assert len(watches) >= 2
    assert (
        watches[-1].query["resourceVersion"]
        == kube_api.get("secrets", "default", "one")["metadata"]["resourceVersion"]
    )


def test_a_bookmark_ends_a_watch_that_asked_for_them(core: client.CoreV1Api) -> None:
    """With allowWatchBookmarks a watch that times out says the version it got to."""
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    raw = core.list_namespaced_secret(
        "default",
        watch=True,
        resource_version="1",
        allow_watch_bookmarks=True,
        timeout_seconds=1,
        _preload_content=False,
    )
    events = [json.loads(line) for line in raw.data.decode().splitlines()]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    bookmark = int(events[-1]["object"]["metadata"]["resourceVersion"])
    assert bookmark >= int(events[0]["object"]["metadata"]["resourceVersion"])


def test_requests_are_recorded_as_rbac_sees_them(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    """Every call is kept with its verb, group and resource (for checking the chart's RBAC)."""
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    core.list_namespaced_pod("default")
    custom = client.CustomObjectsApi(kube_api.api_client())
    with pytest.raises(client.ApiException):
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", "sandboxes", "x")
    assert kube_api.verbs() == {
        ("", "secrets", "create"),
        ("", "pods", "list"),
        (GROUP, "sandboxes", "get"),
    }
    assert kube_api.requests[-1].code == 404


def test_field_validation_strict_is_400_and_warn_drops_with_a_warning(
    kube_api: KubeApi, custom: client.CustomObjectsApi
) -> None:
    """What the real server does when asked: Strict refuses the unknown field (400), Warn
    stores the object without it and says so in a `Warning` header."""
    args = (GROUP, VERSION, "default", "sandboxes")
    body = objects.agent_sandbox("sb", operatingMode="Suspended", replicas=1)
    with pytest.raises(client.ApiException) as exc:
        custom.create_namespaced_custom_object(*args, body, field_validation="Strict")
    assert exc.value.status == 400
    data, _, headers = custom.create_namespaced_custom_object_with_http_info(
        *args, body, field_validation="Warn"
    )
    assert "replicas" not in data["spec"]
    assert 'unknown field \\"spec.replicas\\"' in headers["Warning"]


def test_an_outage_ends_watches_and_refuses_calls_until_it_is_over(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    """`disconnect()` closes the port (calls fail, watches end); `reconnect()` serves the same
    objects on the same address again."""
    core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
    kube_api.disconnect()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        core.read_namespaced_secret("s", "default", _request_timeout=5)
    kube_api.reconnect()
    assert core.read_namespaced_secret("s", "default").data == {"k": "dg=="}


def test_changes_missed_by_watches_make_an_open_watch_answer_410(
    kube_api: KubeApi, core: client.CoreV1Api
) -> None:
    """A change made under `missed_by_watches()` never reaches an open watch as an event: the
    watch gets 410 (the client raises it after its one retry) and only a relist shows it."""
    start = core.list_namespaced_secret("default").metadata.resource_version
    seen: list[str] = []
    failures: list[int] = []
    opened = threading.Event()

    def follow() -> None:
        stream = watch.Watch().stream(
            core.list_namespaced_secret, "default", resource_version=start
        )
        try:
            for event in stream:
                seen.append(f"{event['type']} {event['object'].metadata.name}")
                opened.set()
        except client.ApiException as exc:
            failures.append(exc.status)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
        assert opened.wait(30)
        with kube_api.missed_by_watches():
            kube_api.store.delete(SECRETS, "default", "s")  # as another client would
    finally:
        thread.join(30)
    assert not thread.is_alive()
    assert (seen, failures) == (["ADDED s"], [410])
    assert core.list_namespaced_secret("default").items == []


def test_closing_ends_open_watches_and_leaves_no_thread(tmp_path: Path) -> None:
    """Teardown ends an open watch stream and joins every thread the stand-in started."""
    before = set(threading.enumerate())
    ended = threading.Event()
    with open_kube_api(tmp_path / "kube") as api:
        core = client.CoreV1Api(api.api_client())
        core.create_namespaced_secret("default", objects.secret("s", {"k": "v"}))
        opened = threading.Event()

        def follow() -> None:
            # With a timeout the client does not re-watch when the stream ends.
            stream = watch.Watch().stream(
                core.list_namespaced_secret, "default", timeout_seconds=600
            )
            for _ in stream:
                opened.set()
            ended.set()

        watcher = threading.Thread(target=follow)
        watcher.start()
        assert opened.wait(30)
    watcher.join(30)
    assert ended.is_set()
    assert set(threading.enumerate()) - before == set()


def test_refuse_answers_a_verb_with_rbacs_403(kube_api: KubeApi, core: client.CoreV1Api) -> None:
    """`refuse("create", "namespaces")` makes that call a 403 Forbidden Status; others pass."""
    kube_api.refuse("create", "namespaces")
    with pytest.raises(client.ApiException) as exc:
        core.create_namespace(objects.namespace("ws"))
    status = status_of(exc.value)
    assert (exc.value.status, status["reason"]) == (403, "Forbidden")
    assert 'cannot create resource "namespaces"' in status["message"]
    assert kube_api.get("namespaces", "", "ws") is None
    assert core.read_namespace("default").metadata.name == "default"
