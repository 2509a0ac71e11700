"""The rendered book: built once per session with `make book` (every notebook executed,
warnings are errors), then checked as HTML and in a real headless browser.

Set SAPA_BOOK_PREBUILT=1 to check an existing _build/html without rebuilding it.
"""
from __future__ import annotations

import html
import json
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
        n = make_toc.CHAPTERS.index(chapter) + 1                 # chapters are numbered as cited
        assert re.search(rf'<h1>\s*<span class="section-number">{n}\. </span>', text), f"{chapter} is not chapter {n}"
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
                  "SegFormer", "Boundary IoU", "Online normalizer", "FlashAttention", "FADE",
                  "On Point Affiliation in Feature Upsampling", "Triton"]:
        assert title.lower() in html.unescape(text).lower(), f"{title!r} missing from the bibliography"
    chapter1 = (book / "notebooks" / "01_point_affiliation.html").read_text()
    assert "bibliography.html#id" in chapter1 or "bibliography.html#sapa2022" in chapter1.lower()
    # author-year with a/b: SAPA (2022a) and FADE (2022b) share first author and year
    intro = html.unescape((book / "book" / "intro.html").read_text())
    assert "2022a" in intro and "2022b" in intro
    assert re.search(r"Lu\s+<em>et al\.</em>,\s+2022a|Lu et al\., 2022a", intro), "SAPA cited as Lu et al., 2022a"
    # DySample (ICCV 2023) and the SAPA extension (arXiv 2023) share first author and year too
    chapter4 = html.unescape((book / "notebooks" / "04_dynamic_upsampling.html").read_text())
    assert "2023a" in chapter4 and "2023b" in chapter4, "DySample and the SAPA extension cite alike"


def test_solutions_fold_once(book):
    """Solutions of chapters 1-5 are sphinx-exercise dropdowns; the <details> that folds them on
    Colab is dropped from the book (book/_ext/book_html.py), so nothing folds twice."""
    for chapter, page in _chapter_pages(book)[:5]:
        text = page.read_text()
        assert len(re.findall(r'<div class="solution dropdown', text)) >= 2, f"{chapter}: no solution dropdowns"
        assert "<details><summary>Solution" not in text, f"{chapter}: a solution folded twice"


