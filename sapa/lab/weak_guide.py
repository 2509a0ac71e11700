"""When similarity cannot help (issue #27): the weak-guide task against the textures task.

The section "When does similarity help?" compares the stored sweep of the textures task
(``book/results/main.csv``, chapter 6) with the one of the weak-guide task
(``book/results/statistics.csv``, :class:`sapa.lab.data.TextureStatistics`) and judges the
prediction written before the second one ran (``book/results/weak_guide_prediction.md``). Every
number it shows is computed here, with chapter 6's statistics (:mod:`sapa.lab.stats`,
:mod:`sapa.lab.comparison`), never a second version of them:

* :func:`compare_tasks`: per task and upsampler, the paired mIoU difference to bilinear (t
  interval, Holm over the upsamplers compared) and the remaining-error ratio to bilinear (t
  interval on the log ratio), on the seeds complete for every upsampler of the family;
* :func:`probe_precondition`: whether the linear probes (``book/results/probes.json``,
  :mod:`sapa.lab.probes`) confirm the task's design, the prediction's precondition;
* :func:`prediction_checks`: each of the prediction's six statements judged on those numbers,
  "holds", "fails" or "unresolved" (an interval straddles the threshold);
  :func:`refutation_check`: the observation the prediction names as refuting the mechanism;
* :func:`format_differences`, :func:`format_ratios`, :func:`format_checks`,
  :func:`format_check`: the tables and sentences a reader sees;
* :func:`similarity_pairs`: SAPA against the guided upsamplers without similarity (FADE,
  IndexNet-M2O) on each task; :func:`reading`, :func:`waiting_paragraph`, :func:`claim`: what
  the outcome says (or why it waits), and the preface's verdict;
  :func:`sapa.lab.plotting.task_difference_plot` draws the two tasks side by side.

The thresholds are module constants quoting the prediction file's numbers
(``tests/test_weak_guide.py`` parses the file and checks that they match).

Usage::

    from sapa.lab import sweep, weak_guide as wg
    main, _ = sweep.stored_rows("main")
    stat, _ = sweep.stored_rows("statistics")
    entries, status = wg.compare_tasks(main, stat)
    checks = wg.prediction_checks(entries, probes=json.load(open("book/results/probes.json")))
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

from .comparison import _names, _ratio, delta_table, error_ratios, pair_family, ratio_table
from .stats import (complete_seeds, decimals, describe_difference, join_names, paired_differences, plural, signed,
                    verdict)
from .sweep import WEAK_GUIDE_UPSAMPLERS

__all__ = [
    "TASKS", "TASK_LABELS", "TASK_FILES", "PREDICTION_FILE", "STATEMENTS", "TEXTURES_RATIOS", "LOSES_GAIN_RATIO",
    "GATE_RATIO_RANGE", "KEEPS_RATIO_TOLERANCE", "REFUTING_RATIO", "PLANNED_SEEDS", "ALPHA", "GUIDED", "UNGUIDED",
    "LEVELLED", "PROBE_METRIC", "PROBE_FIRST_STAGE_SHARE", "PROBE_LAST_STAGE_SHARE", "VERDICTS",
    "compare_tasks", "probe_precondition", "prediction_checks", "refutation_check",
    "format_differences", "format_ratios", "format_checks", "format_check",
    "SIMILARITY_PAIRS", "READING_GUIDED", "READING_UNGUIDED", "similarity_pairs", "ready", "waiting_paragraph", "reading", "claim",
    "verdict_sentence",
]

#: the two tasks, in the order tables and figures show them: chapter 6's and the weak-guide one
TASKS = ("textures", "statistics")
#: how the tables and the figure name each task
TASK_LABELS = {"textures": "textures", "statistics": "weak guide"}
#: the stored CSV of each task
TASK_FILES = {"textures": "main.csv", "statistics": "statistics.csv"}
#: how the status sentence names each task
_TASK_PHRASES = {"textures": "the textures task", "statistics": "the weak-guide task"}
#: the argument of :func:`compare_tasks` that holds each task's rows (named in errors)
_ARGUMENTS = {"textures": "main_rows", "statistics": "statistics_rows"}
#: the prediction, written before the weak-guide runs (relative to the repository root)
PREDICTION_FILE = "book/results/weak_guide_prediction.md"

# --------------------------------------------------------------------------------------
# the prediction's numbers (quoted from PREDICTION_FILE; the tests parse it)
# --------------------------------------------------------------------------------------
#: the six statements, by number, as the prediction's bold titles write them
STATEMENTS = {1: "SAPA-B loses most of its gain", 2: "SAPA-G keeps more than SAPA-B",
              3: "FADE and IndexNet-M2O behave like SAPA-B", 4: "CARAFE keeps its gain",
              5: "Deconvolution keeps its gain", 6: "The ranking turns over"}
#: the errors left relative to bilinear's on the textures task, as the prediction quotes them
#: (chapter 6, 5 seeds; statement 1 quotes SAPA-B's, 4 CARAFE's and 5 deconvolution's)
TEXTURES_RATIOS = {"sapa-b": 0.16, "sapa-g": 0.15, "fade": 0.15, "indexnet-m2o": 0.17, "carafe": 0.72,
                   "deconv": 0.62}
#: statements 1 and 3: "error ratio at least 0.6"
LOSES_GAIN_RATIO = 0.6
#: statement 2: SAPA-G's "error ratio between 0.5 and 1.0"
GATE_RATIO_RANGE = (0.5, 1.0)
#: statements 4 and 5: the error ratio "within 0.15 of" its textures value
KEEPS_RATIO_TOLERANCE = 0.15
#: the refutation: "SAPA-B keeping an error ratio below 0.3" with an uninformative first stage
REFUTING_RATIO = 0.3
#: "over the 5 seeds"
PLANNED_SEEDS = 5
#: "a 95 % interval": the level of every test and interval
ALPHA = 0.05
#: statement 6: the guided upsamplers that beat CARAFE and deconvolution on textures ...
GUIDED = ("sapa-b", "sapa-g", "fade", "indexnet-m2o")
#: ... the two that read no encoder feature ...
UNGUIDED = ("carafe", "deconv")
#: ... and those the two are at least level with on the weak-guide task
LEVELLED = ("sapa-b", "fade", "indexnet-m2o")

# --------------------------------------------------------------------------------------
# the precondition: the prediction states it in words ("far worse", "still separates"); these
# two shares make it a computation. They are this module's choice, not the prediction's, set
# with the analysis code (committed minutes after book/results/probes.json, before any run of
# the weak-guide comparison); git cannot show that they were chosen without seeing the probes.
# --------------------------------------------------------------------------------------
#: the probes' score compared across tasks
PROBE_METRIC = "miou"
#: "far worse": the weak-guide task's first-stage probe mIoU is at most this share of the textures task's
PROBE_FIRST_STAGE_SHARE = 0.5
#: "still separates": its last-stage probe mIoU is at least this share of the textures task's
PROBE_LAST_STAGE_SHARE = 0.5

#: the verdicts of a statement or criterion
VERDICTS = ("holds", "fails", "unresolved")

_NAN = float("nan")


# --------------------------------------------------------------------------------------
# comparing the tasks
# --------------------------------------------------------------------------------------
def _check_rows(arg: str, rows, metric: str, dataset: str) -> Optional[List[Dict]]:
    if rows is None:
        return None
    if isinstance(rows, (str, bytes, dict)) or not isinstance(rows, (list, tuple)):
        raise ValueError(f"{arg} must be a list of sweep rows (dicts, sapa.lab.sweep.read_csv) or None, "
                         f"got {type(rows).__name__}")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{arg}[{i}] must be a dict (a sweep row), got {type(r).__name__}")
        missing = [k for k in ("setting", "seed", metric) if k not in r]
        if missing:
            raise ValueError(f"{arg}[{i}] lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        ds = r.get("dataset")
        if ds not in (None, "") and ds != dataset:
            raise ValueError(f"{arg} holds a run of dataset {ds!r}; {arg} takes the {dataset!r} task's rows")
    return list(rows)


def _check_upsamplers(upsamplers, baseline: str) -> List[str]:
    if isinstance(upsamplers, str) or not isinstance(upsamplers, (list, tuple)):
        raise ValueError(f"upsamplers must be a list of upsampler names, got {upsamplers!r}")
    ups = list(upsamplers)
    if any(not isinstance(u, str) or not u for u in ups):
        raise ValueError(f"upsamplers must hold non-empty strings, got {ups!r}")
    if len(set(ups)) != len(ups):
        raise ValueError(f"upsamplers names one upsampler twice: {ups!r}")
    if not [u for u in ups if u != baseline]:
        raise ValueError(f"upsamplers must name at least one upsampler besides the baseline {baseline!r}")
    return ups


def compare_tasks(main_rows: Optional[Sequence[Dict]], statistics_rows: Optional[Sequence[Dict]],
                  upsamplers: Sequence[str] = WEAK_GUIDE_UPSAMPLERS, metric: str = "miou",
                  baseline: str = "bilinear", alpha: float = ALPHA) -> Tuple[List[Dict], str]:
    """Every upsampler against bilinear on both tasks, on each task's complete seeds.

    Args:
        main_rows: the textures task's rows (``sweep.stored_rows("main")[0]``), or None when
            missing; statistics_rows: the weak-guide task's (``sweep.stored_rows("statistics")[0]``),
            or None. Rows are dicts with ``setting``, ``seed`` and ``metric`` (a ``dataset``
            column, when present, must name the argument's task).
        upsamplers: the comparison (the baseline may be among them): its family is the
            upsamplers, baseline excepted, that have runs on every task given (rows not None).
        metric: the compared column, a fraction in [0, 1) (remaining error ``1 - metric``).
        baseline, alpha: as in :func:`sapa.lab.stats.paired_differences`.

    Per task, only the seeds every upsampler of the family and the baseline have enter (as
    chapter 6's :func:`sapa.lab.comparison.complete_rows`); a task with fewer than 2 of them, or
    missing, contributes no entry and the status says why.

    Returns ``(entries, status)``: ``entries``, one dict per (task, upsampler), tasks in
    :data:`TASKS` order and upsamplers in ``upsamplers`` order, with ``task``, ``upsampler``,
    every field of a :func:`sapa.lab.stats.paired_differences` result (``setting`` = the
    upsampler, ``seeds``, ``n``, ``mean``, ``sd``, ``ci_low``/``ci_high`` (t interval),
    ``p``, ``p_holm`` (Holm over the family), ``ci_low_adj``/``ci_high_adj`` (Bonferroni over
    the family), ``significant``), ``verdict`` ("higher", "lower", "unresolved"),
    ``family_size``, ``values`` and ``baseline_values`` (the metric per seed, aligned with
    ``seeds``), and the :func:`sapa.lab.comparison.error_ratios` fields as ``ratio``,
    ``ratio_low``/``ratio_high`` (95 % interval), ``ratio_p_holm``, ``ratio_per_seed``;
    ``status``, one Markdown sentence: the complete seeds of each task, or why a task waits.
    """
    ups = _check_upsamplers(upsamplers, baseline)
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric must be a column name, got {metric!r}")
    if not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    data = {"textures": _check_rows("main_rows", main_rows, metric, "textures"),
            "statistics": _check_rows("statistics_rows", statistics_rows, metric, "statistics")}
    nm = _names(None)
    present = {t: {r["setting"] for r in rows} for t, rows in data.items() if rows is not None}
    family = [u for u in ups if u != baseline and all(u in s for s in present.values())]
    settings = [baseline] + family
    entries: List[Dict] = []
    parts: List[str] = []
    for t in TASKS:
        rows = data[t]
        label = f"{_TASK_PHRASES[t]} (`{TASK_FILES[t]}`)"
        if rows is None:
            parts.append(f"{label} is not there yet, so its comparison waits")
            continue
        left = [u for u in ups if u != baseline and u not in present[t]]
        note = (f" ({join_names([nm.get(u, u) for u in left])} {'has' if len(left) == 1 else 'have'} no run "
                "there and left the comparison)" if left else "")
        if baseline not in present[t]:
            parts.append(f"{label} has no run of {nm.get(baseline, baseline)} yet, so its comparison waits{note}")
            continue
        seeds = complete_seeds(rows, settings)
        n = len(seeds)
        listed = f" ({', '.join(map(str, seeds))})" if seeds else ""
        if n < 2:
            parts.append(f"{label} has {plural(n, 'complete seed')}{listed} of the {len(settings)} upsamplers, "
                         f"and a paired interval needs two, so its comparison waits{note}")
            continue
        kept = [r for r in rows if r["seed"] in seeds and r["setting"] in settings]
        val: Dict[Tuple, float] = {}
        for r in kept:
            key = (r["setting"], r["seed"])
            if key in val:
                raise ValueError(f"{_ARGUMENTS[t]} holds two runs of {r['setting']!r} with seed {r['seed']!r}: "
                                 "pass the rows of one stored sweep (sapa.lab.sweep.stored_rows)")
            val[key] = float(r[metric])
        diffs = paired_differences(kept, metric, baseline=baseline, settings=family, alpha=alpha)
        ratios = {q["setting"]: q for q in error_ratios(kept, metric, family, baseline, alpha)}
        for d in diffs:
            u, q = d["setting"], ratios[d["setting"]]
            entries.append(dict(task=t, upsampler=u, **d, verdict=verdict(d, alpha), family_size=len(family),
                                values=[val[(u, k)] for k in d["seeds"]],
                                baseline_values=[val[(baseline, k)] for k in d["seeds"]],
                                ratio=q["ratio"], ratio_low=q["ci_low"], ratio_high=q["ci_high"],
                                ratio_p=q["p"], ratio_p_holm=q["p_holm"], ratio_per_seed=q["per_seed"]))
        parts.append(f"{label} has {plural(n, 'complete seed')}{listed}{note}")
    where = "on each task" if len(present) > 1 else "on its task"
    lead = (f"{plural(len(family), 'upsampler')} against {nm.get(baseline, baseline)} (Holm over the "
            f"{len(family)} {where}): " if family else
            f"No upsampler besides {nm.get(baseline, baseline)} has runs on both tasks: ")
    return entries, lead + "; ".join(parts) + "."


def _by_key(result) -> Dict[Tuple[str, str], Dict]:
    """{(task, upsampler): entry} of :func:`compare_tasks`' output (the tuple or its entries)."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str):
        result = result[0]
    if not isinstance(result, (list, tuple)):
        raise ValueError(f"result must be compare_tasks' output (entries, status) or its entries, "
                         f"got {type(result).__name__}")
    out = {}
    for i, e in enumerate(result):
        if not isinstance(e, dict) or not {"task", "upsampler", "mean", "ratio", "values"} <= e.keys():
            raise ValueError(f"result[{i}] is not an entry of compare_tasks")
        if e["task"] not in TASKS:
            raise ValueError(f"result[{i}] has task {e['task']!r}; expected one of {TASKS}")
        out[(e["task"], e["upsampler"])] = e
    return out


# --------------------------------------------------------------------------------------
# the precondition: the probes
# --------------------------------------------------------------------------------------
def _probe_score(records: List[Dict], dataset: str, which: str, metric: str) -> float:
    mine = [p for p in records if p.get("dataset") == dataset]
    if which == "first":
        cand = [p for p in mine if p.get("stage") == 0]
    else:
        cand = [p for p in mine if p.get("stage") == -1]
        if not cand:
            ints = [p for p in mine if isinstance(p.get("stage"), int) and p["stage"] > 0]
            cand = sorted(ints, key=lambda p: -p["stage"])[:1]
    v = cand[0].get(metric) if cand else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else _NAN


def probe_precondition(probes: Optional[Dict], first_share: float = PROBE_FIRST_STAGE_SHARE,
                       last_share: float = PROBE_LAST_STAGE_SHARE, metric: str = PROBE_METRIC) -> Dict:
    """Whether the linear probes confirm the weak-guide task's design (the prediction's
    precondition): the weak-guide task's first-stage probe ``metric`` is at most
    ``first_share`` of the textures task's ("far worse"), its last-stage one at least
    ``last_share`` of the textures task's ("still separates").

    ``probes``: the JSON of ``python -m sapa.lab.probes`` (``book/results/probes.json``: a dict
    whose ``probes`` list holds records with ``dataset``, ``stage`` (0 first, -1 or the
    largest index last) and ``metric``), or None.

    Returns dict ``status`` ("confirmed", "not confirmed", or "not checked" when ``probes`` is
    None or lacks a record), ``first_weak`` and ``last_separates`` (bool or None),
    ``numbers`` ({``textures_first``, ``statistics_first``, ``textures_last``,
    ``statistics_last``}: floats, NaN when missing) and ``text`` (one sentence).
    """
    if probes is None:
        return dict(status="not checked", first_weak=None, last_separates=None, numbers={},
                    text="The probes were not given, so the precondition is not checked.")
    if not isinstance(probes, dict) or not isinstance(probes.get("probes"), list):
        raise ValueError("probes must be the dict of python -m sapa.lab.probes (book/results/probes.json) "
                         f"with a 'probes' list, got {type(probes).__name__}")
    for name, v in (("first_share", first_share), ("last_share", last_share)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    recs = [p for p in probes["probes"] if isinstance(p, dict)]
    numbers = {f"{t}_{w}": _probe_score(recs, t, w, metric) for w in ("first", "last") for t in TASKS}
    missing = [k for k, v in numbers.items() if math.isnan(v)]
    if missing:
        return dict(status="not checked", first_weak=None, last_separates=None, numbers=numbers,
                    text=f"The probes lack {join_names(missing)}, so the precondition is not checked.")
    weak = numbers["statistics_first"] <= first_share * numbers["textures_first"]
    keeps = numbers["statistics_last"] >= last_share * numbers["textures_last"]
    status = "confirmed" if weak and keeps else "not confirmed"
    text = (f"Probe {'mIoU' if metric == 'miou' else metric}, first stage: {numbers['statistics_first']:.2f} on the "
            f"weak-guide task against {numbers['textures_first']:.2f} on textures (far worse, at most "
            f"{first_share:g} of it: {'yes' if weak else 'no'}); last stage: {numbers['statistics_last']:.2f} against "
            f"{numbers['textures_last']:.2f} (still separating, at least {last_share:g} of it: "
            f"{'yes' if keeps else 'no'}); the precondition is {status}.")
    return dict(status=status, first_weak=weak, last_separates=keeps, numbers=numbers, text=text)


# --------------------------------------------------------------------------------------
# the statements
# --------------------------------------------------------------------------------------
def _combine(verdicts: Sequence[str]) -> str:
    """"fails" when one criterion fails, "holds" when all hold, else "unresolved"."""
    if "fails" in verdicts:
        return "fails"
    return "holds" if verdicts and all(v == "holds" for v in verdicts) else "unresolved"


def _at_least(low: float, high: float, threshold: float) -> str:
    return "holds" if low >= threshold else "fails" if high < threshold else "unresolved"


def _below(low: float, high: float, threshold: float) -> str:
    return "holds" if high < threshold else "fails" if low >= threshold else "unresolved"


def _within(low: float, high: float, a: float, b: float) -> str:
    return "holds" if a <= low and high <= b else "fails" if high < a or low > b else "unresolved"


def _criterion(text: str, kind: str, verdict_: str, estimate: float = _NAN, low: float = _NAN,
               high: float = _NAN, threshold=None, **extra) -> Dict:
    return dict(text=text, kind=kind, estimate=estimate, low=low, high=high, threshold=threshold,
                verdict=verdict_, **extra)


def _missing(text: str, kind: str, what: str) -> Dict:
    return _criterion(text, kind, "unresolved", missing=what)


class _Judge:
    """The criteria of the statements, on one compare_tasks output."""

    def __init__(self, by: Dict, names: Dict[str, str], alpha: float):
        self.by, self.nm, self.alpha = by, names, alpha

    def name(self, u: str) -> str:
        return self.nm.get(u, u)

    def get(self, task: str, u: str) -> Optional[Dict]:
        return self.by.get((task, u))

    def _why(self, task: str, us: Sequence[str]) -> str:
        gone = [u for u in us if (task, u) not in self.by]
        return f"no {TASK_LABELS[task]} comparison of {join_names([self.name(u) for u in gone])}"

    def ratio(self, task: str, u: str, text: str, rule: str, *bounds: float) -> Dict:
        e = self.get(task, u)
        if e is None:
            return _missing(text, "ratio", self._why(task, [u]))
        lo, hi = e["ratio_low"], e["ratio_high"]
        v = {"at least": _at_least, "below": _below, "within": _within}[rule](lo, hi, *bounds)
        return _criterion(text, "ratio", v, e["ratio"], lo, hi, list(bounds) if len(bounds) > 1 else bounds[0],
                          n=e["n"])

    def _difference(self, e: Dict, text: str, v: str, adjusted: bool = True, threshold: float = 0.0) -> Dict:
        return _criterion(text, "difference", v, e["mean"], e["ci_low"], e["ci_high"], threshold,
                          result=dict(mean=e["mean"], ci_low=e["ci_low"], ci_high=e["ci_high"], n=e["n"],
                                      p=e["p"], p_holm=e.get("p_holm", e["p"]), alpha=e.get("alpha", self.alpha)),
                          adjusted=adjusted)

    def above(self, task: str, u: str, text: str) -> Dict:
        """holds when u is higher than bilinear after Holm, fails when lower, else unresolved."""
        e = self.get(task, u)
        if e is None:
            return _missing(text, "difference", self._why(task, [u]))
        v = {"higher": "holds", "lower": "fails", "unresolved": "unresolved"}[verdict(e, self.alpha)]
        return self._difference(e, text, v)

    def not_above(self, task: str, u: str, text: str) -> Dict:
        """holds unless u is higher than bilinear after Holm."""
        e = self.get(task, u)
        if e is None:
            return _missing(text, "difference", self._why(task, [u]))
        return self._difference(e, text, "fails" if verdict(e, self.alpha) == "higher" else "holds")

    def not_above_margin(self, u: str, text: str) -> Dict:
        """holds unless the weak-guide difference's family-wise (Bonferroni) interval lies at or
        above u's mean difference on textures."""
        e, t = self.get("statistics", u), self.get("textures", u)
        if e is None or t is None:
            return _missing(text, "difference", join_names(
                [self._why(k, [u]) for k in TASKS if self.get(k, u) is None]))
        margin = t["mean"]
        m = e.get("family_size", 1)
        c = _criterion(text, "difference", "fails" if e["ci_low_adj"] >= margin else "holds", e["mean"],
                       e["ci_low_adj"], e["ci_high_adj"], margin, margin=margin,
                       result=dict(mean=e["mean"], ci_low=e["ci_low_adj"], ci_high=e["ci_high_adj"], n=e["n"],
                                   p=e["p"], p_holm=e.get("p_holm", e["p"]),
                                   alpha=e.get("alpha", self.alpha) / max(m, 1)))
        return c

    def rows(self, task: str, us: Sequence[str]) -> List[Dict]:
        out = []
        for u in us:
            e = self.by[(task, u)]
            out += [{"setting": u, "seed": k, "value": v} for k, v in zip(e["seeds"], e["values"])]
        return out

    def pair(self, task: str, a: str, b: str, text: str) -> Dict:
        """a - b paired over the task's complete seeds, one planned comparison: holds when its
        interval lies above 0, fails below, else unresolved."""
        if self.get(task, a) is None or self.get(task, b) is None:
            return _missing(text, "difference", self._why(task, [a, b]))
        d = pair_family(self.rows(task, [a, b]), [(a, b)], "value", alpha=self.alpha)[0]
        v = "holds" if d["ci_low"] > 0 else "fails" if d["ci_high"] < 0 else "unresolved"
        return _criterion(text, "difference", v, d["mean"], d["ci_low"], d["ci_high"], 0.0,
                          result=dict(d, alpha=self.alpha), adjusted=False)

    def pairs(self, task: str, pairs: Sequence[Tuple[str, str]], text: str, rule: str) -> Dict:
        """Every pair a - b (Holm over the pairs). ``rule`` "all above": holds when every pair is
        resolved above 0, fails when one is resolved below, else unresolved; "none below":
        fails when one is resolved below, else holds."""
        us = sorted({u for p in pairs for u in p})
        if any(self.get(task, u) is None for u in us):
            return _missing(text, "pairs", self._why(task, us))
        fam = pair_family(self.rows(task, us), list(pairs), "value", alpha=self.alpha)
        up = [d for d in fam if d["significant"] and d["mean"] > 0]
        down = [d for d in fam if d["significant"] and d["mean"] < 0]
        if rule == "all above":
            v = "fails" if down else "holds" if len(up) == len(fam) else "unresolved"
            worst = min(fam, key=lambda d: (d["mean"] > 0, -d["p_holm"], d["mean"]))  # the least resolved
        else:
            v = "fails" if down else "holds"
            worst = min(fam, key=lambda d: d["mean"])
        shown = [dict(d, a_name=self.name(d["a"]), b_name=self.name(d["b"])) for d in fam]
        return _criterion(text, "pairs", v, worst["mean"], worst["ci_low"], worst["ci_high"], 0.0, pairs=shown,
                          above=len(up), below=len(down), worst=dict(worst, a_name=self.name(worst["a"]),
                                                                      b_name=self.name(worst["b"])), rule=rule)


def _fmt(v: float) -> str:
    """A threshold as the prediction writes it (0.6, 0.15, 1.0)."""
    s = f"{v:g}"
    return s if "." in s or "e" in s else s + ".0"


def _margin_text(e: Optional[Dict]) -> str:
    if e is None:
        return ""
    return f" of {signed(100 * e['mean'], decimals(100 * e['mean'], 1))} points"


def prediction_checks(result, probes: Optional[Dict] = None, names: Optional[Dict[str, str]] = None,
                      alpha: float = ALPHA) -> List[Dict]:
    """The prediction's six statements (:data:`PREDICTION_FILE`) judged on :func:`compare_tasks`' output.

    ``result``: the ``(entries, status)`` of :func:`compare_tasks` or its entries; ``probes``:
    the probes' JSON (:func:`probe_precondition`), the precondition of every statement.

    Criteria (W: the weak-guide task; "error ratio": its remaining-error ratio to bilinear and
    95 % interval; an interval judged against a threshold holds when it lies on the stated
    side, fails when it lies on the other, and is unresolved when it straddles it):

    1. SAPA-B's error ratio at least :data:`LOSES_GAIN_RATIO`; SAPA-B not higher than bilinear
       after Holm (fails only when it is).
    2. SAPA-G - SAPA-B on W above 0 (paired t interval, one planned comparison); SAPA-G's
       error ratio within :data:`GATE_RATIO_RANGE`.
    3. FADE's and IndexNet-M2O's error ratios at least :data:`LOSES_GAIN_RATIO`; each not
       resolved as better than bilinear by its textures margin (fails only when the
       family-wise Bonferroni interval on W lies at or above its mean difference on textures).
    4., 5. CARAFE's (deconvolution's) error ratio within :data:`KEEPS_RATIO_TOLERANCE` of its
       textures value in :data:`TEXTURES_RATIOS`; higher than bilinear after Holm (holds),
       lower (fails), else unresolved.
    6. On textures every one of :data:`GUIDED` above each of :data:`UNGUIDED` (Holm over the
       8 pairs; holds when all are resolved, fails when one is resolved the other way); on W
       each of :data:`UNGUIDED` at least level with each of :data:`LEVELLED` (Holm over the 6
       pairs; fails only when one is resolved below).

    A criterion without its numbers (a task or upsampler missing) is unresolved.

    Returns one dict per statement: ``number``, ``statement`` (short text), ``criteria`` (list
    of dicts: ``text``, ``kind`` ("ratio", "difference" in fractions, "pairs"), ``estimate``,
    ``low``, ``high``, ``threshold``, ``verdict``, and ``missing`` when the numbers are not
    there, ``pairs`` for kind "pairs"), ``data_verdict`` (the criteria's: "fails" when one
    fails, "holds" when all hold, else "unresolved"), ``precondition`` (the probes' status)
    and ``verdict``: ``data_verdict`` when the precondition is confirmed, else "unresolved"
    (the prediction does not apply or is not checked), with ``note`` saying why ("" otherwise).
    """
    if not (isinstance(alpha, float) and 0.0 < alpha < 1.0):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    j = _Judge(_by_key(result), _names(names), alpha)
    pre = probe_precondition(probes)
    n = j.name
    W = "statistics"
    lo_b, hi_b = GATE_RATIO_RANGE
    tol = KEEPS_RATIO_TOLERANCE
    crit = {
        1: [j.ratio(W, "sapa-b", f"{n('sapa-b')} error ratio at least {_fmt(LOSES_GAIN_RATIO)}", "at least",
                    LOSES_GAIN_RATIO),
            j.not_above(W, "sapa-b", f"{n('sapa-b')} − {n('bilinear')} not resolved above 0")],
        2: [j.pair(W, "sapa-g", "sapa-b", f"{n('sapa-g')} − {n('sapa-b')} above 0"),
            j.ratio(W, "sapa-g", f"{n('sapa-g')} error ratio between {_fmt(lo_b)} and {_fmt(hi_b)}", "within",
                    lo_b, hi_b)],
        3: [c for u in ("fade", "indexnet-m2o") for c in (
            j.ratio(W, u, f"{n(u)} error ratio at least {_fmt(LOSES_GAIN_RATIO)}", "at least", LOSES_GAIN_RATIO),
            j.not_above_margin(u, f"{n(u)} − {n('bilinear')} not resolved above its textures margin"
                                  + _margin_text(j.get("textures", u)) + " (family-wise interval)"))],
    }
    for k, u in ((4, "carafe"), (5, "deconv")):
        ref = TEXTURES_RATIOS[u]
        crit[k] = [j.ratio(W, u, f"{n(u)} error ratio within {_fmt(tol)} of {_fmt(ref)}", "within", ref - tol,
                           ref + tol),
                   j.above(W, u, f"{n(u)} − {n('bilinear')} above 0 (Holm)")]
    crit[6] = [j.pairs("textures", [(g, p) for g in GUIDED for p in UNGUIDED],
                       f"textures: each of {join_names([n(g) for g in GUIDED])} above "
                       f"{join_names([n(p) for p in UNGUIDED])}", "all above"),
               j.pairs(W, [(p, g) for p in UNGUIDED for g in LEVELLED],
                       f"weak guide: {join_names([n(p) for p in UNGUIDED])} at least level with "
                       f"{join_names([n(g) for g in LEVELLED])}", "none below")]
    out = []
    for k in sorted(STATEMENTS):
        data = _combine([c["verdict"] for c in crit[k]])
        ok = pre["status"] == "confirmed"
        note = "" if ok else (
            "not tested: the probes do not confirm a weak guide" if pre["status"] == "not confirmed"
            else "the precondition (the probes) is not checked")
        out.append(dict(number=k, statement=STATEMENTS[k], criteria=crit[k], data_verdict=data,
                        precondition=pre["status"], verdict=data if ok else "unresolved", note=note))
    return out


def refutation_check(result, probes: Optional[Dict] = None, names: Optional[Dict[str, str]] = None) -> Dict:
    """The observation the prediction names as refuting the mechanism: SAPA-B's error ratio on
    the weak-guide task below :data:`REFUTING_RATIO` while the probes show an uninformative
    first stage (:func:`probe_precondition`'s ``first_weak``).

    Returns dict ``statement``, ``criteria`` (the ratio criterion, as in
    :func:`prediction_checks`), ``first_weak`` and ``verdict``: "holds" (the refuting
    observation is made), "fails" (not made), or "unresolved" (the ratio's interval straddles
    the threshold, or the probes are not given).
    """
    j = _Judge(_by_key(result), _names(names), ALPHA)
    c = j.ratio("statistics", "sapa-b", f"{j.name('sapa-b')} error ratio below {_fmt(REFUTING_RATIO)}", "below",
                REFUTING_RATIO)
    pre = probe_precondition(probes)
    weak = pre["first_weak"]
    if c["verdict"] == "fails" or weak is False:
        v = "fails"
    elif c["verdict"] == "holds" and weak:
        v = "holds"
    else:
        v = "unresolved"
    return dict(statement=f"{j.name('sapa-b')} keeps an error ratio below {_fmt(REFUTING_RATIO)} with an "
                          "uninformative first-stage feature", criteria=[c], first_weak=weak, verdict=v)


# --------------------------------------------------------------------------------------
# what a reader sees
# --------------------------------------------------------------------------------------
def _task_entries(result) -> Dict[str, List[Dict]]:
    by = _by_key(result)
    tasks = {t: [e for (k, _), e in by.items() if k == t] for t in TASKS}
    tasks = {t: es for t, es in tasks.items() if es}
    if not tasks:
        raise ValueError("result has no entries (no task with 2 complete seeds): nothing to tabulate")
    orders = {tuple(e["upsampler"] for e in es) for es in tasks.values()}
    if len(orders) > 1:
        raise ValueError("result compares different upsamplers on the two tasks: pass one compare_tasks output")
    return tasks


def format_differences(result, names: Optional[Dict[str, str]] = None) -> Tuple[List[str], List[List[str]]]:
    """``(header, rows)``: per upsampler, the paired difference to bilinear on each task with
    entries, ``"+5.7 [+5.5, +6.0] ✓"`` (points, 95 % t interval, ✓ when it survives Holm's
    correction over the family; :func:`sapa.lab.comparison.delta_table`'s cells)."""
    tasks = _task_entries(result)
    header, rows = delta_table(tasks, list(tasks), _names(names))
    metric = next(iter(tasks.values()))[0]["metric"]
    from .comparison import METRIC_NAMES

    return (["vs " + _names(names).get("bilinear", "bilinear")]
            + [f"Δ {METRIC_NAMES.get(metric, metric)}, {TASK_LABELS[t]}" for t in tasks]), rows


def format_ratios(result, names: Optional[Dict[str, str]] = None) -> Tuple[List[str], List[List[str]]]:
    """``(header, rows)``: per upsampler, the remaining-error ratio to bilinear on each task with
    entries, ``"0.16 [0.14, 0.19]"`` (geometric mean over the seeds, 95 % interval;
    :func:`sapa.lab.comparison.ratio_table`'s cells)."""
    tasks = _task_entries(result)
    table = {t: [dict(setting=e["upsampler"], ratio=e["ratio"], ci_low=e["ratio_low"], ci_high=e["ratio_high"])
                 for e in es] for t, es in tasks.items()}
    _, rows = ratio_table(table, _names(names))
    return ["upsampler"] + [f"error ratio, {TASK_LABELS[t]}" for t in tasks], rows


def _criterion_text(c: Dict) -> str:
    if "missing" in c:
        return f"{c['text']}: no numbers ({c['missing']}), {c['verdict']}"
    if c["kind"] == "ratio":
        return f"{c['text']}: {_ratio(c['estimate'])} [{_ratio(c['low'])}, {_ratio(c['high'])}], {c['verdict']}"
    if c["kind"] == "difference":
        text = describe_difference(c["result"], adjusted=c.get("adjusted", True), show_n=False)
        return f"{c['text']}: {text}, {c['verdict']}"
    w = c["worst"]
    m = len(c["pairs"])
    if c["rule"] == "all above":
        count = f"{c['above']} of {plural(m, 'pair')} resolved above"
    else:
        count = f"{c['below']} of {plural(m, 'pair')} resolved below"
    which = "the least resolved" if c["rule"] == "all above" else "the lowest"
    return (f"{c['text']}: {count}, {which} {w['a_name']} − {w['b_name']} "
            f"{describe_difference(w, show_n=False)}, {c['verdict']}")


def format_check(check: Dict) -> str:
    """One statement of :func:`prediction_checks` (or :func:`refutation_check`) as a Markdown
    sentence: ``"**1. SAPA-B loses most of its gain**: holds (SAPA-B error ratio at least 0.60:
    0.98 [0.95, 1.01], holds; ...)."``"""
    if not isinstance(check, dict) or not {"statement", "criteria", "verdict"} <= check.keys():
        raise ValueError("check must be an entry of prediction_checks or refutation_check")
    head = f"{check['number']}. {check['statement']}" if "number" in check else check["statement"]
    verdict_ = check["verdict"]
    if check.get("note"):
        verdict_ += f" ({check['note']}; the numbers alone: {check['data_verdict']})"
    return f"**{head}**: {verdict_}; " + "; ".join(_criterion_text(c) for c in check["criteria"]) + "."


def format_checks(checks: Sequence[Dict]) -> Tuple[List[str], List[List[str]]]:
    """``(header, rows)``: per statement of :func:`prediction_checks`, its number, short text,
    the numbers it is judged on (each criterion with its estimate, interval and verdict) and
    the statement's verdict (with the reason when the precondition keeps it unresolved)."""
    if isinstance(checks, dict) or not isinstance(checks, (list, tuple)) or not checks:
        raise ValueError("checks must be the non-empty list of prediction_checks")
    rows = []
    for c in checks:
        if not isinstance(c, dict) or not {"number", "statement", "criteria", "verdict"} <= c.keys():
            raise ValueError("checks must hold entries of prediction_checks")
        v = c["verdict"] + (f" ({c['note']}; the numbers alone: {c['data_verdict']})" if c.get("note") else "")
        rows.append([str(c["number"]), c["statement"], "; ".join(_criterion_text(k) for k in c["criteria"]), v])
    return ["", "statement", "judged on", "verdict"], rows


# --------------------------------------------------------------------------------------
# what is specific to similarity, and what the outcome means
# --------------------------------------------------------------------------------------
#: SAPA against the guided upsamplers that read the encoder feature without similarity
SIMILARITY_PAIRS = (("sapa-b", "fade"), ("sapa-b", "indexnet-m2o"), ("sapa-g", "fade"), ("sapa-g", "indexnet-m2o"))


def similarity_pairs(result, pairs: Sequence[Tuple[str, str]] = SIMILARITY_PAIRS,
                     names: Optional[Dict[str, str]] = None, alpha: float = ALPHA) -> Dict[str, List[Dict]]:
    """SAPA against the other guided upsamplers on each task: what is specific to *similarity*.

    ``result``: :func:`compare_tasks`' output (or its entries); ``pairs``: (a, b) upsampler
    pairs. Per task with entries for every upsampler of the pairs, ``a - b`` paired over the
    task's complete seeds, Holm over the pairs (:func:`sapa.lab.comparison.pair_family`; fields
    ``a``, ``b``, ``mean``, ``ci_low``, ``ci_high``, ``p``, ``p_holm``, ``significant``, ``n``,
    plus ``a_name``/``b_name``). Returns ``{task: [one dict per pair]}``, tasks in
    :data:`TASKS` order, a task left out when one of the upsamplers has no entry there.
    """
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)) or not pairs:
        raise ValueError(f"pairs must be a non-empty list of (a, b) upsampler pairs, got {pairs!r}")
    for p in pairs:
        if not (isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(u, str) for u in p) and p[0] != p[1]):
            raise ValueError(f"pairs must hold (a, b) pairs of two different upsampler names, got {p!r}")
    j = _Judge(_by_key(result), _names(names), alpha)
    us = sorted({u for p in pairs for u in p})
    out: Dict[str, List[Dict]] = {}
    for t in TASKS:
        if any(j.get(t, u) is None for u in us):
            continue
        fam = pair_family(j.rows(t, us), [tuple(p) for p in pairs], "value", alpha=alpha)
        out[t] = [dict(d, a_name=j.name(d["a"]), b_name=j.name(d["b"])) for d in fam]
    return out


