"""The rendered book: built once per session with `make book` (every notebook executed,
warnings are errors), then checked as HTML and in a real headless browser.

Set SAPA_BOOK_PREBUILT=1 to check an existing _build/html without rebuilding it.
"""
from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
COLAB_PREFIX = "https://colab.research.google.com/github/sapa-book/sapa/blob/main/"

sys.path.insert(0, str(ROOT / "book"))
import make_toc  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def book() -> Path:
    """_build/html, built by `make book` once per test session."""
    if os.environ.get("SAPA_BOOK_PREBUILT") != "1":
        env = dict(os.environ, SAPA_PROFILE="quick")
        log = ROOT / "_build" / "book-build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["make", "book"], cwd=ROOT, env=env, capture_output=True, text=True)
        log.write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, f"make book failed (log: {log}):\n" + (proc.stdout + proc.stderr)[-8000:]
    assert (HTML / "index.html").is_file(), "no _build/html/index.html"
    return HTML


def _pages(book: Path) -> list[Path]:
    return [p for p in book.rglob("*.html") if "_static" not in p.parts and not p.name.startswith("_probe")]


def _chapter_pages(book: Path) -> list[tuple[str, Path]]:
    return [(c, book / Path(c).with_suffix(".html")) for c in make_toc.present_chapters()]


def test_toc_lists_existing_chapters():
    assert subprocess.run([sys.executable, str(ROOT / "book" / "make_toc.py"), "--check"]).returncode == 0
    toc = (ROOT / "_toc.yml").read_text()
    for entry in re.findall(r"file: (\S+)", toc) + re.findall(r"root: (\S+)", toc):
        assert any((ROOT / (entry + ext)).is_file() for ext in (".md", ".ipynb")), entry
    assert len(make_toc.present_chapters()) >= 3


def test_every_chapter_is_rendered_with_a_colab_button(book):
    for chapter, page in _chapter_pages(book):
        assert page.is_file(), f"{chapter} was not rendered"
        text = page.read_text()
        notebook = str(Path(chapter).with_suffix(".ipynb"))   # Colab opens the paired .ipynb
        assert COLAB_PREFIX + notebook in text, f"no Colab launch button for {notebook}"


def test_no_error_outputs(book):
    for page in _pages(book):
        text = page.read_text()
        for marker in ('class="output traceback', 'class="output error', "Traceback (most recent call last)"):
            assert marker not in text, f"{page.relative_to(book)} shows an error output ({marker})"
        for block in re.findall(r'<div class="output stderr[^"]*">(.*?)</div>', text, flags=re.S):
            assert "Error" not in block, f"{page.relative_to(book)} has an error on stderr: {block[:500]}"


def test_images_exist(book):
    n_images = 0
    for page in _pages(book):
        for src in re.findall(r'<img[^>]*\ssrc="([^"]+)"', page.read_text()):
            src = html.unescape(src).split("#")[0].split("?")[0]
            assert not src.startswith(("http:", "https:", "//")), f"remote image {src} in {page.name}"
            if src.startswith("data:"):
                continue
            target = (page.parent / src).resolve()
            assert target.is_file(), f"{page.relative_to(book)}: missing image {src}"
            n_images += 1
    assert n_images > 0
    for chapter, page in _chapter_pages(book)[:3]:
        assert "<img" in page.read_text(), f"{chapter} has no figure"


def test_everything_is_served_locally(book):
    """No script or stylesheet from a CDN; MathJax comes from _static/mathjax."""
    assert (book / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert list((book / "_static" / "mathjax" / "output" / "chtml" / "fonts").rglob("*.woff"))
    for page in _pages(book):
        text = page.read_text()
        for tag in re.findall(r"<(?:script|link)\b[^>]*>", text):
            if "<link" in tag and not re.search(r'rel="(stylesheet|preload|modulepreload)"', tag):
                continue
            url = re.search(r'(?:src|href)="([^"]+)"', tag)
            if url:
                assert not re.match(r"(https?:)?//", url.group(1)), f"{page.name} loads {url.group(1)}"
    for _, page in _chapter_pages(book)[:2]:
        assert re.search(r'<script[^>]+src="[./]*_static/mathjax/tex-chtml\.js[?"]', page.read_text())


def test_bibliography(book):
    text = (book / "book" / "bibliography.html").read_text()
    for title in ["Similarity-Aware Point Affiliation", "Content-Aware ReAssembly", "Indices Matter",
                  "Affinity-Aware Upsampling", "Learning to Upsample by Learning to Sample",
                  "SegFormer", "Boundary IoU", "Online normalizer", "FlashAttention", "FADE"]:
        assert title.lower() in html.unescape(text).lower(), f"{title!r} missing from the bibliography"
    chapter1 = (book / "notebooks" / "01_point_affiliation.html").read_text()
    assert "bibliography.html#id" in chapter1 or "bibliography.html#sapa2022" in chapter1.lower()


# --------------------------------------------------------------------------------------
# a real browser: headless Chromium (Debian's package)
# --------------------------------------------------------------------------------------
PROBE = """
<script>
(function () {
  function report() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    document.body.setAttribute("data-probe-images", ok + "/" + imgs.length);
    document.body.setAttribute("data-probe-done", "1");
  }
  window.addEventListener("load", function () {
    var p = (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) || Promise.resolve();
    p.then(report, function (e) { document.body.setAttribute("data-probe-error", String(e)); report(); });
  });
})();
</script>
"""

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars",
]


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        if os.geteuid() != 0:
            pytest.skip("Chromium is missing and apt-get needs root: run `sudo make browser`")
        proc = subprocess.run(["make", "browser"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert CHROMIUM.exists()
    return CHROMIUM


def _chromium(chromium: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=10000", *args],
        capture_output=True, text=True, timeout=180,
    )


BROWSER_PAGES = ["book/intro.html", "notebooks/02_local_mutual_similarity.html"]


@pytest.mark.parametrize("relpage", BROWSER_PAGES)
def test_browser_typesets_math_and_loads_figures(book, chromium, tmp_path, relpage):
    page = book / relpage
    static = page.read_text()
    n_math = len(re.findall(r'class="math notranslate', static))
    n_img = len(re.findall(r"<img\b", static))
    assert n_math > 0
    # the same page with a probe that records, once MathJax has finished, how many images loaded
    probe = page.with_name("_probe_" + page.name)
    probe.write_text(static.replace("</body>", PROBE + "</body>"))
    try:
        proc = _chromium(chromium, tmp_path, "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    dom = proc.stdout
    assert proc.returncode == 0 and "<body" in dom, proc.stderr[-3000:]
    n_typeset = dom.count("<mjx-container")
    assert n_typeset >= n_math, f"MathJax typeset {n_typeset} of {n_math} formulas"
    assert "<mjx-merror" not in dom, "MathJax reported a TeX error"
    assert 'data-probe-done="1"' in dom, "the page did not finish loading"
    assert "data-probe-error=" not in dom, re.search(r"data-probe-error=\"[^\"]*\"", dom)
    loaded = re.search(r'data-probe-images="(\d+)/(\d+)"', dom)
    assert loaded and loaded.group(1) == loaded.group(2) and int(loaded.group(2)) >= n_img, loaded and loaded.group(0)

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / (page.stem + ".png")
    shot.unlink(missing_ok=True)
    proc = _chromium(chromium, tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-3000:]
