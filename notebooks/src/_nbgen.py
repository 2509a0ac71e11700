"""Shared pieces of the chapter generators (notebooks/src/make_NN.py).

Every chapter is a list of (kind, source) cells, kind "md" or "code". ``write`` turns it into
a notebook without outputs (fixed cell ids, so regenerating gives identical files).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat as nbf

COLAB_CELL = """import sys
if "google.colab" in sys.modules:  # install the package only when running on Colab
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/sapa-book/sapa.git"], check=True)"""

GLUE_CELL = """try:
    from myst_nb import glue  # the book quotes numbers computed here in its text
except ImportError:  # e.g. on Colab: just show the value
    def glue(name, value, display=True):
        if display:
            print(f"{name} = {value}")"""



def build(cells) -> nbf.NotebookNode:
    """A notebook (no outputs, execution counts None) from (kind, source) pairs."""
    nb = nbf.v4.new_notebook()
    out = []
    for idx, (kind, src) in enumerate(cells):
        cell = nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
        cell["id"] = f"c{idx:02d}"
        out.append(cell)
    nb.cells = out
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    return nb


def write(name: str, cells, argv=None) -> Path:
    """Write notebook ``name`` into argv[1] (default: notebooks/) and return its path."""
    argv = sys.argv if argv is None else argv
    out_dir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / name
    nbf.write(build(cells), path)
    print("wrote", path)
    return path
