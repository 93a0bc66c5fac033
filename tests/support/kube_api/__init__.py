"""A stand-in Kubernetes API server with the agent-sandbox controller, for the kubernetes backend.

The official `kubernetes` client talks to it unchanged over plain HTTP on 127.0.0.1 (a threading
server: sync and trio tests alike), configured by the kubeconfig it writes (bearer token checked).

Use:
- the `kube_api` fixture (tests/support/kube_api/fixtures.py; `kube_api_served` picks what
  discovery announces: parametrize it with "v1alpha1" or "none"), or
  `with open_kube_api(tmp_path, served=..., opencode_bin=..., start=False) as api:`;
- `api.kubeconfig_path` (KUBECONFIG), `api.url`, `api.api_client()`;
- state: `api.objects("sandboxes", "ns", labels={...})`, `api.get("pvc", "ns", "name")`,
  `api.agent("ns", "sandbox")` (`.ip .port .url .cwd .home .mounts .env .process`),
  `api.volume_dir("ns", "claim")`, `api.requests` (every call: method, path, verb, group,
  resource, subresource, namespace, name, code, query), `api.verbs()` (for RBAC);
- hooks: `api.end_watches()`, `api.compact()` (next resume from an older version is 410),
  `with api.missed_by_watches(): ...` (changes open watches never see: they get 410),
  `api.refuse("create", "namespaces")` (RBAC's 403, or another code/reason),
  `api.disconnect()` / `api.reconnect()` (an outage), `api.stop()` (unreachable),
  `api.faults.image_pull_failures` (images), `api.faults.stuck_not_ready` ("ns/name"),
  `api.fail_pod("ns", "name")`, `api.reconcile("ns", "name")` after changing faults.

Readiness probes run for real (httpGet, tcpSocket, exec with the container's env; 127.0.0.1 in
an exec probe's arguments is the pod's address). Unknown fields are 422 unless the client sends
`fieldValidation` (Strict → 400, Warn → dropped with a `Warning` header, Ignore → dropped),
which is what the real server does with it.
"""

from tests.support.kube_api.standin import KubeApi, open_kube_api

__all__ = ["KubeApi", "open_kube_api"]
