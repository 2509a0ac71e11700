"""The chapters' notebooks: stored clean, generated from notebooks/src, and runnable (nbmake)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]

COLAB_CELL = """import sys
if "google.colab" in sys.modules:  # install the package only when running on Colab
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/sapa-book/sapa.git"], check=True)"""

# Every generator `python notebooks/src/make_XX.py [output_dir]` writes its NAME there.
GENERATORS = {
    p.name: re.search(r'^NAME = "([^"]+)"', p.read_text(), re.M).group(1)
    for p in sorted((NB_DIR / "src").glob("make_*.py"))
}


def test_every_notebook_has_a_generator():
    assert sorted(GENERATORS.values()) == IDS


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 3, NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_first_code_cell_installs_on_colab_only(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.strip() == COLAB_CELL


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_learning_goals_and_summary(path):
    nb = nbformat.read(path, as_version=4)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    assert markdown and markdown[0].lstrip().startswith("# "), "a chapter starts with its title"
    assert "learning goals" in markdown[0].lower(), "the first cell states the learning goals"
    assert "## summary" in markdown[-1].lower(), "the last cell is the summary"


@pytest.mark.parametrize("script", sorted(GENERATORS), ids=sorted(GENERATORS))
def test_generated_notebook_is_up_to_date(script, tmp_path):
    """The committed notebook is exactly what notebooks/src/<script> writes."""
    subprocess.run([sys.executable, str(NB_DIR / "src" / script), str(tmp_path)], check=True,
                   capture_output=True)
    name = GENERATORS[script]
    fresh = json.loads((tmp_path / name).read_text())
    stored = json.loads((NB_DIR / name).read_text())
    assert fresh == stored, f"notebooks/{name} is stale: run `python notebooks/src/{script}`"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_with_nbmake(path):
    """Execute the notebook top to bottom in the quick profile (nbmake, a fresh kernel)."""
    env = dict(os.environ, SAPA_PROFILE="quick", PYTHONHASHSEED="0")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbmake",
         "--nbmake-timeout=900", str(path)],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
