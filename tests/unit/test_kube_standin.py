"""The Kubernetes API stand-in's pure parts: selectors, patches, CRD validation, Sandbox status."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.support.kube_api import validation
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.patches import JSON_PATCH, MERGE, STRATEGIC, apply_patch
from tests.support.kube_api.resources import (
    NAMESPACES,
    NETWORK_POLICIES,
    SANDBOXES,
    SECRETS,
    SERVICES,
)
from tests.support.kube_api.sandbox_status import PodState, sandbox_status
from tests.support.kube_api.selectors import field_selector, label_selector
from tests.support.kube_api.store import Store


def sandbox(name: str = "sb-1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": name, "labels": {"app": "agent"}},
        "spec": {
            "podTemplate": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
            },
        },
    }
    body["spec"].update(spec)
    return body


def causes(exc: pytest.ExceptionInfo[ApiError]) -> dict[str, str]:
    return {c["field"]: c["reason"] for c in exc.value.details["causes"]}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=agent", True),
        ("app==agent", True),
        ("app!=agent", False),
        ("app in (agent, other)", True),
        ("app notin (agent)", False),
        ("tier", False),
        ("!tier", True),
        ("app=agent,!tier,env in (a,b)", True),
        ("app=agent,env=c", False),
    ],
)
def test_label_selector(selector: str, matches: bool) -> None:
    """Equality, set-based and existence requirements combine with AND, like the server's."""
    assert label_selector(selector)({"app": "agent", "env": "a"}) is matches


def test_label_selector_refuses_garbage() -> None:
    """An unparsable selector is a 400 BadRequest, not a match-nothing."""
    with pytest.raises(ApiError) as exc:
        label_selector("app in agent)")
    assert exc.value.code == 400


def test_field_selector_on_name() -> None:
    """`metadata.name` selects one object; an unsupported field is 400."""
    obj = {"metadata": {"name": "a", "namespace": "ns"}}
    assert field_selector("metadata.name=a")(obj)
    assert not field_selector("metadata.name=b")(obj)
    with pytest.raises(ApiError) as exc:
        field_selector("spec.nodeName=x")
    assert exc.value.code == 400


def test_merge_patch_removes_with_null_and_merges_maps() -> None:
    """RFC 7386: null deletes a key, maps merge, lists replace; strategic behaves the same."""
    target = {"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"l": [1, 2], "x": 1}}
    patch = {"metadata": {"labels": {"a": None, "c": "3"}}, "spec": {"l": [3]}}
    expected = {"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"l": [3], "x": 1}}
    assert apply_patch(MERGE, copy.deepcopy(target), patch) == expected
    assert apply_patch(STRATEGIC, copy.deepcopy(target), patch) == expected


def test_json_patch_ops_and_a_failed_test_op() -> None:
    """RFC 6902 add/replace/remove apply in order; a failing `test` op is 422."""
    target = {"spec": {"x": 1, "l": [1]}}
    ops = [
        {"op": "replace", "path": "/spec/x", "value": 2},
        {"op": "add", "path": "/spec/l/-", "value": 5},
        {"op": "remove", "path": "/spec/l/0"},
    ]
    assert apply_patch(JSON_PATCH, target, ops) == {"spec": {"x": 2, "l": [5]}}
    with pytest.raises(ApiError) as exc:
        apply_patch(JSON_PATCH, target, [{"op": "test", "path": "/spec/x", "value": 9}])
    assert exc.value.code == 422


def test_a_valid_sandbox_gets_the_crd_defaults() -> None:
    """The server's defaulting: `operatingMode: Running` and the schema's nested defaults."""
    stored = validation.validate(SANDBOXES, sandbox())
    assert stored["spec"]["operatingMode"] == "Running"
    assert stored["spec"]["shutdownPolicy"] == "Retain"


def test_unknown_sandbox_field_is_422_naming_it() -> None:
    """A field the v1beta1 schema does not declare (here the v1alpha1 `replicas`) is refused."""
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, sandbox(replicas=1))
    assert exc.value.code == 422
    assert exc.value.reason == "Invalid"
    assert causes(exc) == {"spec.replicas": "FieldValueInvalid"}


def test_unknown_field_deep_in_the_pod_template_is_422() -> None:
    """Unknown fields are refused at any depth (a typo in a container)."""
    body = sandbox()
    body["spec"]["podTemplate"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, body)
    assert causes(exc) == {
        "spec.podTemplate.spec.containers[0].imagePullPolicyy": "FieldValueInvalid"
    }


def test_wrong_enum_is_422_listing_the_supported_values() -> None:
    """`operatingMode: Paused` is not one of Running|Suspended."""
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, sandbox(operatingMode="Paused"))
    assert causes(exc) == {"spec.operatingMode": "FieldValueNotSupported"}
    assert '"Running", "Suspended"' in exc.value.message


