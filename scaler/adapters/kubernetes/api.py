"""The few Kubernetes API calls safe scale-down makes, named by verb, over kubernetes-asyncio's ApiClient.

Four requests, made with `ApiClient.call_api` (the client's own authentication,
TLS and timeouts) and read as plain JSON: the generated API classes and models
are never loaded (lazy_client.py says why).

ScaledObject (keda.sh/v1alpha1) -> its scaleTargetRef -> the target's selector
-> the target's own pods -> their pod-deletion-cost. Each failure becomes a
KubernetesError whose kind is one of a fixed set and whose message names the
verb, the resource and the namespace, never a token or a response body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import aiohttp

from scaler.adapters.kubernetes import lazy_client
from scaler.rules.deletion_costs import WorkerPod
from scaler.rules.timestamps import parse_time
from scaler.rules.trigger_metadata import TargetKind
from scaler.rules.worker_names import pod_hostname, pod_keys

if TYPE_CHECKING:
    # Only with an API client (scaler.adapters.kubernetes.access imports the library when it connects).
    from kubernetes_asyncio.client import ApiClient

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
RBAC_HINT = "grant the scaler's ServiceAccount the Role in manifests/base/rbac.yaml"

ErrorKind = Literal["forbidden", "unauthorized", "not_found", "unsupported", "api_error", "conflict"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("forbidden", "unauthorized", "not_found", "unsupported", "api_error", "conflict")


class KubernetesError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        self.kind = kind
        super().__init__(message)


@dataclass(frozen=True)
class ScaleTarget:
    """A ScaledObject's scale target and the label selector of its pods."""

    namespace: str
    kind: str
    name: str
    selector: str
    # The ScaledObject's minReplicaCount: the workload never has fewer pods (drain keeps them consuming).
    min_replicas: int = 0

    @property
    def workload_kind(self) -> TargetKind | None:
        """The kind as the floor and drain know kinds (the two safe scale-down reads), else None."""
        if self.kind == "StatefulSet":
            return "StatefulSet"
        return "Deployment" if self.kind == "Deployment" else None


