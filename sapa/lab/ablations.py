"""The ablations of the paper's Table 6 on the book's stored sweep (chapter 8).

The sweep ``python -m sapa.lab.sweep --grid table6`` (:func:`sapa.lab.sweep.grid`) trains SAPA-B
with one design choice changed at a time, in five *groups*: the normalisation ``h``, the kernel
size ``K``, the embedding dimension ``d``, the similarity function (SAPA-I, -B, -P, -G) and the
padding at the image border. Each group holds one setting equal to SAPA-B's defaults (the same
run, reported under every group). This module turns the stored rows into

* :func:`analyse`: per group, the seeds every setting of the group has, and for each metric the
  per-seed paired differences of every other setting to the group's default, with 95 % t
  intervals and Holm's correction over the group's other settings (one family per group);
* :func:`group_table`, :func:`status_paragraph`, :func:`reading` and :func:`describe`: the
  tables and sentences the chapter shows, computed from those results;
* :func:`difference_figure`: the paired differences of every group, one panel per group.

Usage::

    from sapa.lab import ablations, sweep
    rows, status = sweep.stored_rows("table6")
    res = ablations.analyse(rows)
    print(ablations.status_paragraph(res, status))
"""
from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Sequence

from . import sweep
from .stats import complete_seeds, describe_difference, paired_differences, signed, verdict

__all__ = ["METRICS", "METRIC_NAMES", "GROUP_NAMES", "PAPER_TABLE6", "groups", "default_settings",
           "setting_name", "analyse", "fmt_signed", "describe", "group_table",
           "status_paragraph", "verdict_sentence", "reading", "difference_figure"]

#: the metrics compared (columns of the sweep CSV) and how the book writes them
METRICS = ("miou", "boundary_iou")
METRIC_NAMES = {"miou": "mIoU", "boundary_iou": "boundary IoU"}

#: how the chapter names each group
GROUP_NAMES = {"normalization": "normalisation h", "kernel size": "kernel size K",
               "embedding dim": "embedding dimension d", "similarity": "similarity function",
               "padding": "padding"}

#: Table 6 of the paper (SegFormer-B1 on ADE20K, mIoU %, one run each); it has no padding rows
PAPER_TABLE6 = {
    "normalization": {"none": 41.5, "exp": 43.2, "relu": 40.8, "sigmoid": 42.8, "softplus": 42.7},
    "kernel size": {"3": 43.1, "5": 43.2, "7": 42.5},
    "embedding dim": {"16": 43.0, "32": 43.2, "64": 43.2, "128": 43.4},
    "similarity": {"I": 43.1, "B": 43.2, "P": 43.2, "G": 44.4},
}

_NORM_NAMES = {"none": "none", "exp": "exp", "relu": "ReLU", "sigmoid": "sigmoid", "softplus": "softplus"}


def groups(name: str = "table6") -> Dict[str, List[str]]:
    """The groups of the grid ``name`` ("table6" or "ablations"): ``{group: [settings]}``,
    both in the grid's order (:func:`sapa.lab.sweep.grid`)."""
    if name not in ("table6", "ablations"):
        raise ValueError(f"name must be 'table6' or 'ablations', got {name!r}")
    out: Dict[str, List[str]] = {}
    for c in sweep.grid(name):
        out.setdefault(c["group"], []).append(c["setting"])
    return out


def default_settings(name: str = "table6") -> Dict[str, str]:
    """``{group: setting}``: the setting of each group that *is* SAPA-B with its defaults
    (softmax, K = 5, d = 32, zero padding), i.e. the baseline of the group's comparisons."""
    if name not in ("table6", "ablations"):
        raise ValueError(f"name must be 'table6' or 'ablations', got {name!r}")
    out = {}
    for c in sweep.grid(name):
        if c["upsampler"] == "sapa-b" and not sweep._canonical_options("sapa-b", c["options"]):
            if c["group"] in out:
                raise ValueError(f"group {c['group']!r} has two default settings")  # pragma: no cover
            out[c["group"]] = c["setting"]
    return out


def setting_name(group: str, setting: str) -> str:
    """How the book writes ``setting`` of ``group`` (e.g. ``"K = 7"``, ``"SAPA-G"``, ``"ReLU"``)."""
    if group == "normalization":
        return _NORM_NAMES.get(setting, setting)
    if group == "kernel size":
        return f"K = {setting}"
    if group == "embedding dim":
        return f"d = {setting}"
    if group == "similarity":
        return f"SAPA-{setting}"
    return str(setting)