def _verdicts_on(by: Dict, task: str, alpha: float) -> Dict[str, str]:
    """{upsampler: "higher" / "lower" / "unresolved"} against bilinear on ``task``."""
    return {u: verdict(e, alpha) for (t, u), e in by.items() if t == task}


def _listing(nm: Dict[str, str], us: Sequence[str]) -> str:
    return join_names([nm.get(u, u) for u in us])


#: the upsamplers the reading calls guided (they read the encoder feature) and unguided (learned,
#: without it); the prediction's statement 6 uses :data:`GUIDED` and :data:`UNGUIDED`
READING_GUIDED = ("sapa-i", "sapa-b", "sapa-g", "fade", "indexnet-m2o")
READING_UNGUIDED = ("deconv", "bilinear+conv", "carafe")


def _baseline_error(by: Dict, task: str) -> float:
    """Bilinear's mean remaining error (1 - metric) over the task's complete seeds."""
    e = next(e for (t, _), e in by.items() if t == task)
    return sum(1.0 - x for x in e["baseline_values"]) / len(e["baseline_values"])


def _pair_text(d: Dict) -> str:
    return f"{d['a_name']} − {d['b_name']} {describe_difference(d, show_n=False)}"


def ready(result) -> bool:
    """Whether :func:`compare_tasks`' output (or its entries) has entries on both tasks, i.e.
    each task has at least two complete seeds: the comparison, its figure and the judged
    prediction can be shown."""
    tasks = {t for t, _ in _by_key(result)}
    return all(t in tasks for t in TASKS)


