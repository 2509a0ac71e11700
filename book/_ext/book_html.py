"""HTML fixes of the rendered book.

* Every page used to log "Identifier 'THEBE_JS_URL' has already been declared": sphinx-thebe's
  inline configuration script is registered twice (once with filename None, once with "",
  which Sphinx does not see as equal), and a ``const`` declared twice is a SyntaxError.
  Scripts with the same source and the same inline body are kept once.
* ``static/book.css``: code cells fit 80 characters in the text column; wide tables scroll.
* Exercise solutions are wrapped in ``<details><summary>Solution</summary>`` ... ``</details>``
  in the chapters' sources, so that Jupyter and Colab fold them; in the book sphinx-exercise's
  dropdown already folds them, and those two raw HTML lines are dropped.
"""
from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from sphinx.application import Sphinx

STATIC = Path(__file__).resolve().parent / "static"


def _key(script) -> tuple:
    attributes = getattr(script, "attributes", {}) or {}
    filename = getattr(script, "filename", script) or ""   # inline scripts: None or ""
    return (str(filename), attributes.get("body", ""))


def _dedupe_scripts(app: Sphinx, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _key(script)
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    scripts[:] = kept


#: the two raw HTML lines around a solution in the chapters' sources
SOLUTION_FOLD = re.compile(r"^\s*(<details><summary>Solution</summary>|</details>)\s*$")


def _drop_solution_folds(app: Sphinx, doctree) -> None:
    for node in list(doctree.findall(nodes.raw)):
        if "html" in node.get("format", "").split() and SOLUTION_FOLD.match(node.astext()):
            node.parent.remove(node)


def _add_static(app: Sphinx, config) -> None:
    config.html_static_path.append(str(STATIC))


def setup(app: Sphinx):
    app.connect("config-inited", _add_static)
    app.connect("doctree-read", _drop_solution_folds)
    app.add_css_file("book.css")
    # last: other handlers add page scripts too (every handler runs, whatever they return)
    app.connect("html-page-context", _dedupe_scripts, priority=999)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