# --------------------------------------------------------------------------------------
# what a reader sees in the static HTML of every page
# --------------------------------------------------------------------------------------
def _prose(text: str) -> str:
    """The page's text outside code blocks, scripts and styles (HTML entities decoded)."""
    for tag in ("pre", "script", "style", "code"):
        text = re.sub(rf"<{tag}\b.*?</{tag}>", " ", text, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


RAW_TABLE = re.compile(r"\|\s*:?(?:-{3,}|[\u2013\u2014]{1,2}):?\s*\|")   # --- or typographic dashes


def test_no_raw_pipe_table(book):
    """A markdown table printed by a cell is rendered as a table, not as pipe text."""
    for page in _pages(book):
        prose = _prose(page.read_text())
        hit = RAW_TABLE.search(prose)
        assert not hit, f"{page.relative_to(book)} shows a raw pipe table: ...{prose[max(hit.start() - 80, 0):hit.end() + 40]}"


def test_rendered_tables_exist(book):
    """The tables the chapters display are real <table>s (chapter 4 displays several)."""
    page = book / "notebooks" / "04_dynamic_upsampling.html"
    assert len(re.findall(r"<table\b", page.read_text())) >= 3


STRAY_GLUE = re.compile(r'<div class="output text_plain[^"]*"><div class="highlight"><pre><span></span>([^\n<]{0,40})\n?</pre>')


def test_no_stray_glue_output(book):
    """No cell leaves a box holding only a glued value (glue(..., display=False) everywhere)."""
    for page in _pages(book):
        hit = STRAY_GLUE.search(page.read_text())
        assert not hit, f"{page.relative_to(book)} shows a stray output box {html.unescape(hit.group(1))!r}"


def test_glued_text_without_quotes(book):
    """Glued values inside the prose are shown as text, never as a quoted Python string."""
    for page in _pages(book):
        for value in re.findall(r'<span class="output text_plain">(.*?)</span>', page.read_text(), flags=re.S):
            value = html.unescape(value).strip()
            assert not re.match(r"""^(['"]).*\1$""", value), f"{page.relative_to(book)}: glued {value}"


#: template text a reader should never see: "(s)"/"(es)" plurals, an "n/a" sentence pasted into
#: a possessive, a signed zero, or a zero spread where the value is not zero
TEMPLATE_TEXT = [
    (re.compile(r"\b[A-Za-z]+\((?:s|es)\)(?![A-Za-z])"), "a '(s)' plural"),
    (re.compile(r"n/a\b[^.\n]{0,120}?['\u2019]s\b"), "an 'n/a' pasted into a sentence"),
    (re.compile(r"(?<![\w.])[-\u2212]0(?:\.0+)?(?![\d.])"), "a signed zero ('-0.0')"),
    (re.compile(r"(?:\u00b1|\+-|\+/-)\s*0(?:\.0+)?(?![\d.])"), "a zero spread ('\u00b1 0.0')"),
]


def _template_text(prose: str) -> list:
    found = []
    for pattern, what in TEMPLATE_TEXT:
        for m in pattern.finditer(prose):
            found.append(f"{what}: ...{prose[max(m.start() - 60, 0):m.end() + 30].strip()}...")
    return found


#: inline and display math as the HTML holds it before MathJax typesets it (h(s) is math, not a plural)
MATH = re.compile(r"\\\(.*?\\\)|\\\[.*?\\\]|\$\$.*?\$\$", re.S)


def test_no_template_text(book):
    """The prose of every page reads as written text: no '(s)' plurals, no 'n/a ...'s', no
    '-0.0 points', no '\u00b1 0.0' (a value of 0.04 shown with too few digits)."""
    bad = {}
    for page in _pages(book):
        hits = _template_text(" ".join(MATH.sub(" ", _prose(page.read_text())).split()))
        if hits:
            bad[str(page.relative_to(book))] = hits[:3]
    assert not bad, "template text in the pages: " + "; ".join(f"{k}: {v}" for k, v in bad.items())


def test_template_text_is_detected():
    """What a reader saw in chapters 6-9 is caught; ordinary text is not."""
    for text in ("the gate improve(s) it", "over 3 seed(s)", "n/a (fewer than two complete seeds)'s (n/a points)",
                 "a difference of -0.0 points", "0.52 \u00b1 0.0", "a gain of \u22120.00"):
        assert _template_text(text), text
    for text in ("seeds 0-4", "x - 0.05", "-0.04 points", "\u00b1 0.04", "K = 5 (s = 2)", "1/(s) of", "10-0.5",
                 "sizes (e.g. 64)"):
        assert not _template_text(text), text
    assert MATH.sub(" ", r"ReLU gives \(h(s) = 0\) for every \[w = h(s)\] and $$h(s)$$ too").count("(s)") == 0


def test_stray_glue_is_detected():
    """The two checks above catch the failures the reader saw."""
    box = '<div class="output text_plain highlight-myst-ansi notranslate"><div class="highlight"><pre><span></span>&#39;0.000&#39;\n</pre></div>'
    assert STRAY_GLUE.search(box)
    assert RAW_TABLE.search(_prose("<p>| a | b |\n|---|---:|\n| 1 | 2 |</p>"))
    assert RAW_TABLE.search(_prose("<p>| a | b |\n|\u2014|\u2014|</p>"))
    assert not RAW_TABLE.search(_prose("<pre>| a |\n|---|</pre><table><tr><td>1</td></tr></table>"))


# --------------------------------------------------------------------------------------
# a real browser: headless Chromium (Debian's package), every page, 1280 px and 400 px
# --------------------------------------------------------------------------------------
# Injected at the top of <head>: records uncaught errors, console.error calls and failed
# resources from the first script on; once MathJax has finished, writes a JSON report into
# <body data-probe="...">.
PROBE = """
<script>
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { errors.push("failed to load " + (t.src || t.href)); }
    else { errors.push(String(e.message || e)); }
  }, true);
  window.addEventListener("unhandledrejection", function (e) { errors.push("unhandled rejection " + e.reason); });
  var origError = console.error;
  console.error = function () {
    errors.push(Array.prototype.slice.call(arguments).join(" "));
    return origError.apply(console, arguments);
  };
  var OBJECT_REPR = /<[A-Za-z_][\\w.]*(?: object at 0x[0-9a-fA-F]+| object)>/;
  function scrollable(el) {
    var o = getComputedStyle(el).overflowX;
    return (o === "auto" || o === "scroll") && el.scrollWidth > el.clientWidth;
  }
  function clipped(el) {
    // the part of el that no one can see: cut by an ancestor with hidden overflow or by the page
    var r = el.getBoundingClientRect();
    if (r.width === 0) { return null; }
    for (var a = el.parentElement; a; a = a.parentElement) {
      if (scrollable(a)) { return null; }
      var o = getComputedStyle(a).overflowX;
      if (o === "hidden" || o === "clip") {
        var ar = a.getBoundingClientRect();
        if (r.bottom <= ar.top || r.top >= ar.bottom) { return null; }   // folded away (a dropdown)
        if (r.right > ar.right + 1) { return "cut by its container"; }
      }
    }
    if (r.right > document.documentElement.clientWidth + 1) { return "runs off the page"; }
    return null;
  }
  function report() {
    var out = {errors: errors, images: [], math: [], scrolled_math: 0, split_streams: 0, raw_tables: [],
               width: document.documentElement.clientWidth};
    Array.prototype.forEach.call(document.images, function (img) {
      var shown = img.getBoundingClientRect().width;
      var intended = img.getAttribute("width") ? parseFloat(img.getAttribute("width")) : img.naturalWidth;
      out.images.push({src: img.getAttribute("src"), ok: img.complete && img.naturalWidth > 0,
                       shown: shown, intended: intended,
                       output: !!img.closest(".cell_output")});
    });
    var article = document.querySelector("article") || document.querySelector("main") || document.body;
    article.querySelectorAll("mjx-container").forEach(function (m) {
      var why = clipped(m);
      if (why) { out.math.push(why + ": " + (m.getAttribute("aria-label") || m.textContent).slice(0, 80)); }
      for (var a = m.parentElement; a; a = a.parentElement) { if (scrollable(a)) { out.scrolled_math += 1; break; } }
    });
    // display math wider than its box: the typeset formula (mjx-math) or the container's own
    // scroll width against the width the container has; "scrolls" when the container or an
    // ancestor scrolls it (overflow-x auto/scroll), otherwise the overflow is cut off unseen
    out.wide_math = [];
    article.querySelectorAll('mjx-container[display="true"]').forEach(function (m) {
      var inner = m.querySelector("mjx-math") || m;
      var need = Math.max(inner.getBoundingClientRect().width, m.scrollWidth);
      var avail = m.clientWidth;
      if (need > avail + 1) {
        var scrolls = false;
        for (var a = m; a && a !== article.parentElement; a = a.parentElement) {
          var o = getComputedStyle(a).overflowX;
          if ((o === "auto" || o === "scroll") && a.scrollWidth > a.clientWidth) { scrolls = true; break; }
        }
        out.wide_math.push({math: (m.getAttribute("aria-label") || m.textContent).slice(0, 80),
                            need: Math.round(need), avail: avail, scrolls: scrolls});
      }
    });
    // printed output wider than the column (a cell's output box needs a scroll bar)
    out.wide_output = [];
    article.querySelectorAll(".cell_output pre").forEach(function (pre) {
      if (pre.scrollWidth > pre.clientWidth + 1) {
        var longest = pre.textContent.split("\\n").reduce(function (a, b) { return b.length > a.length ? b : a; }, "");
        out.wide_output.push(longest.slice(0, 100));
      }
    });
    // a Python object's repr where a value was meant: <IPython.core.display.Markdown object>,
    // <... object at 0x7f...>; the code a reader studies (cell inputs) is not searched
    out.reprs = [];
    var reprWalker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    for (var t = reprWalker.nextNode(); t; t = reprWalker.nextNode()) {
      if (t.parentElement.closest(".cell_input, script, style")) { continue; }
      var hit = t.textContent.match(OBJECT_REPR);
      if (hit) { out.reprs.push(hit[0].slice(0, 100)); }
    }
    out.wide_code = [];
    document.querySelectorAll(".cell_input pre").forEach(function (pre) {
      if (pre.scrollWidth > pre.clientWidth + 1) {
        var longest = pre.textContent.split("\\n").reduce(function (a, b) { return b.length > a.length ? b : a; }, "");
        out.wide_code.push(longest.slice(0, 100));
      }
    });
    var cs = document.querySelector(".cell_input pre");
    if (cs) {
      var probe = document.createElement("span");
      probe.textContent = "0123456789";
      cs.appendChild(probe);
      out.code_chars = Math.floor(cs.clientWidth / (probe.getBoundingClientRect().width / 10)) - 2;
      cs.removeChild(probe);
    }
    document.querySelectorAll(".output.stream").forEach(function (s) {
      var n = s.nextElementSibling;
      if (n && n.classList.contains("output") && n.classList.contains("stream")) { out.split_streams += 1; }
    });
    var walker = document.createTreeWalker(article, NodeFilter.SHOW_TEXT);
    for (var node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.parentElement.closest("pre, code, script, style")) { continue; }
      if (/\\|\\s*:?(?:-{3,}|[\\u2013\\u2014]{1,2}):?\\s*\\|/.test(node.textContent)) { out.raw_tables.push(node.textContent.slice(0, 80)); }
    }
    document.body.setAttribute("data-probe", JSON.stringify(out));
  }
  window.addEventListener("load", function () {
    var p = (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) || Promise.resolve();
    p.then(function () { setTimeout(report, 200); },
           function (e) { errors.push("MathJax: " + e); report(); });
  });
})();
</script>
"""

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--force-device-scale-factor=1",
]
WIDTHS = (1280, 400)
#: Text in figures is drawn at >= 10 pt (sapa.lab.plotting.BOOK_STYLE); shown at >= 90 % of its
#: size on a 1280 px screen it stays >= 9 pt.
MIN_FIGURE_SCALE = 0.9
#: on a 400 px phone screen a figure shrinks to the column: its smallest text must stay >= 6.5 pt
#: (a full-width figure of the book shows its 10 pt text at about 6.9 pt there; the dense figures
#: readers could not read showed it at 4-5 pt)
from sapa.lab.plotting import MIN_FONT_PT  # noqa: E402  the smallest text of a book figure

