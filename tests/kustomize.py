"""Render a kustomization as `kustomize build` would, for the subset manifests/ uses.

There is no kustomize binary here. This renders `resources` (files and folders),
JSON 6902 `patches` and `namespace`, and refuses any other field, so a
kustomization can never use a feature the tests would silently skip.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

Resource = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "namespace", "resources", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"}


def load_documents(path: Path) -> list[Resource]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def build(folder: Path) -> list[Resource]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    assert not unsupported, f"{folder}: the test renderer does not implement {sorted(unsupported)}"
    resources: list[Resource] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        resources += build(path) if path.is_dir() else load_documents(path)
    for patch in kustomization.get("patches", []):
        operations = yaml.safe_load((folder / patch["path"]).read_text())
        assert isinstance(operations, list), f"{patch['path']}: only JSON 6902 patches are rendered here"
        target = patch["target"]
        matched = [i for i, r in enumerate(resources) if _matches(r, target)]
        assert matched, f"{patch['path']}: no resource matches {target}"
        for index in matched:
            resources[index] = jsonpatch.apply_patch(copy.deepcopy(resources[index]), operations)
    if namespace := kustomization.get("namespace"):
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = namespace
    return resources


def _matches(resource: Resource, target: dict[str, str]) -> bool:
    """A patch target: kind, and name (or namespace) from metadata."""
    return all(
        (resource["kind"] if key == "kind" else resource["metadata"].get(key)) == value for key, value in target.items()
    )