def test_missing_required_field_is_422() -> None:
    """`spec.podTemplate` is required."""
    body = sandbox()
    del body["spec"]["podTemplate"]
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, body)
    assert causes(exc) == {"spec.podTemplate": "FieldValueRequired"}


def test_int_or_string_accepts_both_and_nothing_else() -> None:
    """A probe port may be a number or a name (x-kubernetes-int-or-string), not a list."""
    body = sandbox()
    container = body["spec"]["podTemplate"]["spec"]["containers"][0]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": 4096}}
    validation.validate(SANDBOXES, copy.deepcopy(body))
    container["readinessProbe"]["httpGet"]["port"] = "http"
    validation.validate(SANDBOXES, copy.deepcopy(body))
    container["readinessProbe"]["httpGet"]["port"] = [4096]
    with pytest.raises(ApiError):
        validation.validate(SANDBOXES, body)


def test_shutdown_time_must_be_rfc3339() -> None:
    """`format: date-time` is checked, as the server does."""
    validation.validate(SANDBOXES, sandbox(shutdownTime="2030-01-01T00:00:00Z"))
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, sandbox(shutdownTime="tomorrow"))
    assert causes(exc) == {"spec.shutdownTime": "FieldValueInvalid"}


def test_service_true_needs_a_dns1035_name_of_at_most_63() -> None:
    """With `service: true` a name must be a DNS-1035 label ≤ 63 (agent-sandbox ≥ v1.0.6)."""
    validation.validate(SANDBOXES, sandbox("a" * 64))  # a subdomain is fine without a Service
    for bad in ("a" * 64, "1abc", "a.b"):
        with pytest.raises(ApiError) as exc:
            validation.validate(SANDBOXES, sandbox(bad, service=True))
        assert causes(exc) == {"metadata.name": "FieldValueInvalid"}
    validation.validate(SANDBOXES, sandbox("a" * 63, service=True))


def test_core_objects_are_validated_strictly() -> None:
    """kubernetes-validate's strict schema refuses an unknown Service field; bad base64 and a
    label value over 63 characters are refused too."""
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {}}
    validation.validate(SERVICES, copy.deepcopy(service))
    service["spec"]["clusterIp"] = "None"
    with pytest.raises(ApiError) as exc:
        validation.validate(SERVICES, service)
    assert causes(exc) == {"spec.clusterIp": "FieldValueInvalid"}
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "data": {"k": "!"}}
    with pytest.raises(ApiError):
        validation.validate(SECRETS, secret)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s", "labels": {"a": "x" * 64}},
    }
    with pytest.raises(ApiError):
        validation.validate(SECRETS, secret)


def test_volume_claim_templates_are_immutable() -> None:
    """The CRD's CEL rule: changing `volumeClaimTemplates` on update is 422."""
    old = sandbox(volumeClaimTemplates=[{"metadata": {"name": "home"}, "spec": {}}])
    new = sandbox(volumeClaimTemplates=[{"metadata": {"name": "other"}, "spec": {}}])
    validation.check_update(SANDBOXES, old, copy.deepcopy(old))
    with pytest.raises(ApiError) as exc:
        validation.check_update(SANDBOXES, old, new)
    assert exc.value.code == 422


def status_for(pod: PodState | None, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "name": "sb",
        "namespace": "ns",
        "generation": 1,
        "pod": pod,
        "suspended": False,
        "expired": False,
        "service": True,
        "service_wanted": True,
        "selector": "x=y",
        "cluster_domain": "cluster.local",
        "previous": {},
        "now": "2026-01-01T00:00:00Z",
    }
    args.update(kwargs)
    return sandbox_status(**args)


def ready_of(status: dict[str, Any]) -> tuple[str, str]:
    (ready,) = [c for c in status["conditions"] if c["type"] == "Ready"]
    return ready["status"], ready["reason"]