def _judged(result, checks, names) -> Tuple[Dict, Dict[str, str]]:
    """({(task, upsampler): entry}, display names) of a :func:`ready` result, ``checks`` checked."""
    by = _by_key(result)
    if not ready(list(by.values())):
        raise ValueError("result must have entries on both tasks (compare_tasks with two complete seeds on each)")
    if isinstance(checks, dict) or not isinstance(checks, (list, tuple)) or not checks:
        raise ValueError("checks must be the non-empty list of prediction_checks")
    return by, _names(names)


def waiting_paragraph(result, stored_status: str, command: str, stored: bool = True) -> Optional[str]:
    """The one paragraph a reader sees while the comparison cannot be made, or None when it can.

    ``result``: :func:`compare_tasks`' ``(entries, status)``; ``stored_status``: the weak-guide
    file's loader sentence (:func:`sapa.lab.sweep.stored_rows`; says when it could not be
    downloaded); ``command``: the command that computes it; ``stored``: whether the weak-guide
    file could be read (when not, the loader's sentence says why and the comparison's status,
    which would say it again, is left out).
    """
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], str)):
        raise ValueError("result must be compare_tasks' output (entries, status)")
    if ready(result):
        return None
    run = ("" if command in stored_status else
           f"; `{command}` computes the weak-guide runs (resumable, about two hours on two CPU cores)")
    status = f" {result[1]}" if stored else ""
    return (f"{stored_status}{status} The comparison, the figure and the judged prediction appear here once "
            f"both tasks have at least two complete seeds{run}.").strip()


