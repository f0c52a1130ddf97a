"""The chart rendered by the real `helm` (v4, built from the Go module proxy by scripts/build-go-tools)."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import yaml

from tests.support.kustomize import Resource

ROOT = Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "charts" / "airflow-keda-scaler"
BUILD = ROOT / "scripts" / "build-go-tools"
# Labels Helm charts put on every object and selector; kustomize's base has only app.kubernetes.io/name.
HELM_LABELS = {
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
}


@cache
def tools() -> Path:
    """The folder holding helm and grpcurl (built now if missing: a minute or two, once per machine)."""
    result = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"scripts/build-go-tools failed:\n{result.stderr[-4000:]}")
    return Path(result.stdout.strip().splitlines()[-1])


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(tools() / "helm"), *args], capture_output=True, text=True, timeout=120, check=False)
    if check and result.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def template(*values: str, release: str = "airflow-keda-scaler", namespace: str = "keda") -> list[Resource]:
    """`helm template RELEASE charts/airflow-keda-scaler -n NAMESPACE --set ...`: the objects it renders."""
    sets = [argument for value in values for argument in ("--set", value)]
    rendered = helm("template", release, str(CHART), "--namespace", namespace, *sets).stdout
    return [document for document in yaml.safe_load_all(rendered) if document]


def without_helm_labels(value: object) -> object:
    """The same objects with Helm's release labels taken out of every label map and selector."""
    if isinstance(value, dict):
        return {
            key: without_helm_labels(item)
            for key, item in value.items()
            if not (isinstance(key, str) and key in HELM_LABELS)
        }
    if isinstance(value, list):
        return [without_helm_labels(item) for item in value]
    return value
