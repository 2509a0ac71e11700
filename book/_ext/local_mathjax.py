"""Serve MathJax 3 from the book itself instead of a CDN.

The files come from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2; it only ships
static files and has no dependencies). After a successful HTML build the ``es5`` folder is
copied to ``<outdir>/_static/mathjax``; ``_config.yml`` points ``mathjax_path`` at
``mathjax/tex-chtml.js`` (relative paths are relative to ``_static``).
"""
from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.errors import ExtensionError
from sphinx.util import logging
from sphinx.util.fileutil import copy_asset

DISTRIBUTION = "django-static-mathjax"
logger = logging.getLogger(__name__)


def mathjax_es5_dir() -> Path:
    """Folder of the installed MathJax 3 ``es5`` build (contains tex-chtml.js)."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:  # pragma: no cover - install error
        raise ExtensionError(f"{DISTRIBUTION} is not installed: run `make venv`") from exc
    es5 = Path(dist.locate_file("mathjax/static/mathjax/es5"))
    if not (es5 / "tex-chtml.js").is_file():
        raise ExtensionError(f"no MathJax es5 build in {es5}")
    return es5


def _check_config(app: Sphinx, config) -> None:
    path = config.mathjax_path or ""
    if "://" in path or path.startswith("//"):
        raise ExtensionError(f"mathjax_path must be local, got {path!r}")
    mathjax_es5_dir()  # fail early if the package is missing


def _copy(app: Sphinx, exc) -> None:
    if exc is not None or app.builder.format != "html":
        return
    dest = os.path.join(app.outdir, "_static", "mathjax")
    copy_asset(str(mathjax_es5_dir()), dest)
    logger.info(f"local_mathjax: MathJax copied to {dest}")


def setup(app: Sphinx):
    app.connect("config-inited", _check_config)
    app.connect("build-finished", _copy)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