def analyse(rows: Optional[Sequence[Dict]], name: str = "table6", metrics: Sequence[str] = METRICS,
            alpha: float = 0.05) -> Dict[str, Dict]:
    """Each group's comparisons with its default, from sweep rows.

    Args:
        rows: rows of the sweep (dicts with ``group``, ``setting``, ``seed`` and the metrics,
            as :func:`sapa.lab.sweep.read_csv` gives), or ``None`` (no stored file).
        name: the grid ("table6" or "ablations").
        metrics: the columns compared.
        alpha: level of the intervals and of Holm's correction.

    Returns:
        ``{group: dict}`` in the grid's order, each with ``settings`` (the grid's), ``default``,
        ``seeds`` (the seeds every setting of the group has, sorted), ``rows`` (the group's
        rows of those seeds), ``runs`` (how many rows the group has, complete seeds or not) and ``results``: ``None`` with fewer than two complete seeds, else
        ``{metric: [paired_differences result per non-default setting]}``. Holm's family is
        the group's non-default settings (one family per group and metric).

    Raises ValueError for an unknown grid, a row without the columns, or a setting with a
    seed twice in one group.
    """
    if rows is not None and not isinstance(rows, (list, tuple)):
        raise TypeError(f"rows must be a list of row dicts or None, got {type(rows).__name__}")
    grid = groups(name)
    defaults = default_settings(name)
    rows = list(rows or [])
    for r in rows:
        missing = [k for k in ("group", "setting", "seed", *metrics) if k not in r]
        if missing:
            raise ValueError(f"row {r.get('run', r)!r} lacks the columns {missing}")
    out: Dict[str, Dict] = {}
    for g, settings in grid.items():
        mine = [r for r in rows if r["group"] == g and r["setting"] in settings]
        runs = len(mine)
        seeds = complete_seeds(mine, settings)
        mine = [r for r in mine if r["seed"] in seeds]
        res = None
        if len(seeds) >= 2:
            others = [s for s in settings if s != defaults[g]]
            res = {m: paired_differences(mine, m, baseline=defaults[g], settings=others, alpha=alpha)
                   for m in metrics}
        out[g] = dict(group=g, settings=list(settings), default=defaults[g], seeds=seeds, rows=mine,
                      runs=runs, results=res)
    return out


