"""What the demo's and replay's `--plot FILE` share: the accepted files, and writing one.

PNG and SVG come from matplotlib (the [demo] extra); HTML is a page holding the
SVG, so it opens in any browser with nothing else to load.
"""

from __future__ import annotations

import html
import importlib.util
import io
from pathlib import Path
from typing import Any

from scaler.errors import shown

PLOT_FORMATS = (".png", ".svg", ".html")
MISSING = "--plot needs matplotlib: pip install 'airflow-keda-scaler[demo]'"


def plot_file(text: str) -> str:
    """The --plot flag's parser: a file name whose suffix says the format."""
    if Path(text).suffix.lower() not in PLOT_FORMATS:
        raise ValueError(f"'{shown(text)}' must end in .png, .svg or .html")
    return text


def pyplot() -> Any:
    """matplotlib's pyplot drawing to files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as module

    return module


def save(figure: Any, path: Path, title: str) -> None:
    suffix = path.suffix.lower()
    if suffix == ".html":
        svg = io.StringIO()
        figure.savefig(svg, format="svg")
        path.write_text(
            f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body><h1>{html.escape(title)}</h1>\n{svg.getvalue()}\n</body></html>\n"
        )
    else:
        figure.savefig(path, format=suffix.lstrip("."))


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None
