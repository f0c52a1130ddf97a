"""How the scaler reaches the Kubernetes API: in-cluster, a kubeconfig, or not at all.

`auto` (the default) takes the pod's service account when KUBERNETES_SERVICE_HOST
is set, else a kubeconfig when one exists, else runs without Kubernetes: the
busy-worker floor still applies and pod-deletion-cost annotations are skipped.
An explicit `in-cluster` or `kubeconfig` that cannot be loaded is a startup error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from scaler.adapters.kubernetes import lazy_client
from scaler.options import positive, setting

if TYPE_CHECKING:
    from kubernetes_asyncio.client import ApiClient

KubernetesMode = Literal["auto", "in-cluster", "kubeconfig", "off"]
KUBERNETES_MODES: tuple[KubernetesMode, ...] = ("auto", "in-cluster", "kubeconfig", "off")
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class KubernetesSettings:
    mode: KubernetesMode = setting(
        "auto",
        flag="--kubernetes",
        choices=KUBERNETES_MODES,
        help="How to reach the Kubernetes API to keep worker pods' pod-deletion-cost: in-cluster (the pod's "
        "service account), kubeconfig, auto (in-cluster when KUBERNETES_SERVICE_HOST is set, else a kubeconfig "
        "if one exists, else none), or off. Without it the busy-worker floor still applies.",
    )
    kubeconfig: str | None = setting(
        None,
        flag="--kubeconfig",
        metavar="PATH",
        help="The kubeconfig for --kubernetes kubeconfig/auto; default: $KUBECONFIG, else ~/.kube/config.",
    )
    interval: float = setting(
        5.0,
        flag="--deletion-cost-interval",
        parse=positive(float),
        metavar="SECONDS",
        help="How often worker pods' pod-deletion-cost is brought up to date (one pod list per scale target).",
    )
    patch_rate: float = setting(
        10.0,
        flag="--kubernetes-patch-rate",
        parse=positive(float),
        metavar="PER_SECOND",
        help="Most pod patches per second, over all ScaledObjects.",
    )
    request_timeout: float = 10.0
    service_account_dir: Path = SERVICE_ACCOUNT_DIR


class NoKubernetes(Exception):
    """The scaler has no Kubernetes API to talk to; the message says why (never a token or a path's content)."""


def own_namespace(settings: KubernetesSettings, environ: Mapping[str, str] = os.environ) -> str:
    """The scaler pod's namespace: its service account's, else POD_NAMESPACE (the downward API), else default."""
    try:
        return (settings.service_account_dir / "namespace").read_text().strip() or "default"
    except OSError:
        return environ.get("POD_NAMESPACE") or "default"


def default_kubeconfig(environ: Mapping[str, str]) -> Path:
    # kubectl's rule: the first file of $KUBECONFIG (a path list), else ~/.kube/config.
    listed = [part for part in environ.get("KUBECONFIG", "").split(os.pathsep) if part]
    return Path(listed[0]) if listed else Path.home() / ".kube" / "config"


async def connect(settings: KubernetesSettings, environ: Mapping[str, str] = os.environ) -> ApiClient:
    """An API client as `settings.mode` says, or NoKubernetes naming what is missing."""
    mode = settings.mode
    if mode == "off":
        raise NoKubernetes("switched off (--kubernetes off)")
    kubeconfig = Path(settings.kubeconfig) if settings.kubeconfig else default_kubeconfig(environ)
    if mode == "auto":
        if environ.get("KUBERNETES_SERVICE_HOST"):
            mode = "in-cluster"
        elif kubeconfig.is_file():
            mode = "kubeconfig"
        else:
            raise NoKubernetes(
                f"not running in a cluster (no KUBERNETES_SERVICE_HOST) and no kubeconfig at {kubeconfig}"
            )
    # Loaded only now that there is a cluster to talk to, and only the parts four HTTP calls need
    # (lazy_client.py): the whole library would add about 40 MB resident to the scaler.
    library = lazy_client.load()
    ConfigException = library.ConfigException  # noqa: N806 - the library's class

    configuration = library.Configuration()
    try:
        if mode == "in-cluster":
            library.InClusterConfigLoader(
                token_filename=str(settings.service_account_dir / "token"),
                cert_filename=str(settings.service_account_dir / "ca.crt"),
                environ=dict(environ),
            ).load_and_set(configuration)
        else:
            if not kubeconfig.is_file():
                raise NoKubernetes(f"no kubeconfig at {kubeconfig}")
            await library.load_kube_config(
                config_file=str(kubeconfig), client_configuration=configuration, persist_config=False
            )
    except ConfigException as error:
        # The loader's messages name files and settings, never their content.
        raise NoKubernetes(f"{mode} configuration unusable: {error}") from None
    client: ApiClient = library.ApiClient(configuration)
    return client