def _plural(n: int, word: str, plural: Optional[str] = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def fmt_signed(value: float, digits: int = 1) -> str:
    """``value`` with a sign and a typeset minus (U+2212), never a nonzero value as 0.0
    (:func:`sapa.lab.stats.signed`)."""
    return signed(value, digits, minus="\u2212")


def describe(result: Dict, scale: float = 100.0, unit: str = "points") -> str:
    """One paired difference as text: ``"+1.2 points (95 % CI +0.4 to +2.0, Holm p = 0.012)"``
    (:func:`sapa.lab.stats.describe_difference`, typeset minus)."""
    return describe_difference(result, scale=scale, unit=unit, show_n=False, minus="\u2212")


def _cell(result: Dict, scale: float = 100.0) -> str:
    mark = "\u00a0✓" if result.get("significant") else ""
    return (f"{fmt_signed(scale * result['mean'])}\u00a0[{fmt_signed(scale * result['ci_low'])},"
            f"\u00a0{fmt_signed(scale * result['ci_high'])}]{mark}")


def _mean_of(group: Dict, setting: str, metric: str = "miou") -> float:
    return statistics.fmean(100 * r[metric] for r in group["rows"] if r["setting"] == setting)


def group_table(group: Dict, paper: Optional[Dict[str, Dict[str, float]]] = None):
    """The table of one analysed group (an entry of :func:`analyse` with results).

    Returns ``(header, rows, caption)`` for :func:`sapa.lab.plotting.show_table`: per setting
    its display name, mean mIoU (%) over the complete seeds, the differences to the default
    (points) on each metric with the 95 % interval (✓: Holm p < 0.05 within the group) and
    the paper's mIoU. Raises ValueError for a group without results."""
    if not group.get("results"):
        raise ValueError(f"group {group.get('group')!r} has no results (fewer than two complete seeds)")
    paper = PAPER_TABLE6 if paper is None else paper
    g, d = group["group"], group["default"]
    ref = paper.get(g, {})
    metrics = list(group["results"])
    header = ["setting", "mIoU"] + [f"Δ {METRIC_NAMES.get(m, m)} [95 % CI]" for m in metrics] + ["paper mIoU"]
    rows = [[f"{setting_name(g, d)} (default)", f"{_mean_of(group, d):.1f}"] + ["–"] * len(metrics)
            + [f"{ref[d]:.1f}" if d in ref else "–"]]
    for i, s in enumerate(r["setting"] for r in group["results"][metrics[0]]):
        rows.append([setting_name(g, s), f"{_mean_of(group, s):.1f}"]
                    + [_cell(group["results"][m][i]) for m in metrics]
                    + [f"{ref[s]:.1f}" if s in ref else "–"])
    n = len(group["seeds"])
    caption = (f"{_cap(GROUP_NAMES.get(g, g))}: {_plural(n, 'paired seed')}; mIoU in %, Δ to the "
               f"default in points; ✓: Holm p < 0.05 within the group")
    return header, rows, caption


def status_paragraph(analysed: Dict[str, Dict], load_status: str) -> str:
    """The chapter's paragraph about the stored sweep (Markdown).

    Without rows (every group without seeds): what the section will show and ``load_status``
    (why the file is not there, with the command that writes it). With rows: ``load_status``,
    the complete seeds per group, and which groups still wait for a second seed."""
    if not isinstance(analysed, dict) or not analysed:
        raise ValueError("analysed must be the non-empty dict that analyse() returns")
    names = ", ".join(GROUP_NAMES.get(g, g) for g in analysed)
    if not any(G["rows"] for G in analysed.values()):
        text = ("This section compares, within each group of the sweep (" + names + "), every setting "
                "with SAPA-B's default: per-seed paired differences with 95 % t intervals, Holm's "
                "correction over the group's other settings, a table per group, one figure of all the groups, and a "
                "verdict per setting set against the paper's Table 6. " + load_status.strip())
        if any(G.get("runs") for G in analysed.values()):
            text += (" No group has a complete seed yet (a seed counts once every setting of the group has "
                     "it), so the tables, the figure and the verdicts appear once a group has two.")
        return text
    per = "; ".join(f"{GROUP_NAMES.get(g, g)}: {len(G['seeds'])}" for g, G in analysed.items())
    text = (load_status.strip() + " Complete seeds per group (a seed counts once every setting of the "
            "group has it): " + per + ".")
    waiting = [GROUP_NAMES.get(g, g) for g, G in analysed.items() if not G["results"]]
    if waiting:
        text += (" A paired interval needs two complete seeds, so " + _join(waiting)
                 + (" has" if len(waiting) == 1 else " have") + " no comparison yet.")
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def verdict_sentence(group: Dict, metric: str = "miou", alpha: float = 0.05) -> str:
    """What the seeds resolve in one group on ``metric`` (Markdown, one sentence ending in a
    full stop): the settings better than and worse than the default, each with its difference
    and interval, and the ones not resolved with how far their intervals reach from zero."""
    g = group["group"]
    if not group.get("results"):
        n = len(group.get("seeds", []))
        return f"No comparison yet ({_plural(n, 'complete seed')}; a paired interval needs two)."
    res = group["results"][metric]
    by: Dict[str, List[Dict]] = {"higher": [], "lower": [], "unresolved": []}
    for r in res:
        by[verdict(r, alpha)].append(r)
    parts = []
    for key, text in (("higher", "better than the default"), ("lower", "worse than the default")):
        if by[key]:
            parts.append(text + ": " + "; ".join(f"{setting_name(g, r['setting'])}, {describe(r)}"
                                                for r in by[key]))
    if by["unresolved"]:
        widest = max(max(abs(r["ci_low"]), abs(r["ci_high"])) for r in by["unresolved"])
        names = _join([setting_name(g, r["setting"]) for r in by["unresolved"]])
        one = len(by["unresolved"]) == 1
        parts.append(f"not resolved from the default: {names} ({'its interval reaches' if one else 'their intervals reach'}"
                     f" at most {fmt_signed(100 * widest).lstrip('+')} points from zero)")
    return f"On {METRIC_NAMES.get(metric, metric)}, " + "; ".join(parts) + "."


def _paper_agreement(group: Dict, paper: Dict[str, Dict[str, float]], alpha: float) -> str:
    g, d = group["group"], group["default"]
    ref = paper.get(g)
    if not ref or d not in ref:
        return "The paper has no rows for this group."
    resolved = [r for r in group["results"]["miou"] if verdict(r, alpha) != "unresolved" and r["setting"] in ref]
    if not resolved:
        return ("No difference on mIoU is resolved, so the sweep neither confirms nor contradicts the "
                "paper's ordering of this group.")
    gap = {r["setting"]: ref[r["setting"]] - ref[d] for r in resolved}
    same = [r for r in resolved if gap[r["setting"]] * r["mean"] > 0]
    other = [r for r in resolved if gap[r["setting"]] * r["mean"] < 0]
    flat = [r for r in resolved if gap[r["setting"]] == 0]

    def named(rs, with_gap=True):
        return _join([setting_name(g, r["setting"]) + (f" (paper {fmt_signed(gap[r['setting']])})" if with_gap else "")
                      for r in rs])

    n = len(resolved)
    if len(same) == n:
        return ("The resolved difference on mIoU has" if n == 1 else
                f"All {n} resolved differences on mIoU have") + " the sign of the paper's."
    if n == 1:
        r = resolved[0]
        if other:
            return (f"The resolved difference on mIoU, {named([r], False)}, has the opposite sign of the "
                    f"paper's (paper {fmt_signed(gap[r['setting']])} points).")
        return f"The resolved difference on mIoU, {named([r], False)}, is one the paper does not show (same mIoU)."
    text = f"Of the {n} resolved differences on mIoU, {len(same)} {'has' if len(same) == 1 else 'have'} the paper's sign"
    if other:
        text += "; " + named(other) + (" has" if len(other) == 1 else " have") + " the opposite sign"
    if flat:
        text += "; the paper shows no difference for " + named(flat, False)
    return text + " (paper differences in points, one run each)."


def reading(analysed: Dict[str, Dict], paper: Optional[Dict[str, Dict[str, float]]] = None,
            alpha: float = 0.05) -> str:
    """One Markdown paragraph per group with results: the verdicts on each metric (with their
    differences and intervals) and how the resolved ones compare in sign with the paper's
    Table 6. Empty string when no group has results."""
    paper = PAPER_TABLE6 if paper is None else paper
    out = []
    for g, G in analysed.items():
        if not G.get("results"):
            continue
        head = (f"**{_cap(GROUP_NAMES.get(g, g))}** (default {setting_name(g, G['default'])}, "
                f"{_plural(len(G['seeds']), 'paired seed')}).")
        sentences = [verdict_sentence(G, m, alpha) for m in G["results"]]
        if "miou" in G["results"]:
            sentences.append(_paper_agreement(G, paper, alpha))
        out.append(" ".join([head] + sentences))
    return "\n\n".join(out)


def difference_figure(analysed: Dict[str, Dict], metric: str = "miou", width: float = 4.4):
    """The paired differences of every group with results, one panel per group stacked (one
    x scale, wide enough for every dot), the seeds' colours in one legend below.

    ``width`` (inches) is kept narrow so the figure stays legible on a phone. Returns the
    Figure, or ``None`` when no group has results."""
    import matplotlib.pyplot as plt

    from .plotting import paired_difference_plot

    ready = [G for G in analysed.values() if G.get("results")]
    if not ready:
        return None
    if metric not in ready[0]["results"]:
        raise ValueError(f"metric {metric!r} not analysed; have {list(ready[0]['results'])}")
    sizes = [len(G["results"][metric]) for G in ready]
    fig, axes = plt.subplots(len(ready), 1, figsize=(width, 0.42 * sum(sizes) + 0.75 * len(ready) + 0.9),
                             gridspec_kw=dict(height_ratios=sizes), layout="constrained", squeeze=False,
                             sharex=True)
    lims = []
    for ax, G in zip(axes[:, 0], ready):
        names = {s: setting_name(G["group"], s) for s in G["settings"]}
        paired_difference_plot(G["results"][metric], G["rows"], metric, ax=ax, names=names, xlabel="")
        ax.set_title(f"{GROUP_NAMES.get(G['group'], G['group'])} (default "
                     f"{setting_name(G['group'], G['default'])})", loc="left")
        lims.append(ax.get_xlim())
    axes[0, 0].set_xlim(min(a for a, _ in lims), max(b for _, b in lims))
    axes[-1, 0].set_xlabel(f"Δ {METRIC_NAMES.get(metric, metric)} to the default (points)")
    seen: Dict[str, object] = {}
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, h)
    labels = sorted(seen, key=lambda t: (len(t), t))
    fig.legend([seen[k] for k in labels], labels, frameon=False, ncol=min(len(labels), 3), loc="outside lower center")
    return fig
