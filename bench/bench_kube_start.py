"""Kubernetes sandbox start on the stand-in API server: our own time beyond the agent's start.

The kubernetes backend (real `kubernetes` client) creates a sandbox against the stand-in API
server of tests/support/kube_api, whose controller starts opencode for the pod. The stand-in's
store stamps when each object changes, which splits one create → running into:

- ours, before: from `create()` to the Sandbox object existing (workspace namespace, policy
  and disk, the Secret, the Sandbox: API calls in worker threads)
- controller: Sandbox → Pod (the stand-in's controller, not ours)
- agent: Pod → Sandbox `Ready` (opencode starting and answering: not ours)
- ours, after: `Ready` written → `create()` returns (the watch delivering it, our view waking)

Our overhead = ours before + ours after; target ≤ 300 ms (median of the runs). A first run,
not counted, warms the page cache and makes the workspace's namespace, policy and disk, which
the measured runs then reuse.

    python bench/bench_kube_start.py [runs]
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.kube_api import open_kube_api  # noqa: E402
from tests.support.kube_api.store import Event  # noqa: E402

from agentserver.models import SandboxType  # noqa: E402
from agentserver.sandboxes import kube_objects as ko  # noqa: E402
from agentserver.sandboxes.base import SandboxSpec  # noqa: E402
from agentserver.sandboxes.kubernetes import open_backend  # noqa: E402
from agentserver.settings import build_settings  # noqa: E402


def opencode_binary() -> str:
    for candidate in (
        os.environ.get("OPENCODE_BIN"),
        str(REPO / ".cache/npm/node_modules/.bin/opencode"),
        shutil.which("opencode"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    sys.exit("opencode is not installed (set OPENCODE_BIN or run scripts/bootstrap)")


class Stamps:
    """When the store first saw each (kind, name) reach a state: a store listener (sync)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}

    def __call__(self, event: Event) -> None:
        now = time.monotonic()
        name = event.obj["metadata"]["name"]
        kind = event.resource.kind
        self.at.setdefault((kind, name), now)
        if kind == "Sandbox" and ko.pod_ip(event.obj) is not None:
            self.at.setdefault(("Ready", name), now)


def spec(n: int) -> SandboxSpec:
    return SandboxSpec(
        id=f"bench{n:011d}",
        workspace_id="benchworkspace01",
        type=SandboxType.OPENCODE,
        agent_secret=f"secret-{n}",
        llm_base_url="http://127.0.0.1:9/proxy/anthropic",
        proxy_token=f"token-{n}",
        idle_timeout=1800.0,
    )


async def measure(runs: int) -> list[dict[str, float]]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-kube-", dir="/tmp"))
    rows: list[dict[str, float]] = []
    try:
        with open_kube_api(scratch, opencode_bin=opencode_binary()) as kube:
            os.environ["KUBECONFIG"] = str(kube.kubeconfig_path)
            os.environ.pop("KUBERNETES_SERVICE_HOST", None)
            stamps = Stamps()
            kube.store.subscribe(stamps)
            # The pods' LLM proxy address, as in a cluster (the bench makes no LLM call).
            proxy = "http://agentserver.agentserver.svc:8080/proxy/anthropic"
            settings = build_settings(
                {"backend": "kubernetes", "idle_timeout": "30m", "anthropic_proxy_url": proxy}, {}
            )

            async def on_exit(sandbox_id: str, reason: str) -> None:
                raise AssertionError(f"{sandbox_id} stopped: {reason}")

            async with open_backend(settings, on_exit) as backend:
                for n in range(runs + 1):  # run 0 warms the page cache (not counted)
                    each = spec(n)
                    name = ko.sandbox_name(each.id)
                    started = time.monotonic()
                    await backend.create(each)
                    done = time.monotonic()
                    made, pod = stamps.at[("Sandbox", name)], stamps.at[("Pod", name)]
                    ready = stamps.at[("Ready", name)]
                    row = {
                        "total": done - started,
                        "ours, before": made - started,
                        "controller": pod - made,
                        "agent": ready - pod,
                        "ours, after": done - ready,
                    }
                    row["ours"] = row["ours, before"] + row["ours, after"]
                    if n:
                        rows.append(row)
                    await backend.destroy(each.id)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main(runs: int) -> None:
    rows = trio.run(measure, runs)
    print(f"kubernetes sandbox start on the stand-in, {runs} runs (after one warm-up)")
    print(f"{'':26} {'median':>9} {'min':>9} {'max':>9}")
    for key in ("total", "ours, before", "controller", "agent", "ours, after", "ours"):
        values = [row[key] * 1000 for row in rows]
        print(
            f"{key:26} {statistics.median(values):7.0f}ms {min(values):7.0f}ms {max(values):7.0f}ms"
        )
    ours = statistics.median(row["ours"] for row in rows) * 1000
    agent = statistics.median(row["agent"] for row in rows) * 1000
    print(
        f"our overhead (median): {ours:.0f} ms (target ≤ 300 ms); "
        f"ratio to the agent's own start: {ours / agent:.2f}x"
    )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