@pytest.mark.parametrize(
    ("pod", "kwargs", "expected"),
    [
        (PodState.running("127.77.0.2", ready=True), {}, ("True", "DependenciesReady")),
        (PodState.running("127.77.0.2", ready=False), {}, ("False", "DependenciesNotReady")),
        (
            PodState.running("127.77.0.2", ready=True),
            {"service": False},
            ("False", "DependenciesNotReady"),
        ),
        (PodState.waiting("ErrImagePull", "no"), {}, ("False", "DependenciesNotReady")),
        (PodState.failed("127.77.0.2", "exit 1"), {}, ("False", "PodFailed")),
        (None, {"suspended": True}, ("False", "SandboxSuspended")),
        (None, {"expired": True}, ("False", "SandboxExpired")),
    ],
)
def test_ready_condition(pod: PodState | None, kwargs: dict[str, Any], expected: Any) -> None:
    """Ready is true only with a ready pod with an IP and its Service; else the reason says why."""
    status = status_for(pod, **kwargs)
    assert ready_of(status) == expected
    stopped = bool(kwargs.get("suspended") or kwargs.get("expired"))
    assert ("podIPs" in status) is (pod is not None and pod.phase == "Running" and not stopped)
    validation.validate(SANDBOXES, sandbox() | {"status": status})  # as the CRD allows


def test_unchanged_condition_keeps_its_transition_time() -> None:
    """lastTransitionTime moves only when the condition's status does."""
    first = status_for(PodState.running("127.77.0.2", ready=False))
    later = status_for(
        PodState.running("127.77.0.2", ready=False), previous=first, now="2026-01-01T00:01:00Z"
    )
    assert later == first
    ready = status_for(
        PodState.running("127.77.0.2", ready=True), previous=first, now="2026-01-01T00:01:00Z"
    )
    assert ready["conditions"][0]["lastTransitionTime"] == "2026-01-01T00:01:00Z"


def test_store_watch_history_expires_after_compaction() -> None:
    """Resuming from a version older than the kept history is 410 Expired; from now it is fine."""
    store = Store()
    store.create(NAMESPACES, "", {"metadata": {"name": "ns"}})
    now = store.compact()
    with pytest.raises(ApiError) as exc:
        list(store.events_after(now - 1, deadline=0, epoch=store.watch_epoch))
    assert (exc.value.code, exc.value.reason) == (410, "Expired")
    assert list(store.events_after(now, deadline=0, epoch=store.watch_epoch)) == []


def test_field_validation_as_the_client_asks() -> None:
    """`fieldValidation`: Strict → 400 naming the field, Warn → dropped with a warning,
    Ignore → dropped; other errors are still 422 after the drop."""
    with pytest.raises(ApiError) as exc:
        validation.validate(SANDBOXES, sandbox(replicas=1), field_validation="Strict")
    assert exc.value.code == 400
    assert 'unknown field "spec.replicas"' in exc.value.message
    warnings: list[str] = []
    stored = validation.validate(
        SANDBOXES, sandbox(replicas=1), field_validation="Warn", warnings=warnings
    )
    assert "replicas" not in stored["spec"]
    assert warnings == ['unknown field "spec.replicas"']
    stored = validation.validate(SANDBOXES, sandbox(replicas=1), field_validation="Ignore")
    assert "replicas" not in stored["spec"]
    with pytest.raises(ApiError) as exc:
        validation.validate(
            SANDBOXES, sandbox(replicas=1, operatingMode="Paused"), field_validation="Ignore"
        )
    assert causes(exc) == {"spec.operatingMode": "FieldValueNotSupported"}


def test_network_policies_are_validated_too() -> None:
    """NetworkPolicy (networking.k8s.io/v1) goes through kubernetes-validate: a misspelt field
    is refused, a correct policy passes."""
    policy: dict[str, Any] = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "p"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "agent"}},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}],
        },
    }
    validation.validate(NETWORK_POLICIES, copy.deepcopy(policy))
    policy["spec"]["egress"][0]["to"][0]["ipBlock"]["exept"] = []
    with pytest.raises(ApiError) as exc:
        validation.validate(NETWORK_POLICIES, policy)
    assert causes(exc) == {"spec.egress[0].to[0].ipBlock.exept": "FieldValueInvalid"}