MIN_PHONE_PT = 6.5


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
        [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=15000",
         "--enable-logging=stderr", "--v=0", *args],
        capture_output=True, text=True, timeout=180,
    )


def _probe(chromium: Path, tmp_path: Path, page: Path, width: int) -> tuple[dict, str]:
    """Open ``page`` at ``width`` px with the probe; (the probe's report, the page's static HTML)."""
    static = page.read_text()
    probe = page.with_name("_probe_" + page.name)
    probe.write_text(static.replace("<head>", "<head>" + PROBE, 1))
    try:
        proc = _chromium(chromium, tmp_path, f"--window-size={width},2000", "--dump-dom", probe.as_uri())
    finally:
        probe.unlink()
    assert proc.returncode == 0 and "<body" in proc.stdout, proc.stderr[-3000:]
    found = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert found, f"{page.name} at {width} px: the page did not finish loading"
    report = json.loads(html.unescape(found.group(1)))
    # errors Chromium itself logs (e.g. a script that fails before the probe could see it)
    report["errors"] += re.findall(r'CONSOLE[^\]]*\] "((?:Uncaught|Failed to load)[^"]*)"', proc.stderr)
    return report, static


def _browser_pages() -> list[str]:
    built = HTML if (HTML / "index.html").is_file() else None
    pages = ["book/intro.html"] + [str(Path(c).with_suffix(".html")) for c in make_toc.present_chapters()]
    return pages + (["book/bibliography.html"] if built is None or (built / "book/bibliography.html").is_file() else [])


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("relpage", _browser_pages())
def test_browser_page(book, chromium, tmp_path, relpage, width):
    """Every page, as a reader's browser shows it: no console error, every image loaded, every
    formula typeset and nowhere cut off, tables rendered, one output box per printed block,
    figures shown at a legible scale."""
    page = book / relpage
    report, static = _probe(chromium, tmp_path, page, width)
    where = f"{relpage} at {width} px"
    assert not report["errors"], f"{where}: console errors {report['errors'][:5]}"
    missing = [i["src"] for i in report["images"] if not i["ok"]]
    assert not missing, f"{where}: images not loaded {missing[:5]}"
    n_img = len(re.findall(r"<img\b", static))
    assert len(report["images"]) >= n_img, f"{where}: {len(report['images'])} of {n_img} images in the DOM"
    n_math = len(re.findall(r'class="math notranslate', static))
    assert n_math == 0 or "mjx-merror" not in static
    assert not report["math"], f"{where}: clipped equations {report['math'][:3]}"
    if width >= 1280:
        assert report["scrolled_math"] == 0, f"{where}: {report['scrolled_math']} equations need a scroll bar"
    failures = _wide_math_outputs_reprs(report, where, width)
    known = KNOWN_FAILURES.get(relpage, set())
    assert set(failures) <= known, "\n".join(failures.values())
    assert not report["raw_tables"], f"{where}: raw pipe tables {report['raw_tables'][:2]}"
    assert report["split_streams"] == 0, f"{where}: printed text split into {report['split_streams'] + 1}+ boxes"
    if width >= 1280:
        assert not report["wide_code"], (f"{where}: code lines cut off (about {report.get('code_chars')} "
                                         f"characters fit): {report['wide_code'][:3]}")
        small = [(i["src"], round(i["shown"] / i["intended"], 2)) for i in report["images"]
                 if i["output"] and i["intended"] and i["shown"] / i["intended"] < MIN_FIGURE_SCALE]
        assert not small, f"{where}: figures shrunk below {MIN_FIGURE_SCALE:.0%} (text < 9 pt): {small[:4]}"
    else:
        tiny = [(i["src"], round(MIN_FONT_PT * i["shown"] / i["intended"], 1)) for i in report["images"]
                if i["output"] and i["intended"] and MIN_FONT_PT * i["shown"] / i["intended"] < MIN_PHONE_PT]
        assert not tiny, (f"{where}: figures whose smallest text is below {MIN_PHONE_PT} pt on a phone "
                          f"(src, pt): {tiny[:4]}")
    if failures:   # last, so that every other check of the page has run
        pytest.xfail("known failures of a chapter being rewritten: " + "; ".join(failures.values()))


