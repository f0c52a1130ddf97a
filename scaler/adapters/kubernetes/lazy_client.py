"""kubernetes-asyncio's configuration, authentication and HTTP layer, without its generated APIs and models.

Importing any part of kubernetes-asyncio runs the package's `__init__` files,
and those import every generated API class and all ~1,500 models: about 40 MB
resident, most of the scaler's memory, for four HTTP calls. The scaler needs
only the loaders (kubeconfig with its exec/OIDC/token plugins, the in-cluster
service account), `Configuration` and `ApiClient.call_api` with its REST layer.

So `load()` registers the library's heavy packages as plain packages over the
same folders before it imports those submodules: the submodules are the
library's own, unchanged; only the `__init__` files that import everything do
not run. If the library is already imported in full in this process (a user's
plugin, a test), that is used as it is.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LIBRARY = "kubernetes_asyncio"
# The packages whose __init__ imports every generated API or model (client, client.api, client.models),
# or the whole library (kubernetes_asyncio, config via client).
_HEAVY_PACKAGES = ("", "client", "client.api", "client.models", "config")


@dataclass(frozen=True)
class ClientLibrary:
    """The parts of kubernetes-asyncio the scaler uses."""

    Configuration: Any
    ApiClient: Any
    ApiException: type[Exception]
    ConfigException: type[Exception]
    InClusterConfigLoader: Any
    load_kube_config: Any


@functools.cache
def load() -> ClientLibrary:
    """The library's parts, loaded once per process."""
    if LIBRARY not in sys.modules:
        _register_plain_packages()
    configuration = importlib.import_module(f"{LIBRARY}.client.configuration")
    api_client = importlib.import_module(f"{LIBRARY}.client.api_client")
    exceptions = importlib.import_module(f"{LIBRARY}.client.exceptions")
    client = sys.modules[f"{LIBRARY}.client"]
    # The loaders import these two names from the client package.
    if not hasattr(client, "ApiClient"):
        setattr(client, "ApiClient", api_client.ApiClient)  # noqa: B010 - a module made at run time
        setattr(client, "Configuration", configuration.Configuration)  # noqa: B010
    kube_config = importlib.import_module(f"{LIBRARY}.config.kube_config")
    incluster = importlib.import_module(f"{LIBRARY}.config.incluster_config")
    config_exception = importlib.import_module(f"{LIBRARY}.config.config_exception")
    return ClientLibrary(
        Configuration=configuration.Configuration,
        ApiClient=api_client.ApiClient,
        ApiException=exceptions.ApiException,
        ConfigException=config_exception.ConfigException,
        InClusterConfigLoader=incluster.InClusterConfigLoader,
        load_kube_config=kube_config.load_kube_config,
    )


def _register_plain_packages() -> None:
    spec = importlib.util.find_spec(LIBRARY)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{LIBRARY} is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    for relative in _HEAVY_PACKAGES:
        name = f"{LIBRARY}.{relative}" if relative else LIBRARY
        package = types.ModuleType(name, f"{name}, its submodules only (scaler.adapters.kubernetes.lazy_client)")
        package.__path__ = [str(root.joinpath(*relative.split(".")) if relative else root)]
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)
