"""Pure: a pod's state → the Pod's status and the Sandbox's status, as agent-sandbox writes them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PodState:
    """What the kubelet knows of a sandbox's pod."""

    phase: str  # Pending, Running, Failed
    ip: str = ""
    ready: bool = False
    waiting_reason: str = ""  # ErrImagePull, CreateContainerConfigError
    message: str = ""

    @classmethod
    def waiting(cls, reason: str, message: str) -> PodState:
        return cls("Pending", waiting_reason=reason, message=message)

    @classmethod
    def running(cls, ip: str, *, ready: bool) -> PodState:
        return cls("Running", ip=ip, ready=ready)

    @classmethod
    def failed(cls, ip: str, message: str) -> PodState:
        return cls("Failed", ip=ip, message=message)

    def pod_status(self, pod: dict[str, Any], now: str) -> dict[str, Any]:
        container = pod["spec"]["containers"][0]
        state: dict[str, Any]
        if self.waiting_reason:
            state = {"waiting": {"reason": self.waiting_reason, "message": self.message}}
        elif self.phase == "Failed":
            state = {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": self.message,
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
        else:
            state = {"running": {"startedAt": now}}
        ready = "True" if self.ready else "False"
        status: dict[str, Any] = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "startTime": now,
            "conditions": [
                _condition("PodScheduled", "True", "", "", now),
                _condition("Initialized", "True", "", "", now),
                _condition(
                    "ContainersReady", ready, "" if self.ready else "ContainersNotReady", "", now
                ),
                _condition("Ready", ready, "" if self.ready else "ContainersNotReady", "", now),
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": self.ready,
                    "started": self.phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        if self.ip:
            status["podIP"] = self.ip
            status["podIPs"] = [{"ip": self.ip}]
        return status

    def why_not_ready(self) -> str:
        if self.waiting_reason:
            return f"Pod exists with phase: {self.phase}; container waiting: {self.waiting_reason}"
        return f"Pod exists with phase: {self.phase}; Pod is not Ready"


def _condition(kind: str, status: str, reason: str, message: str, now: str) -> dict[str, Any]:
    cond: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": now}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _sandbox_condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    now: str,
    previous: dict[str, Any],
) -> dict[str, Any]:
    text = "True" if status else "False"
    before = next((c for c in previous.get("conditions", []) if c.get("type") == kind), None)
    since = before["lastTransitionTime"] if before and before.get("status") == text else now
    return {
        "type": kind,
        "status": text,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


def sandbox_status(
    *,
    name: str,
    namespace: str,
    generation: int,
    pod: PodState | None,
    suspended: bool,
    expired: bool,
    service: bool,
    service_wanted: bool,
    selector: str,
    cluster_domain: str,
    previous: dict[str, Any],
    now: str,
) -> dict[str, Any]:
    """`Ready` is true only with a running, ready pod that has an IP and its Service if asked."""
    if expired:
        ready, reason, message = False, "SandboxExpired", "Sandbox has reached its shutdownTime"
    elif suspended:
        ready, reason, message = False, "SandboxSuspended", "Sandbox is suspended"
    elif pod is None:
        ready, reason, message = False, "DependenciesNotReady", "Pod does not exist"
    elif pod.phase == "Failed":
        ready, reason, message = False, "PodFailed", f"Pod failed: {pod.message}"
    elif pod.ready and pod.ip and (service or not service_wanted):
        ready, reason, message = True, "DependenciesReady", "Pod is Ready; Service Exists"
    else:
        ready, reason = False, "DependenciesNotReady"
        message = pod.why_not_ready()
        if pod.message:
            message += f": {pod.message}"
    conditions = [
        _sandbox_condition("Ready", ready, reason, message, generation, now, previous),
        _sandbox_condition(
            "PodScheduled",
            pod is not None and not expired and not suspended,
            "PodScheduled" if pod is not None else "NoPod",
            "Pod is scheduled" if pod is not None else "No pod",
            generation,
            now,
            previous,
        ),
        _sandbox_condition(
            "Finished",
            expired,
            "SandboxExpired" if expired else "NotFinished",
            "Sandbox has reached its shutdownTime" if expired else "Sandbox has not finished",
            generation,
            now,
            previous,
        ),
    ]
    status: dict[str, Any] = {"conditions": conditions, "selector": selector}
    if service_wanted:
        status["service"] = name
        status["serviceFQDN"] = f"{name}.{namespace}.svc.{cluster_domain}"
    if pod is not None and pod.ip and pod.phase == "Running" and not (suspended or expired):
        status["podIPs"] = [pod.ip]
        status["nodeName"] = "standin-node"
    return status
