"""Regenerate scaler/_proto from protos/externalscaler.proto.

Run `python scripts/generate_protos.py` (or `make protos`). The drift test runs
the same generation into a temporary folder and compares it with the files in
the repository, so the committed stubs always match the .proto and the pinned
grpcio-tools.

The include mapping `-Iscaler/_proto=protos` makes protoc believe the .proto
lives in the package, so the generated gRPC module imports its message module
as `scaler._proto.externalscaler_pb2` instead of a bare top-level name.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = "externalscaler.proto"
PACKAGE_DIR = Path("scaler") / "_proto"
GENERATED = (
    "externalscaler_pb2.py",
    "externalscaler_pb2.pyi",
    "externalscaler_pb2_grpc.py",
    "externalscaler_pb2_grpc.pyi",
)


def generate(out_root: Path) -> list[Path]:
    """Generate the stubs under out_root/scaler/_proto and return their paths."""
    (out_root / PACKAGE_DIR).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PACKAGE_DIR.as_posix()}={ROOT / 'protos'}",
        f"-I{Path(protoc.__file__).parent / '_proto'}",
        f"--python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        (PACKAGE_DIR / PROTO).as_posix(),
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    return [out_root / PACKAGE_DIR / name for name in GENERATED]


def main() -> None:
    # protoc finds the mypy plugins (protoc-gen-mypy*) on PATH, next to this interpreter.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(Path(tmp)):
            shutil.copyfile(path, ROOT / PACKAGE_DIR / path.name)
            print(f"wrote {(PACKAGE_DIR / path.name).as_posix()}")


if __name__ == "__main__":
    main()