def reading(result, checks: Sequence[Dict], refutation: Dict, precondition: Dict,
            names: Optional[Dict[str, str]] = None, alpha: float = ALPHA) -> str:
    """What the outcome says, in Markdown paragraphs, every number computed from ``result``.

    ``result``: :func:`compare_tasks`' output with entries on both tasks; ``checks``:
    :func:`prediction_checks`; ``refutation``: :func:`refutation_check`; ``precondition``:
    :func:`probe_precondition`. Three paragraphs: the verdicts against bilinear on each task;
    the prediction's score; what it means for choosing an upsampler (which guided and
    unguided upsamplers keep a resolved gain on the weak-guide task, and SAPA against the other
    guided upsamplers there, :func:`similarity_pairs`).
    """
    by, nm = _judged(result, checks, names)
    if not isinstance(refutation, dict) or "verdict" not in refutation:
        raise ValueError("refutation must be the dict of refutation_check")
    if not isinstance(precondition, dict) or "status" not in precondition:
        raise ValueError("precondition must be the dict of probe_precondition")
    v = {t: _verdicts_on(by, t, alpha) for t in TASKS}
    n = {t: next(e["n"] for (k, _), e in by.items() if k == t) for t in TASKS}
    fam = len(v["statistics"])

    def split(t):
        return {w: [u for u, x in v[t].items() if x == w] for w in ("higher", "lower", "unresolved")}

    tex, weak = split("textures"), split("statistics")
    interim = (f"**Interim**: the weak-guide task has {plural(n['statistics'], 'complete seed')} of the "
               f"{PLANNED_SEEDS} the prediction plans, so every verdict below may still change. "
               if n["statistics"] < PLANNED_SEEDS else "")
    p1 = (f"{interim}**Against bilinear** (Holm over the {fam} upsamplers on each task). On textures "
          f"({plural(n['textures'], 'seed')}), higher: {_listing(nm, tex['higher'])}; lower: "
          f"{_listing(nm, tex['lower'])}; unresolved: {_listing(nm, tex['unresolved'])}. On the weak-guide task "
          f"({plural(n['statistics'], 'seed')}), higher: {_listing(nm, weak['higher'])}; lower: "
          f"{_listing(nm, weak['lower'])}; unresolved: {_listing(nm, weak['unresolved'])}.")
    counts = {w: [str(c["number"]) for c in checks if c["verdict"] == w] for w in VERDICTS}
    if precondition["status"] != "confirmed":
        p2 = (f"**The prediction** is not tested: {precondition['text']} Its statements assumed a weak guide; "
              "the numbers alone would give: " + "; ".join(f"{c['number']} {c['data_verdict']}" for c in checks)
              + ".")
    else:
        def which(w):
            k = counts[w]
            return f"{len(k)} ({', '.join(k)})" if k else "none"

        ref = {"holds": "made: the gain would then come from something other than the similarity of the two "
                        "features",
               "fails": "not made",
               "unresolved": "unresolved (the interval of SAPA-B's error ratio straddles the threshold)"}
        p2 = (f"**The prediction** (written before the runs, its {len(checks)} statements judged by the criteria "
              f"above): holds: {which('holds')}; fails: {which('fails')}; unresolved: {which('unresolved')}. The "
              f"observation it names as refuting the mechanism ({refutation['statement']}) is "
              f"{ref[refutation['verdict']]}.")
    g_all = [u for u in READING_GUIDED if u in v["statistics"]]
    g_kept = [u for u in g_all if v["statistics"][u] == "higher"]
    u_all = [u for u in READING_UNGUIDED if u in v["statistics"]]
    u_kept = [u for u in u_all if v["statistics"][u] == "higher"]
    g_lost = [u for u in g_all if u not in g_kept]
    # "lost most of its gain": the error ratio's whole interval at or above LOSES_GAIN_RATIO
    g_gone = [u for u in g_lost if by[("statistics", u)]["ratio_low"] >= LOSES_GAIN_RATIO]
    g_open = [u for u in g_lost if u not in g_gone]
    harder = _baseline_error(by, "statistics") / _baseline_error(by, "textures")
    confound = (f"The tasks differ in more than the guide (bilinear's own error is {harder:.1f} times as large on "
                "the weak-guide task), so the comparison associates the outcome with the weak guide; it does not "
                "isolate the guide as its cause.")
    unguided = (f", while {_listing(nm, u_kept)}, which {'reads' if len(u_kept) == 1 else 'read'} no encoder "
                f"feature, {'keeps its gain' if len(u_kept) == 1 else 'keep their gains'}" if u_kept else "")
    if g_all and not g_kept and not u_kept and u_all:
        core = (f"No learned upsampler keeps a resolved gain over bilinear on the weak-guide task, guided "
                f"({_listing(nm, g_all)}) or not ({_listing(nm, u_all)})")
        advice = (f": the task is harder for all of them, and this comparison cannot attribute the loss to the "
                  f"guide. {confound}")
    elif g_all and not g_kept and not g_open:
        core = (f"No guided upsampler ({_listing(nm, g_all)}) keeps a resolved gain over bilinear on the "
                f"weak-guide task, and each keeps at least {_fmt(LOSES_GAIN_RATIO)} of bilinear's error (the whole "
                f"interval of its error ratio){unguided}")
        advice = (f": the pattern the mechanism predicts. {confound} Before choosing a guided upsampler, check "
                  "what its guide says per pixel (a linear probe of the encoder stage that guides it costs minutes).")
    elif g_all and not g_kept:
        core = (f"No guided upsampler ({_listing(nm, g_all)}) keeps a resolved gain over bilinear on the "
                f"weak-guide task{unguided}")
        advice = (f"; for {_listing(nm, g_open)} the seeds cannot tell how much of the gain is left (the interval "
                  f"of the error ratio reaches below {_fmt(LOSES_GAIN_RATIO)}). On the weak-guide task their "
                  f"resolved advantage is gone; more seeds would say whether the gain itself is. {confound}")
    elif g_all and not g_lost:
        core = (f"Every guided upsampler ({_listing(nm, g_all)}) keeps a resolved gain over bilinear on the "
                "weak-guide task")
        advice = (" although the first stage of a bilinear model names the class far worse there. A guide that "
                  "cannot tell the classes apart per pixel may still mark where a region ends (this comparison "
                  "does not show which it does), so on this evidence a weak per-pixel probe of the guide is no "
                  "reason to avoid them." if precondition.get("first_weak") else
                  ". The probes do not show a weak first stage, so this says nothing about a weak guide.")
    elif g_all:
        core = (f"Of the guided upsamplers, {_listing(nm, g_kept)} {'keeps' if len(g_kept) == 1 else 'keep'} a "
                f"resolved gain over bilinear on the weak-guide task and {_listing(nm, g_lost)} "
                f"{'does' if len(g_lost) == 1 else 'do'} not{unguided}")
        advice = (": on this task the guided upsamplers do not behave alike (a resolved gain against an "
                  "unresolved one is not a resolved difference between them: the pairs below compare SAPA with "
                  "FADE and IndexNet-M2O directly).")
    else:
        core, advice = "No guided upsampler was compared on the weak-guide task", "."
    pairs = similarity_pairs(result, names=nm, alpha=alpha).get("statistics")
    if pairs:
        up = [d for d in pairs if d["significant"] and d["mean"] > 0]
        down = [d for d in pairs if d["significant"] and d["mean"] < 0]
        spec = ("**SAPA against the other guided upsamplers** on the weak-guide task (FADE and IndexNet-M2O read "
                "the encoder feature without a similarity, and differ from SAPA in other choices too; Holm over "
                f"the {len(pairs)} pairs): "
                + "; ".join(_pair_text(d) for d in pairs) + ". "
                + (f"Resolved in SAPA's favour: {join_names([d['a_name'] + ' over ' + d['b_name'] for d in up])}"
                   if up else "No pair is resolved in SAPA's favour")
                + (f"; against it: {join_names([d['a_name'] + ' under ' + d['b_name'] for d in down])}." if down
                   else "."))
    else:
        spec = ""
    p3 = f"**Choosing an upsampler.** {core}{advice}"
    return "\n\n".join(p for p in (p1, p2, p3, spec) if p)