def _wide_math_outputs_reprs(report: dict, where: str, width: int) -> dict:
    """The failures of three checks, by kind (empty: none).

    * ``wide_math``: display math wider than its box. A failure at 1280 px, whether it scrolls
      or not; at narrower widths a long equation may scroll sideways (MathJax's container
      scrolls), but it must never be cut off without a scroll bar.
    * ``wide_output``: printed output wider than the column, at 1280 px.
    * ``reprs``: a Python object's repr (``<IPython.core.display.Markdown object>``,
      ``<... object at 0x...>``) anywhere outside the code cells' inputs.
    """
    failures = {}
    wide = report["wide_math"] if width >= 1280 else [m for m in report["wide_math"] if not m["scrolls"]]
    if wide:
        failures["wide_math"] = f"{where}: equations wider than their box {wide[:3]}"
    if width >= 1280 and report["wide_output"]:
        failures["wide_output"] = f"{where}: printed output wider than the column {report['wide_output'][:3]}"
    if report["reprs"]:
        failures["reprs"] = f"{where}: Python object reprs in the page {report['reprs'][:3]}"
    return failures


def _check_wide_math_outputs_reprs(report: dict, where: str, width: int) -> None:
    failures = _wide_math_outputs_reprs(report, where, width)
    assert not failures, "\n".join(failures.values())


