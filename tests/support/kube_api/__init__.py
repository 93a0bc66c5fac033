"""A stand-in Kubernetes API server with the agent-sandbox controller, for the kubernetes backend.

Use the `kube_api` fixture (tests/support/kube_api/fixtures.py) or `open_kube_api(tmp_path)`.
"""

from tests.support.kube_api.standin import KubeApi, open_kube_api

__all__ = ["KubeApi", "open_kube_api"]
