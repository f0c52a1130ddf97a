"""A real HTTP server that plays the few Kubernetes API endpoints safe scale-down uses.

It keeps ScaledObjects, Deployments, StatefulSets and Pods as JSON, filters
pod lists by label selector as the API server does, applies patches to pod
annotations, answers 403 for the verbs a test forbids, and records every
request (method, path, query, content type, body, Authorization) so tests can
assert exactly what the scaler asked.
"""

from __future__ import annotations

import json
import re
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Json = dict[str, Any]


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Json | None
    authorization: str | None


@dataclass
class FakeKubernetes:
    scaled_objects: dict[tuple[str, str], Json] = field(default_factory=dict)
    workloads: dict[tuple[str, str, str], Json] = field(default_factory=dict)  # (kind, namespace, name)
    pods: dict[tuple[str, str], Json] = field(default_factory=dict)
    forbidden: set[tuple[str, str]] = field(default_factory=set)  # (verb, resource), as RBAC names them
    requests: list[Request] = field(default_factory=list)
    leases: dict[tuple[str, str], Json] = field(default_factory=dict)
    url: str = ""
    _versions: int = 0
    _runner: web.AppRunner | None = None

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> FakeKubernetes:
        app = web.Application()
        app.router.add_get("/apis/keda.sh/v1alpha1/namespaces/{ns}/scaledobjects/{name}", self._get_scaled_object)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/{resource}/{name}", self._get_workload)
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self._list_pods)
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self._patch_pod)
        leases = "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases"
        app.router.add_get(leases + "/{name}", self._get_lease)
        app.router.add_post(leases, self._create_lease)
        app.router.add_put(leases + "/{name}", self._replace_lease)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # What a test puts in the cluster.
    def add_scaled_object(
        self, namespace: str, name: str, target: str, kind: str | None = "Deployment", *, min_replicas: object = None
    ) -> None:
        ref: Json = {"name": target}
        if kind is not None:
            ref["kind"] = kind
        spec: Json = {"scaleTargetRef": ref}
        if min_replicas is not None:
            spec["minReplicaCount"] = min_replicas
        self.scaled_objects[(namespace, name)] = {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }

    def add_workload(self, kind: str, namespace: str, name: str, labels: dict[str, str]) -> None:
        self.workloads[(kind, namespace, name)] = {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "worker"}]}},
            },
        }

    def add_pod(
        self,
        namespace: str,
        name: str,
        labels: dict[str, str],
        *,
        owner: tuple[str, str] | None,
        annotations: dict[str, str] | None = None,
        pod_ip: str | None = None,
        terminating: bool = False,
    ) -> None:
        metadata: Json = {"name": name, "namespace": namespace, "labels": labels, "uid": str(uuid.uuid4())}
        if annotations:
            metadata["annotations"] = dict(annotations)
        if owner is not None:
            kind, owner_name = owner
            metadata["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": kind, "name": owner_name, "uid": "u", "controller": True}
            ]
        if terminating:
            metadata["deletionTimestamp"] = "2026-11-21T00:00:00Z"
        self.pods[(namespace, name)] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {"containers": [{"name": "worker"}]},
            "status": {"podIP": pod_ip} if pod_ip else {},
        }

    def cost(self, namespace: str, name: str) -> str | None:
        annotations = self.pods[(namespace, name)]["metadata"].get("annotations") or {}
        value: str | None = annotations.get("controller.kubernetes.io/pod-deletion-cost")
        return value

    def patches(self) -> list[tuple[str, Json | None]]:
        return [(r.path, r.body) for r in self.requests if r.method == "PATCH"]

    # The API.
    async def _record(self, request: web.Request) -> Json | None:
        body = await request.json() if request.can_read_body else None
        self.requests.append(
            Request(
                request.method,
                request.path,
                dict(request.query),
                request.content_type,
                body,
                request.headers.get("Authorization"),
            )
        )
        return body

    def _refuse(self, verb: str, resource: str, namespace: str) -> web.Response | None:
        if (verb, resource) not in self.forbidden:
            return None
        status = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "reason": "Forbidden",
            "code": 403,
            "message": f'{resource} is forbidden: User "system:serviceaccount:keda:airflow-keda-scaler" '
            f"cannot {verb} resource in the namespace {namespace!r}",
        }
        return web.json_response(status, status=403)

    async def _get_scaled_object(self, request: web.Request) -> web.Response:
        await self._record(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        refused = self._refuse("get", "scaledobjects", ns)
        if refused is not None:
            return refused
        found = self.scaled_objects.get((ns, name))
        return web.json_response(found) if found else _not_found()

    async def _get_workload(self, request: web.Request) -> web.Response:
        await self._record(request)
        ns, resource, name = request.match_info["ns"], request.match_info["resource"], request.match_info["name"]
        refused = self._refuse("get", resource, ns)
        if refused is not None:
            return refused
        kind = {"deployments": "Deployment", "statefulsets": "StatefulSet"}.get(resource)
        found = self.workloads.get((kind or "", ns, name))
        return web.json_response(found) if found else _not_found()

    async def _list_pods(self, request: web.Request) -> web.Response:
        await self._record(request)
        ns = request.match_info["ns"]
        refused = self._refuse("list", "pods", ns)
        if refused is not None:
            return refused
        selector = parse_selector(request.query.get("labelSelector", ""))
        items = [
            pod
            for (pod_ns, _), pod in sorted(self.pods.items())
            if pod_ns == ns and all(test(pod["metadata"].get("labels") or {}) for test in selector)
        ]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})

    async def _patch_pod(self, request: web.Request) -> web.Response:
        body = await self._record(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        refused = self._refuse("patch", "pods", ns)
        if refused is not None:
            return refused
        pod = self.pods.get((ns, name))
        if pod is None:
            return _not_found()
        annotations = (body or {}).get("metadata", {}).get("annotations", {})
        pod["metadata"].setdefault("annotations", {}).update(annotations)
        return web.json_response(pod)

    # Leases, with the API server's optimistic concurrency: a write must carry the resourceVersion it read.
    async def _get_lease(self, request: web.Request) -> web.Response:
        await self._record(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        refused = self._refuse("get", "leases", ns)
        if refused is not None:
            return refused
        found = self.leases.get((ns, name))
        return web.json_response(found) if found else _not_found()

    async def _create_lease(self, request: web.Request) -> web.Response:
        body = await self._record(request) or {}
        ns, name = request.match_info["ns"], body["metadata"]["name"]
        refused = self._refuse("create", "leases", ns)
        if refused is not None:
            return refused
        if (ns, name) in self.leases:
            return _conflict()
        return web.json_response(self._store_lease(ns, name, body), status=201)

    async def _replace_lease(self, request: web.Request) -> web.Response:
        body = await self._record(request) or {}
        ns, name = request.match_info["ns"], request.match_info["name"]
        refused = self._refuse("update", "leases", ns)
        if refused is not None:
            return refused
        found = self.leases.get((ns, name))
        if found is None:
            return _not_found()
        if body["metadata"].get("resourceVersion") != found["metadata"]["resourceVersion"]:
            return _conflict()
        return web.json_response(self._store_lease(ns, name, body))

    def _store_lease(self, ns: str, name: str, body: Json) -> Json:
        self._versions += 1
        stored = {**body, "metadata": {**body["metadata"], "namespace": ns, "resourceVersion": str(self._versions)}}
        self.leases[(ns, name)] = stored
        return stored


def _conflict() -> web.Response:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409}
    return web.json_response(status, status=409)


def _not_found() -> web.Response:
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
    return web.json_response(status, status=404)


def parse_selector(text: str) -> list[Any]:
    """The API server's label selector grammar, the parts the scaler can send."""
    tests: list[Any] = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", text):
        part = part.strip()
        if not part:
            continue
        if match := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", part):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if op == "in":
                tests.append(lambda labels, k=key, v=values: labels.get(k) in v)
            else:
                tests.append(lambda labels, k=key, v=values: labels.get(k) not in v)
        elif part.startswith("!"):
            tests.append(lambda labels, k=part[1:]: k not in labels)
        elif "=" in part:
            key, _, value = part.partition("=")
            tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
        else:
            tests.append(lambda labels, k=part: k in labels)
    return tests


def kubeconfig(url: str, token: str) -> str:
    """A kubeconfig that points at the fake with a bearer token, as `kubectl config` writes one."""
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "scaler", "user": {"token": token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "scaler"}}],
            "current-context": "fake",
        }
    )