#: Chapters 6 and 7 were being rewritten by others when these checks were added (issue 20),
#: and fail them: reprs of display(Markdown(...)) objects and printed lines wider than the
#: column. Their pages are marked xfail for these kinds of failure only (any other failure
#: of theirs still fails); remove an entry once its chapter passes.
KNOWN_FAILURES: dict = {}  # page -> kinds of failure tolerated for now (none: chapters 6-8 rewritten, issue 18)


BAD_PAGE = """<html><head><style>
  article { width: 600px; }
  mjx-math { display: inline-block; }
</style></head><body><article>
<mjx-container class="MathJax" jax="CHTML" display="true" aria-label="wide clipped"
  style="display: block; overflow-x: hidden; width: 300px"><mjx-math style="width: 900px">x</mjx-math></mjx-container>
<mjx-container class="MathJax" jax="CHTML" display="true" aria-label="wide scrolled"
  style="display: block; overflow-x: auto; width: 300px"><mjx-math style="width: 900px">y</mjx-math></mjx-container>
<mjx-container class="MathJax" jax="CHTML" display="true" aria-label="narrow"
  style="display: block; width: 300px"><mjx-math style="width: 100px">z</mjx-math></mjx-container>
<div class="cell_output"><pre style="width: 300px; overflow-x: auto">%s</pre></div>
<div class="cell_output"><pre style="width: 300px; overflow-x: auto">short</pre></div>
<p>&lt;IPython.core.display.Markdown object&gt;</p>
<div class="cell_input"><pre>&lt;object object at 0x7f00&gt; in code is fine</pre></div>
<p>a &lt;b&gt; tag and x &lt; y are fine</p>
</article></body></html>""" % ("0123456789 " * 30)


