"""The few Kubernetes API calls safe scale-down makes, named by verb, over kubernetes-asyncio.

ScaledObject (keda.sh/v1alpha1) -> its scaleTargetRef -> the target's selector
-> the target's own pods -> their pod-deletion-cost. Each failure becomes a
KubernetesError whose kind is one of a fixed set and whose message names the
verb, the resource and the namespace, never a token or a response body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import aiohttp

from scaler.hostnames import pod_keys

if TYPE_CHECKING:
    # Only with an API client (scaler.kubernetes.access imports the library when it connects).
    from kubernetes_asyncio.client import ApiClient

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
RBAC_HINT = "grant the scaler's ServiceAccount the Role in manifests/base/rbac.yaml"

ErrorKind = Literal["forbidden", "unauthorized", "not_found", "unsupported", "api_error"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("forbidden", "unauthorized", "not_found", "unsupported", "api_error")


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


@dataclass(frozen=True)
class WorkerPod:
    name: str
    keys: frozenset[str]  # hostnames.pod_keys: how Airflow may have recorded this pod
    deletion_cost: str | None  # the annotation as it is now


class KubernetesApi:
    def __init__(self, client: ApiClient, *, request_timeout: float = 10.0) -> None:
        from kubernetes_asyncio.client import AppsV1Api, CoreV1Api, CustomObjectsApi

        self.client = client
        self._timeout = request_timeout
        self._custom = CustomObjectsApi(client)
        self._apps = AppsV1Api(client)
        self._core = CoreV1Api(client)

    async def read_scale_target(self, namespace: str, scaled_object: str) -> ScaleTarget:
        """The ScaledObject's scaleTargetRef (kind defaults to Deployment, as KEDA's does) and its selector."""
        what = f"get scaledobjects.keda.sh {namespace}/{scaled_object}"
        body: dict[str, Any] = await self._call(
            what,
            self._custom.get_namespaced_custom_object(
                "keda.sh", "v1alpha1", namespace, "scaledobjects", scaled_object, _request_timeout=self._timeout
            ),
        )
        ref = body.get("spec", {}).get("scaleTargetRef", {})
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
        read = (
            self._apps.read_namespaced_deployment if kind == "Deployment" else self._apps.read_namespaced_stateful_set
        )
        resource = "deployments.apps" if kind == "Deployment" else "statefulsets.apps"
        workload = await self._call(
            f"get {resource} {namespace}/{name}", read(name, namespace, _request_timeout=self._timeout)
        )
        selector = label_selector(workload.spec.selector)
        if not selector:
            raise KubernetesError("unsupported", f"{kind} {namespace}/{name} has an empty selector")
        return ScaleTarget(namespace=namespace, kind=kind, name=name, selector=selector)

    async def list_target_pods(self, target: ScaleTarget) -> list[WorkerPod]:
        """The target's own pods that are not being deleted; a pod another workload owns is never returned."""
        pods = await self._call(
            f"list pods in {target.namespace}",
            self._core.list_namespaced_pod(
                target.namespace, label_selector=target.selector, _request_timeout=self._timeout
            ),
        )
        found = []
        for pod in pods.items:
            meta = pod.metadata
            if meta.deletion_timestamp is not None or not owned_by(target, meta.owner_references, meta.labels or {}):
                continue
            found.append(
                WorkerPod(
                    name=meta.name,
                    keys=pod_keys(
                        meta.name, pod.spec.hostname if pod.spec else None, pod.status.pod_ip if pod.status else None
                    ),
                    deletion_cost=(meta.annotations or {}).get(DELETION_COST),
                )
            )
        return found

    async def patch_deletion_cost(self, namespace: str, pod: str, cost: int) -> None:
        # A patch of one annotation (the client sends a dict as a strategic merge patch, as `kubectl annotate`
        # does): it touches nothing else and needs no resourceVersion.
        body = {"metadata": {"annotations": {DELETION_COST: str(cost)}}}
        await self._call(
            f"patch pods {namespace}/{pod}",
            self._core.patch_namespaced_pod(pod, namespace, body, _request_timeout=self._timeout),
        )

    async def close(self) -> None:
        await self.client.close()

    async def _call(self, what: str, request: Any) -> Any:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await request
        except ApiException as error:
            raise _explain(what, error.status) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as error:
            raise KubernetesError("api_error", f"cannot {what}: {type(error).__name__}") from None


def _explain(what: str, status: int | None) -> KubernetesError:
    if status == 403:
        return KubernetesError("forbidden", f"forbidden to {what} ({RBAC_HINT})")
    if status == 401:
        return KubernetesError("unauthorized", f"unauthorized to {what}: the API server rejected the credentials")
    if status == 404:
        return KubernetesError("not_found", f"cannot {what}: not found")
    return KubernetesError("api_error", f"cannot {what}: HTTP {status}")


def label_selector(selector: Any) -> str:
    """A LabelSelector (model) as the `labelSelector` query string the API server parses.

    >>> from kubernetes_asyncio.client import V1LabelSelector, V1LabelSelectorRequirement as R
    >>> expressions = [R(key="tier", operator="In", values=["a", "b"]), R(key="canary", operator="DoesNotExist")]
    >>> label_selector(V1LabelSelector(match_labels={"component": "worker"}, match_expressions=expressions))
    'component=worker,tier in (a,b),!canary'
    """
    if selector is None:
        return ""
    parts = [f"{key}={value}" for key, value in sorted((selector.match_labels or {}).items())]
    for requirement in selector.match_expressions or ():
        key, operator = requirement.key, requirement.operator
        values = ",".join(requirement.values or ())
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
    controller = next((owner for owner in owners or () if owner.controller), None)
    if controller is None:
        return False
    if target.kind == "StatefulSet":
        return bool(controller.kind == "StatefulSet" and controller.name == target.name)
    template_hash = labels.get("pod-template-hash")
    return bool(
        controller.kind == "ReplicaSet" and template_hash and controller.name == f"{target.name}-{template_hash}"
    )