def claim(result, checks: Optional[Sequence[Dict]], command: str, stored_status: str = "",
          names: Optional[Dict[str, str]] = None, alpha: float = ALPHA) -> str:
    """The preface's verdict from the section "When does similarity help?": one Markdown bullet.

    ``result``: :func:`compare_tasks`' output; ``checks``: :func:`prediction_checks` (None
    while the comparison waits); ``command``: the weak-guide sweep's; ``stored_status``: the
    weak-guide file's loader sentence, shown when the comparison waits.
    """
    by = _by_key(result)
    head = ("* *The book's prediction for a weak guide* (chapter 10, written before the runs: the upsamplers "
            "that read the encoder feature lose their gain over bilinear where it says little per pixel, CARAFE "
            "and deconvolution keep theirs)")
    if not checks or not ready(list(by.values())):
        why = stored_status or "The weak-guide runs are not stored yet."
        fill = "" if command in why else f" `{command}` fills it."
        return f"{head}: cannot be judged yet. {why}{fill}"
    return f"{head}: {verdict_sentence(result, checks, names, alpha)}"


def _verdict_word(checks: Sequence[Dict], n: int) -> str:
    """The prediction's one-word verdict from its statements' verdicts and the seeds compared."""
    counts = {w: sum(c["verdict"] == w for c in checks) for w in VERDICTS}
    h, f, u = counts["holds"], counts["fails"], counts["unresolved"]
    if checks[0].get("precondition") != "confirmed":
        return "**not tested**"
    if n < PLANNED_SEEDS:
        return f"**interim** ({plural(n, 'seed')} of {PLANNED_SEEDS})"
    if f == 0 and u == 0:
        return "**supported**"
    if f:
        return "**mixed**" if h else "**contradicted**"
    return "**partly supported**" if h else "**unresolved**"


