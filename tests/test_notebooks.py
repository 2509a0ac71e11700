"""The chapters' notebooks: text sources (jupytext MyST Markdown, notebooks/NN_name.md) paired
with their .ipynb (stored without outputs, for Colab), in sync, and what a reader sees of the sources.
They are executed once, by the book build (tests/test_book.py: `make book` fails on any cell error)."""
from __future__ import annotations

import re
from pathlib import Path

import jupytext
import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NB_DIR.glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]

COLAB_CELL = """import sys
if "google.colab" in sys.modules:  # install the package only when running on Colab
    import subprocess
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "sapa[book] @ git+https://github.com/sapa-book/sapa.git"], check=True)"""

SOURCES = sorted(NB_DIR.glob("*.md"))
PAIRING = "ipynb,md:myst"


def out_of_sync(md_path: Path, nb) -> list[str]:
    """How the notebook ``nb`` differs from the text notebook at ``md_path`` (empty: in sync).

    Compares what jupytext stores in the text file: the cells' kinds, sources and metadata
    (tags included), and the kernelspec.
    """
    text_nb = jupytext.read(md_path)
    problems = []
    if len(text_nb.cells) != len(nb.cells):
        problems.append(f"{len(text_nb.cells)} cells in the .md, {len(nb.cells)} in the .ipynb")
    for i, (a, b) in enumerate(zip(text_nb.cells, nb.cells)):
        for key in ("cell_type", "source", "metadata"):
            if a.get(key) != b.get(key):
                problems.append(f"cell {i}: {key} differs")
    if text_nb.metadata.get("kernelspec") != nb.metadata.get("kernelspec"):
        problems.append("kernelspec differs")
    return problems