def test_probe_catches_wide_math_wide_output_and_reprs(book, chromium, tmp_path):
    """The three checks added for issue 20 fail on a deliberately bad page: a display equation
    cut off by its box and one that scrolls, a printed line wider than its box, an object
    repr in the text. At 400 px the scrolled equation is allowed, the clipped one is not."""
    page = book / "book" / "_probe_wide.html"
    page.write_text(BAD_PAGE)
    try:
        report, _ = _probe(chromium, tmp_path, page, 1280)
    finally:
        page.unlink()
    by_label = {m["math"]: m for m in report["wide_math"]}
    assert set(by_label) == {"wide clipped", "wide scrolled"}, report["wide_math"]
    assert by_label["wide scrolled"]["scrolls"] and not by_label["wide clipped"]["scrolls"]
    assert len(report["wide_output"]) == 1 and report["wide_output"][0].startswith("0123456789")
    assert report["reprs"] == ["<IPython.core.display.Markdown object>"], report["reprs"]
    with pytest.raises(AssertionError, match="wider than their box"):
        _check_wide_math_outputs_reprs(report, "bad page", 1280)
    with pytest.raises(AssertionError, match="wide clipped"):
        _check_wide_math_outputs_reprs(report, "bad page", 400)
    # at 400 px the scrolled equation passes: the next failure is the repr
    report["wide_math"] = [by_label["wide scrolled"]]
    with pytest.raises(AssertionError, match="object reprs"):
        _check_wide_math_outputs_reprs(report, "bad page", 400)
    report["wide_math"] = []
    with pytest.raises(AssertionError, match="printed output"):
        _check_wide_math_outputs_reprs(report, "bad page", 1280)
    report["wide_output"], report["reprs"] = [], []
    _check_wide_math_outputs_reprs(report, "bad page", 1280)


#: chapter 5's online-softmax update as it was written before issue 20: one line, wider than the
#: text column at 1280 px, which MathJax's container (overflow: auto) scrolled unnoticed
OLD_ONLINE_SOFTMAX = (r"\[m_{t+1} = \max(m_t, s_{t+1}), \qquad "
                      r"\ell_{t+1} = \ell_t\, e^{m_t - m_{t+1}} + e^{s_{t+1} - m_{t+1}}, \qquad "
                      r"a_{t+1} = a_t\, e^{m_t - m_{t+1}} + e^{s_{t+1} - m_{t+1}}\, v_{t+1},\]")


def test_probe_catches_the_old_chapter5_equation(book, chromium, tmp_path):
    """The wide-math check on a real page with the real MathJax: chapter 5 with its online-softmax
    update put back on one line fails at 1280 px; at 400 px it scrolls, which is allowed."""
    page = book / "notebooks" / "05_fusing_sapa.html"
    text = page.read_text()
    found = re.search(r"\\\[\\begin\{split\}\s*\\begin\{aligned\}\s*m_\{t\+1\}.*?\\\]", text, flags=re.S)
    assert found, "chapter 5's aligned online-softmax update not found"
    bad = page.with_name("_probe_old_ch5.html")
    bad.write_text(text[:found.start()] + OLD_ONLINE_SOFTMAX + text[found.end():])
    try:
        wide = {w: _probe(chromium, tmp_path, bad, w)[0]["wide_math"] for w in WIDTHS}
    finally:
        bad.unlink()
    assert len(wide[1280]) == 1 and wide[1280][0]["need"] > wide[1280][0]["avail"], wide[1280]
    assert wide[400] and all(m["scrolls"] for m in wide[400]), wide[400]


def test_probe_catches_a_console_error(book, chromium, tmp_path):
    """The browser test is not blind: a page with a duplicate declaration fails it."""
    page = book / "book" / "_probe_broken.html"
    page.write_text("<html><head><script>const A = 1;</script><script>const A = 2;</script></head>"
                    "<body><p>| a |</p><p>|---|---|</p><img src='missing.png'></body></html>")
    try:
        report, _ = _probe(chromium, tmp_path, page, 1280)
    finally:
        page.unlink()
    assert any("already been declared" in e for e in report["errors"]), report["errors"]
    assert any(not i["ok"] for i in report["images"])
    assert report["raw_tables"]


def test_screenshots(book, chromium, tmp_path):
    """Screenshots of every page at 1280 px and 400 px in _build/screenshots, for reading."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for relpage in _browser_pages():
        page = book / relpage
        for width in WIDTHS:
            shot = SCREENSHOTS / f"{page.stem}-{width}.png"
            shot.unlink(missing_ok=True)
            proc = _chromium(chromium, tmp_path, f"--window-size={width},2400", f"--screenshot={shot}", page.as_uri())
            assert shot.is_file() and shot.stat().st_size > 20_000, proc.stderr[-3000:]
