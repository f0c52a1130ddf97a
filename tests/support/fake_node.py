"""One node of a real control plane, played as a kubelet (and the scheduler) would: no containers run.

`settle()` does one pass, and the tests call it themselves (no background loop to race): every
pod of the namespace that is not bound is bound to this node; every bound pod that is not
Running is reported Running and Ready with a pod IP; every pod being deleted is finished
(deleted with no grace), as a kubelet does once its containers stopped. So the ReplicaSet and
StatefulSet controllers see pods as they would in a cluster, and rank them for deletion by
readiness and pod-deletion-cost.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable
from typing import Any

from tests.support.control_plane import ControlPlane

Busy = Callable[[str], Awaitable[bool]]  # does the pod of this name run a task now?

STRATEGIC = "application/strategic-merge-patch+json"


class FakeNode:
    def __init__(
        self, plane: ControlPlane, namespace: str, name: str = "fake-node-1", *, busy: Busy | None = None
    ) -> None:
        self.plane = plane
        self.namespace = namespace
        self.name = name
        self._addresses: dict[str, str] = {}  # pod uid -> its IP
        self._busy = busy
        self.deleted: list[str] = []  # every pod finished after its deletion, in order
        self.busy_deleted: list[str] = []  # those of them that ran a task when deleted: each one a killed task

    async def register(self) -> None:
        await self.plane.api(
            "POST",
            "/api/v1/nodes",
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {"fake": "true"}}},
        )

    async def pods(self) -> list[dict[str, Any]]:
        answer = await self.plane.api("GET", f"/api/v1/namespaces/{self.namespace}/pods")
        items: list[dict[str, Any]] = answer["items"]
        return items

    async def settle(self) -> int:
        """One pass over the namespace's pods; how many were changed (0: nothing to do)."""
        changed = 0
        for pod in await self.pods():
            meta, spec, status = pod["metadata"], pod["spec"], pod.get("status", {})
            path = f"/api/v1/namespaces/{self.namespace}/pods/{meta['name']}"
            if meta.get("deletionTimestamp"):
                # Asked when the deletion is first seen, before any of its tasks could be marked done.
                if self._busy is not None and await self._busy(meta["name"]):
                    self.busy_deleted.append(meta["name"])
                self.deleted.append(meta["name"])
                await self.plane.api(
                    "DELETE", path, {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
                )
                changed += 1
            elif not spec.get("nodeName"):
                binding = {
                    "apiVersion": "v1",
                    "kind": "Binding",
                    "metadata": {"name": meta["name"]},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
                }
                await self.plane.api("POST", f"{path}/binding", binding)
                changed += 1
            elif status.get("phase") != "Running":
                await self.plane.api("PATCH", f"{path}/status", self._running(meta["uid"]), content_type=STRATEGIC)
                changed += 1
        return changed

    def _running(self, uid: str) -> dict[str, Any]:
        address = self._addresses.setdefault(uid, f"10.244.0.{len(self._addresses) + 2}")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "status": {
                "phase": "Running",
                "podIP": address,
                "podIPs": [{"ip": address}],
                "hostIP": "10.0.0.10",
                "startTime": now,
                "conditions": [
                    {"type": kind, "status": "True", "lastTransitionTime": now}
                    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
            }
        }