def test_every_notebook_has_its_text_source():
    assert [p.stem for p in SOURCES] == [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_pair_is_declared(path):
    """Both files name the pairing, so `jupytext --sync` and Jupyter keep them together."""
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("jupytext", {}).get("formats") == PAIRING, path.name
    text_nb = jupytext.read(path.with_suffix(".md"))
    assert text_nb.metadata.get("jupytext", {}).get("formats") == PAIRING, path.with_suffix(".md").name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_pair_in_sync(path):
    nb = nbformat.read(path, as_version=4)
    problems = out_of_sync(path.with_suffix(".md"), nb)
    assert not problems, (f"{path.name} and its .md are out of sync ({'; '.join(problems[:5])}): "
                          f"run `make notebooks-sync`")


def test_out_of_sync_is_detected(tmp_path):
    """The sync check reports an edited source, an edited tag and a missing cell."""
    path = NOTEBOOKS[0]
    md = tmp_path / path.with_suffix(".md").name
    md.write_text(path.with_suffix(".md").read_text())
    nb = nbformat.read(path, as_version=4)
    assert out_of_sync(md, nb) == []
    code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    edited = nbformat.from_dict(nb)
    edited.cells[code].source += "\nx = 1"
    assert out_of_sync(md, edited) == [f"cell {code}: source differs"]
    edited = nbformat.from_dict(nb)
    edited.cells[code].metadata["tags"] = ["hide-input"]
    assert out_of_sync(md, edited) == [f"cell {code}: metadata differs"]
    edited = nbformat.from_dict(nb)
    edited.cells = edited.cells[:-1]
    assert out_of_sync(md, edited)[0].endswith(f"{len(nb.cells) - 1} in the .ipynb")


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


# --------------------------------------------------------------------------------------
# what a reader of the book sees of the sources
# --------------------------------------------------------------------------------------
#: characters of code that fit in a code cell of the book at 1280 px (tests/test_book.py
#: measures the rendered width; 77 fit)
CODE_WIDTH = 76
HIDDEN = {"remove-cell", "remove-input"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_shown_code_lines_fit_the_page(path):
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or HIDDEN & set(cell.metadata.get("tags", [])):
            continue
        for line in cell.source.splitlines():
            assert len(line) <= CODE_WIDTH, f"{path.name} cell {i}: {len(line)} characters: {line}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_glue_never_leaves_an_output_box(path):
    """Chapters glue through sapa.lab.plotting.glue (no output box, strings without quotes), never
    through myst_nb.glue directly."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "from myst_nb import glue" not in code
    if "glue(" in code:
        imports = re.findall(r"from sapa\.lab\.plotting import (\([^)]*\)|[^\n]*)", code)
        assert any(re.search(r"\bglue\b", names) for names in imports), path.name


@pytest.mark.parametrize("path", NOTEBOOKS[:5], ids=IDS[:5])
def test_chapters_1_to_5_have_exercises_with_solutions(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    exercises = re.findall(r"^:::\{exercise\}\n:label: (\S+)", text, flags=re.M)
    solutions = re.findall(r"^:::\{solution\} (\S+)\n:class: dropdown", text, flags=re.M)
    assert 2 <= len(exercises) <= 4, f"{path.name}: {len(exercises)} exercises"
    assert sorted(solutions) == sorted(exercises), "every exercise has one solution, hidden until revealed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_plumbing_is_hidden(path):
    """The Colab install cell is removed from the book and the set-up cell's input is folded."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "remove-cell" in code[0].metadata.get("tags", [])
    assert "hide-input" in code[1].metadata.get("tags", [])


# --------------------------------------------------------------------------------------
# exercises: solutions folded in Jupyter and Colab too, not only in the book
# --------------------------------------------------------------------------------------
#: The chapters wrap every solution in these two lines of HTML: Jupyter, Colab and GitHub fold
#: it; the book drops them (book/_ext/book_html.py) and keeps sphinx-exercise's dropdown.
SOLUTION_OPEN = "<details><summary>Solution</summary>"
SOLUTION_CLOSE = "</details>"


def unfolded_solutions(markdown: str) -> list[str]:
    """Labels of the ``{solution}`` blocks of ``markdown`` that are not wrapped, alone, in
    ``<details><summary>Solution</summary>`` ... ``</details>`` (empty: all folded)."""
    bad = []
    pattern = re.compile(r"^:::\{solution\} (\S+)\n.*?^:::$", flags=re.M | re.S)
    for block in pattern.finditer(markdown):
        before = markdown[:block.start()].rstrip()
        after = markdown[block.end():].lstrip()
        opened = before.endswith(SOLUTION_OPEN)
        # no other </details> between the opening and the solution
        closed = after.startswith(SOLUTION_CLOSE)
        if not (opened and closed):
            bad.append(block.group(1))
    return bad


@pytest.mark.parametrize("path", NOTEBOOKS[:5], ids=IDS[:5])
def test_solutions_are_folded_in_the_notebook(path):
    """What Colab shows: every solution of chapters 1-5 stays folded until the reader opens it."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and "{solution}" in cell.source:
            assert not unfolded_solutions(cell.source), (
                f"{path.name} cell {i}: solutions {unfolded_solutions(cell.source)} are not inside "
                f"{SOLUTION_OPEN} ... {SOLUTION_CLOSE}")
            assert cell.source.count(SOLUTION_OPEN) == cell.source.count(SOLUTION_CLOSE)


def test_unfolded_solution_is_detected():
    folded = f"{SOLUTION_OPEN}\n\n:::{{solution}} ex-a\n:class: dropdown\n\ntext\n:::\n\n{SOLUTION_CLOSE}\n"
    assert unfolded_solutions(folded) == []
    assert unfolded_solutions(":::{solution} ex-b\n:class: dropdown\n\ntext\n:::\n") == ["ex-b"]
    assert unfolded_solutions(f"{SOLUTION_OPEN}\n\n:::{{solution}} ex-c\ntext\n:::\n") == ["ex-c"]
    assert unfolded_solutions(f":::{{solution}} ex-d\ntext\n:::\n\n{SOLUTION_CLOSE}") == ["ex-d"]


def shown_glue(source: str, tags) -> bool:
    """Whether a code cell with these tags shows a reader a glue(...) call."""
    if {"remove-cell", "remove-input", "hide-input"} & set(tags):
        return False
    return re.search(r"^\s*glue\(", source, flags=re.M) is not None


@pytest.mark.parametrize("path", NOTEBOOKS[:5], ids=IDS[:5])
def test_glue_is_not_in_studied_code(path):
    """glue(...) is plumbing: in chapters 1-5 it sits in cells tagged remove-cell (or folded)."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not shown_glue(cell.source, cell.metadata.get("tags", [])), f"{path.name} cell {i}"


def test_shown_glue_is_detected():
    assert shown_glue("x = 1\nglue('x', x)", [])
    assert not shown_glue("x = 1\nglue('x', x)", ["remove-cell"])
    assert not shown_glue("x = 1  # glue later", [])