class KubernetesApi:
    def __init__(self, client: ApiClient, *, request_timeout: float = 10.0) -> None:
        self.client = client
        self._timeout = request_timeout
        self._api_exception = lazy_client.load().ApiException

    async def read_scale_target(self, namespace: str, scaled_object: str) -> ScaleTarget:
        """The ScaledObject's scaleTargetRef (kind defaults to Deployment, as KEDA's does) and its selector."""
        body = await self._call(
            f"get scaledobjects.keda.sh {namespace}/{scaled_object}",
            "GET",
            f"/apis/keda.sh/v1alpha1/namespaces/{_segment(namespace)}/scaledobjects/{_segment(scaled_object)}",
        )
        spec = body.get("spec", {})
        ref = spec.get("scaleTargetRef", {})
        kind, name = ref.get("kind") or "Deployment", ref.get("name")
        api_version = ref.get("apiVersion") or "apps/v1"
        if not name:
            raise KubernetesError("unsupported", f"ScaledObject {namespace}/{scaled_object} has no scaleTargetRef.name")
        if kind not in ("Deployment", "StatefulSet") or api_version != "apps/v1":
            raise KubernetesError(
                "unsupported",
                f"ScaledObject {namespace}/{scaled_object} scales {api_version} {kind} {name}: "
                "pod-deletion-cost is kept for apps/v1 Deployments only (StatefulSets need none)",
            )
        resource = "deployments" if kind == "Deployment" else "statefulsets"
        workload = await self._call(
            f"get {resource}.apps {namespace}/{name}",
            "GET",
            f"/apis/apps/v1/namespaces/{_segment(namespace)}/{resource}/{_segment(name)}",
        )
        selector = label_selector((workload.get("spec") or {}).get("selector"))
        if not selector:
            raise KubernetesError("unsupported", f"{kind} {namespace}/{name} has an empty selector")
        min_replicas = _int32_at_least_0(spec.get("minReplicaCount"))
        return ScaleTarget(namespace=namespace, kind=kind, name=name, selector=selector, min_replicas=min_replicas)

    async def list_target_pods(self, target: ScaleTarget) -> list[WorkerPod]:
        """The target's own pods that are not being deleted; a pod another workload owns is never returned."""
        pods = await self._call(
            f"list pods in {target.namespace}",
            "GET",
            f"/api/v1/namespaces/{_segment(target.namespace)}/pods",
            query={"labelSelector": target.selector},
        )
        found = []
        for pod in pods.get("items") or ():
            meta = pod.get("metadata") or {}
            if meta.get("deletionTimestamp") is not None:
                continue
            if not owned_by(target, meta.get("ownerReferences"), meta.get("labels") or {}):
                continue
            spec, status = pod.get("spec") or {}, pod.get("status") or {}
            found.append(
                WorkerPod(
                    name=meta["name"],
                    keys=pod_keys(meta["name"], spec.get("hostname"), status.get("podIP")),
                    deletion_cost=(meta.get("annotations") or {}).get(DELETION_COST),
                    hostname=pod_hostname(meta["name"], spec.get("hostname")),
                    created_at=parse_time(meta.get("creationTimestamp")) or 0.0,
                )
            )
        return found

    async def patch_deletion_cost(self, namespace: str, pod: str, cost: int) -> None:
        # A strategic merge patch of one annotation, as `kubectl annotate` sends: it touches nothing else and
        # needs no resourceVersion.
        await self._call(
            f"patch pods {namespace}/{pod}",
            "PATCH",
            f"/api/v1/namespaces/{_segment(namespace)}/pods/{_segment(pod)}",
            body={"metadata": {"annotations": {DELETION_COST: str(cost)}}},
            content_type="application/strategic-merge-patch+json",
        )

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A coordination.k8s.io Lease (drain's leader election), or None when there is none yet."""
        try:
            lease: dict[str, Any] = await self._call(
                f"get leases.coordination.k8s.io {namespace}/{name}", "GET", _lease_path(namespace, name)
            )
        except KubernetesError as error:
            if error.kind == "not_found":
                return None
            raise
        return lease

    async def write_lease(self, namespace: str, name: str, spec: dict[str, Any], resource_version: str | None) -> None:
        """Create the Lease (`resource_version` None) or replace the version read; a lost race is `conflict`."""
        body: dict[str, Any] = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        if resource_version is None:
            path = f"/apis/coordination.k8s.io/v1/namespaces/{_segment(namespace)}/leases"
            await self._call(f"create leases.coordination.k8s.io {namespace}/{name}", "POST", path, body=body)
        else:
            body["metadata"]["resourceVersion"] = resource_version
            await self._call(
                f"update leases.coordination.k8s.io {namespace}/{name}", "PUT", _lease_path(namespace, name), body=body
            )

    async def close(self) -> None:
        await self.client.close()

    async def _call(
        self,
        what: str,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """One request with the client's authentication; its JSON body as dicts and lists."""
        try:
            return await self.client.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params={"Accept": "application/json", "Content-Type": content_type},
                body=body,
                # "object": the client returns the decoded JSON as it is, never a generated model.
                response_types_map={200: "object", 201: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
                _preload_content=True,
                _request_timeout=self._timeout,
            )
        except self._api_exception as error:
            raise _explain(what, getattr(error, "status", None)) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise KubernetesError("api_error", f"cannot {what}: {type(error).__name__}") from None


def _int32_at_least_0(value: object) -> int:
    """A count as KEDA's CRD types it (an int32 of at least 0); anything else is taken as KEDA's default, 0.

    >>> _int32_at_least_0(3), _int32_at_least_0("3"), _int32_at_least_0(True), _int32_at_least_0(2**40)
    (3, 0, 0, 2147483647)
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return 0
    return min(value, 2**31 - 1)


def _lease_path(namespace: str, name: str) -> str:
    return f"/apis/coordination.k8s.io/v1/namespaces/{_segment(namespace)}/leases/{_segment(name)}"


def _segment(name: str) -> str:
    """A name as one URL path segment (Kubernetes names never need it; a hostile one must not add segments)."""
    return quote(name, safe="")


def _explain(what: str, status: int | None) -> KubernetesError:
    if status == 403:
        return KubernetesError("forbidden", f"forbidden to {what} ({RBAC_HINT})")
    if status == 401:
        return KubernetesError("unauthorized", f"unauthorized to {what}: the API server rejected the credentials")
    if status == 404:
        return KubernetesError("not_found", f"cannot {what}: not found")
    if status == 409:
        return KubernetesError("conflict", f"cannot {what}: changed since it was read, or exists already")
    return KubernetesError("api_error", f"cannot {what}: HTTP {status}")


def label_selector(selector: Mapping[str, Any] | None) -> str:
    """A LabelSelector (as JSON) as the `labelSelector` query string the API server parses.

    >>> expressions = [{"key": "tier", "operator": "In", "values": ["a", "b"]},
    ...                {"key": "canary", "operator": "DoesNotExist"}]
    >>> label_selector({"matchLabels": {"component": "worker"}, "matchExpressions": expressions})
    'component=worker,tier in (a,b),!canary'
    """
    if not selector:
        return ""
    parts = [f"{key}={value}" for key, value in sorted((selector.get("matchLabels") or {}).items())]
    for requirement in selector.get("matchExpressions") or ():
        key, operator = requirement.get("key"), requirement.get("operator")
        values = ",".join(requirement.get("values") or ())
        if operator == "In":
            parts.append(f"{key} in ({values})")
        elif operator == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif operator == "Exists":
            parts.append(key)
        elif operator == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise KubernetesError("unsupported", f"selector operator {operator!r} is not one Kubernetes defines")
    return ",".join(parts)


def owned_by(target: ScaleTarget, owners: Any, labels: Mapping[str, str]) -> bool:
    """Whether the pod's controller is the target: its StatefulSet, or its Deployment's ReplicaSet.

    A selector can match other workloads' pods; ownership cannot. A Deployment's
    ReplicaSets are named `<deployment>-<pod-template-hash>`, and the pod carries
    the hash as a label, so no ReplicaSet needs reading (nor RBAC to read it).
    """
    controller = next((owner for owner in owners or () if owner.get("controller")), None)
    if controller is None:
        return False
    kind, name = controller.get("kind"), controller.get("name")
    if target.kind == "StatefulSet":
        return bool(kind == "StatefulSet" and name == target.name)
    template_hash = labels.get("pod-template-hash")
    return bool(kind == "ReplicaSet" and template_hash and name == f"{target.name}-{template_hash}")