def verdict_sentence(result, checks: Sequence[Dict], names: Optional[Dict[str, str]] = None,
                     alpha: float = ALPHA) -> str:
    """The verdict of :func:`claim` without its head: the prediction's score ("not tested" when the
    probes do not confirm the precondition, "interim" with fewer than :data:`PLANNED_SEEDS` seeds,
    else "supported" (all hold), "mixed" (some hold, some fail), "contradicted" (some fail, none
    holds), "partly supported" (some hold, the rest unresolved) or "unresolved"), the guided
    upsamplers still higher than bilinear on the weak-guide task, and SAPA-B's error ratio on both
    tasks. ``result`` must be :func:`ready`."""
    by, nm = _judged(result, checks, names)
    v = _verdicts_on(by, "statistics", alpha)
    kept = [u for u in READING_GUIDED if v.get(u) == "higher"]
    counts = {w: sum(c["verdict"] == w for c in checks) for w in VERDICTS}
    b = by.get(("statistics", "sapa-b"))
    bt = by.get(("textures", "sapa-b"))
    ratio = (f"; SAPA-B keeps {_ratio(bt['ratio'])} of bilinear's error on textures and {_ratio(b['ratio'])} "
             f"[{_ratio(b['ratio_low'])}, {_ratio(b['ratio_high'])}] on the weak-guide task" if b and bt else "")
    tested = checks[0].get("precondition") == "confirmed"
    n = min(e["n"] for (t, _), e in by.items() if t == "statistics")
    score = (f"{counts['holds']} of its {len(checks)} statements hold, {counts['fails']} fail, "
             f"{counts['unresolved']} unresolved" if tested else "the probes do not confirm a weak guide")
    return (f"{_verdict_word(checks, n)}; {score}; guided upsamplers still higher than bilinear on the weak-guide task after "
            f"Holm's correction: {_listing(nm, kept)}{ratio}.")
