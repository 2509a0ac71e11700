"""The comparison of upsamplers (chapter 6) and the preface's verdicts, as functions.

Every verdict, table and sentence that chapter 6 or the preface (``book/intro.md``) shows is
computed here, so that the two pages never compute the same thing twice:

* loading: :func:`load_stored` (rows and a status sentence of a stored CSV),
  :func:`complete_rows` (the complete seeds of a comparison), :func:`seed_status`;
* wording: :func:`plural`, :func:`signed` (a nonzero value never prints as 0.0),
  :func:`mean_sd`, :func:`names_list`;
* paired statistics: :func:`paired_results` (every upsampler against bilinear, Holm),
  :func:`pair_family` (chosen pairs, Holm over them), :func:`delta_cell`,
  :func:`delta_table`, :func:`listing`, :func:`error_ratios` (remaining error as a ratio to
  bilinear's, with a t interval on the log ratio), :func:`ratio_table`, :func:`ceiling`,
  :func:`ceiling_sentence`, :func:`control_sentence`, :func:`close_sentence`,
  :func:`paper_agreement`, :func:`late_gains`, :func:`interval_widths`;
* the preface's claims: :func:`claims_main`, :func:`claim_mechanism`, :func:`claim_table6`,
  :func:`claim_segformer`;
* kernels: :func:`labels_at` (block-majority labels), :func:`label_boundary` (pixels whose
  3 x 3 neighbourhood holds two labels, from :func:`sapa.lab.metrics.boundary_band`),
  :func:`same_class_indicator`, :func:`same_class_mass`, :func:`kernel_statistics`,
  :func:`mass_sentence`; :func:`apply_kernels` and :func:`uniform_kernel_ablation` (a trained
  model evaluated with its kernels replaced by the uniform average: eval only).

Rows are dicts as :func:`sapa.lab.sweep.read_csv` gives them (``setting``, ``seed`` and the
metric columns, metrics as fractions in [0, 1]); differences are printed in points (x 100).
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .stats import (complete_seeds, decimals, describe_difference, holm, paired_differences, paired_t, plural,  # noqa: F401
                    signed, t_ppf, verdict)

__all__ = [
    "PLAIN", "GUIDED", "SIMILARITY", "PAPER_MIOU", "METRIC_NAMES",
    "load_stored", "complete_rows", "seed_status", "plural", "signed", "mean_sd", "names_list",
    "paired_results", "pair_family", "delta_cell", "delta_table", "listing", "error_ratios",
    "ratio_table", "ceiling", "ceiling_sentence", "control_sentence", "close_sentence",
    "paper_agreement", "late_gains", "interval_widths", "describe",
    "claims_main", "claim_mechanism", "claim_table6", "claim_segformer",
    "labels_at", "label_boundary", "same_class_indicator", "same_class_mass", "kernel_statistics",
    "mass_sentence", "apply_kernels", "uniform_kernel_ablation", "feature_pc1", "spread", "stored_model",
    "interval_cell", "late_lr_share", "control_texts", "kernel_texts", "ablation_texts",
]

#: learned upsamplers without content-aware kernels: a gain they share is no evidence for SAPA's mechanism
PLAIN = ("deconv", "pixelshuffle", "bilinear+conv")
#: upsamplers whose kernels (or indices) read the encoder guide, besides SAPA's similarity variants
GUIDED = ("indexnet-hin", "indexnet-m2o", "a2u", "fade")
#: SAPA's similarity upsamplers whose specific claims the preface judges
SIMILARITY = ("sapa-b", "sapa-g")
#: ADE20K, SegFormer-B1, mIoU (%): Table 2 of the paper; FADE from the 2023 extension (typed from the papers)
PAPER_MIOU = {"bilinear": 41.68, "carafe": 42.82, "indexnet-hin": 41.50, "a2u": 41.45, "sapa-i": 43.05,
              "sapa-b": 43.20, "sapa-g": 44.39, "fade": 43.06}
METRIC_NAMES = {"miou": "mIoU", "boundary_iou": "boundary IoU", "fg_boundary_iou": "foreground boundary IoU",
                "loc_error_rate": "localisation errors", "rec_error_rate": "recognition errors"}


def _names(names: Optional[Dict[str, str]]) -> Dict[str, str]:
    if names is None:
        from .plotting import DISPLAY_NAMES

        return DISPLAY_NAMES
    return names


# --------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------
def load_stored(name: str):
    """``(rows, status)`` of a stored result: "main", "table6" (:func:`sapa.lab.sweep.stored_rows`)
    or "mechanism" (:func:`sapa.lab.mechanism.stored_rows`); rows None when the file cannot be
    had, status a Markdown sentence saying what is there or why not."""
    from . import mechanism, sweep

    if name not in ("main", "table6", "mechanism"):
        raise ValueError(f"name must be 'main', 'table6' or 'mechanism', got {name!r}")
    return mechanism.stored_rows() if name == "mechanism" else sweep.stored_rows(name)


def complete_rows(rows: Optional[Sequence[Dict]], settings: Sequence[str], key: str = "setting"):
    """``(seeds, rows)``: the seeds every one of ``settings`` has, and the rows of those settings
    and seeds (empty lists when ``rows`` is None)."""
    if rows is None:
        return [], []
    seeds = complete_seeds(rows, settings, key=key)
    keep = set(settings)
    return seeds, [r for r in rows if r["seed"] in seeds and r[key] in keep]


def seed_status(rows: Optional[Sequence[Dict]], status: str, settings: Sequence[str], planned: Sequence,
                command: str) -> str:
    """The sentence that opens a comparison: how many complete seeds the stored rows hold.

    ``rows`` None (the file cannot be had): ``status`` and that the comparison is skipped.
    """
    if rows is None:
        return f"{status} The comparison below is skipped until it is there."
    seeds, kept = complete_rows(rows, settings)
    n = len(seeds)
    lead = f"{status} " if status else ""
    if n == 0:
        return (f"{lead}No seed is complete yet (none has a run of all {len(settings)} upsamplers); "
                f"`{command}` completes it (it resumes where it stopped).")
    missing = len([k for k in planned if k not in seeds])
    text = (f"{lead}The comparison uses the {plural(n, 'complete seed')} ({', '.join(map(str, seeds))}) of the "
            f"{len(planned)} planned, {plural(len(kept), 'run')}; ")
    text += (f"{plural(missing, 'seed')} still to come from `{command}` (it resumes where it stopped)."
             if missing else f"the command was `{command}`.")
    if n < 2:
        text += " With one seed there is no paired interval: the verdicts below wait for a second seed."
    return text


def mean_sd(values: Sequence[float], scale: float = 100.0, digits: int = 1) -> str:
    """``"98.9 ± 0.05"``: mean ± sample sd of ``values`` x ``scale`` (the mean alone for one value)."""
    v = [scale * float(x) for x in values]
    if not v:
        raise ValueError("values is empty")
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.fmean(v):.{digits}f}\u00a0±\u00a0{signed(statistics.stdev(v), digits, sign=False)}"


def names_list(keys: Sequence[str], names: Optional[Dict[str, str]] = None, empty: str = "none") -> str:
    """Display names joined by commas, ``empty`` for none."""
    nm = _names(names)
    return ", ".join(nm.get(k, k) for k in keys) if keys else empty


def describe(result: Dict, adjusted: bool = True, scale: float = 100.0, digits: int = 1,
             unit: str = "points") -> str:
    """A difference as text: ``"+1.4 points (95 % CI +0.4 to +2.4, Holm p = 0.010, n = 3)"``;
    ``adjusted=False`` writes ``p`` (one planned comparison) (:func:`sapa.lab.stats.describe_difference`)."""
    return describe_difference(result, scale=scale, digits=digits, unit=unit, adjusted=adjusted)



# --------------------------------------------------------------------------------------
# paired differences
# --------------------------------------------------------------------------------------
def paired_results(rows: Sequence[Dict], metrics: Sequence[str], family: Sequence[str],
                   baseline: str = "bilinear") -> Dict[str, List[Dict]]:
    """``{metric: paired_differences(rows, metric, baseline, settings=family)}`` (Holm over the family)."""
    return {m: paired_differences(rows, m, baseline=baseline, settings=list(family)) for m in metrics}


def pair_family(rows: Sequence[Dict], pairs: Sequence[Tuple[str, str]], metric: str, key: str = "setting",
                alpha: float = 0.05) -> List[Dict]:
    """Each pair (a, b): ``metric(a) - metric(b)`` paired over the seeds both have, Holm over the pairs.

    Returns one dict per pair: ``a``, ``b``, the :func:`sapa.lab.stats.paired_t` fields, ``p_holm``,
    ``significant``. Raises ValueError when a pair shares fewer than 2 seeds.
    """
    val: Dict[str, Dict] = {}
    for r in rows:
        val.setdefault(r[key], {})[r["seed"]] = float(r[metric])
    out = []
    for a, b in pairs:
        common = sorted(set(val.get(a, {})) & set(val.get(b, {})))
        if len(common) < 2:
            raise ValueError(f"{a!r} and {b!r} share {len(common)} seeds in the rows; need >= 2")
        out.append(dict(a=a, b=b, metric=metric, seeds=common, alpha=alpha,
                        **paired_t([val[a][k] - val[b][k] for k in common], alpha)))
    for r, ph in zip(out, holm([r["p"] for r in out])):
        r["p_holm"], r["significant"] = ph, ph < alpha
    return out


def delta_cell(result: Dict, scale: float = 100.0, digits: int = 1) -> str:
    """``"+5.6 [+4.9, +6.3] ✓"``: mean [95 % interval], ✓ when it survives Holm's correction."""
    mark = "\u00a0✓" if result.get("significant") else ""
    return (f"{signed(scale * result['mean'], digits)}\u00a0[{signed(scale * result['ci_low'], digits)},"
            f"\u00a0{signed(scale * result['ci_high'], digits)}]{mark}")


def delta_table(results: Dict[str, List[Dict]], metrics: Sequence[str], names: Optional[Dict[str, str]] = None):
    """``(header, rows)`` of the paired differences of ``metrics`` (one column each, narrow
    enough for a phone with two metrics)."""
    nm = _names(names)
    if not metrics:
        raise ValueError("metrics is empty")
    cols = [results[m] for m in metrics]
    header = ["vs bilinear"] + [f"Δ {METRIC_NAMES.get(m, m)}" for m in metrics]
    return header, [[nm.get(rs[0]["setting"], rs[0]["setting"])] + [delta_cell(r) for r in rs] for rs in zip(*cols)]


def listing(results: Sequence[Dict], direction: str, names: Optional[Dict[str, str]] = None) -> str:
    """The display names of the results whose verdict is ``direction`` ("higher", "lower",
    "unresolved"), or "none"."""
    if direction not in ("higher", "lower", "unresolved"):
        raise ValueError(f"direction must be 'higher', 'lower' or 'unresolved', got {direction!r}")
    return names_list([r["setting"] for r in results if verdict(r) == direction], names)


def error_ratios(rows: Sequence[Dict], metric: str, family: Sequence[str], baseline: str = "bilinear",
                 alpha: float = 0.05) -> List[Dict]:
    """Remaining error as a ratio to the baseline's: ``(1 - metric(u, s)) / (1 - metric(baseline, s))``.

    Per seed s the ratio r_s; its log is averaged over the seeds with a 95 % t interval, and
    the geometric mean ``ratio = exp(mean log r)`` is reported with ``ci_low``/``ci_high`` (the
    interval's ends exponentiated), ``p`` (t test of log r = 0), ``p_holm`` over the family,
    ``significant``, ``per_seed`` (the r_s) and ``n``. Raises ValueError for a metric of 1
    (no error) in the baseline or fewer than 2 shared seeds.
    """
    val: Dict[str, Dict] = {}
    for r in rows:
        val.setdefault(r["setting"], {})[r["seed"]] = float(r[metric])
    if baseline not in val:
        raise ValueError(f"baseline {baseline!r} not in the rows")
    out = []
    for u in family:
        common = sorted(set(val.get(u, {})) & set(val[baseline]))
        if len(common) < 2:
            raise ValueError(f"{u!r} shares {len(common)} seeds with {baseline!r}; need >= 2")
        per = []
        for k in common:
            eb, eu = 1.0 - val[baseline][k], 1.0 - val[u][k]
            if eb <= 0 or eu <= 0:
                raise ValueError(f"{metric} of {u!r} or {baseline!r} is 1 at seed {k}: no error to compare")
            per.append(eu / eb)
        t = paired_t([math.log(v) for v in per], alpha)
        out.append(dict(setting=u, metric=metric, n=t["n"], per_seed=per, ratio=math.exp(t["mean"]),
                        ci_low=math.exp(t["ci_low"]), ci_high=math.exp(t["ci_high"]), p=t["p"]))
    for r, ph in zip(out, holm([r["p"] for r in out])):
        r["p_holm"], r["significant"] = ph, ph < alpha
    return out


def _ratio(v: float) -> str:
    return f"{v:.2f}" if v >= 0.095 else f"{v:.3f}"


def ratio_table(ratios: Dict[str, List[Dict]], names: Optional[Dict[str, str]] = None):
    """``(header, rows)``: per upsampler, the remaining-error ratio [95 % interval] of each metric."""
    nm = _names(names)
    metrics = list(ratios)
    header = ["upsampler"] + [f"1 − {METRIC_NAMES.get(m, m)}" for m in metrics]
    rows = []
    for rs in zip(*(ratios[m] for m in metrics)):
        rows.append([nm.get(rs[0]["setting"], rs[0]["setting"])]
                    + [f"{_ratio(r['ratio'])}\u00a0[{_ratio(r['ci_low'])},\u00a0{_ratio(r['ci_high'])}]" for r in rs])
    return header, rows


def ceiling(rows: Sequence[Dict], settings: Sequence[str], metric: str = "miou", within: float = 0.005) -> Dict:
    """The upsamplers whose mean ``metric`` is within ``within`` of the best mean.

    Returns ``group`` (settings, best first), ``low``/``high`` (their lowest and highest mean),
    ``best`` (setting), ``means`` ({setting: mean}) and ``remaining`` ({setting: 1 - mean}).
    """
    means = {}
    for u in settings:
        v = [float(r[metric]) for r in rows if r["setting"] == u]
        if not v:
            raise ValueError(f"no rows of {u!r}")
        means[u] = statistics.fmean(v)
    best = max(means, key=means.get)
    group = sorted((u for u in settings if means[best] - means[u] <= within), key=lambda u: -means[u])
    return dict(group=group, best=best, low=min(means[u] for u in group), high=means[best], means=means,
                remaining={u: 1.0 - m for u, m in means.items()})


def ceiling_sentence(c: Dict, baseline: str = "bilinear", reference: str = "sapa-b",
                     names: Optional[Dict[str, str]] = None, paper: Dict[str, float] = PAPER_MIOU) -> str:
    """What the ceiling leaves to test: the group near the best, the baseline, and the paper's
    gate gain (SAPA-G - SAPA-B) against ``reference``'s whole remaining error here."""
    nm = _names(names)
    gate = paper["sapa-g"] - paper["sapa-b"]
    rem = 100 * c["remaining"][reference]
    text = (f"{len(c['group'])} upsamplers ({names_list(c['group'], nm)}) reach "
            f"{100 * c['low']:.1f} to {100 * c['high']:.1f} mIoU, within "
            f"{100 * (c['high'] - c['low']):.1f} points of each other; {nm.get(baseline, baseline)} reaches "
            f"{100 * c['means'][baseline]:.1f}. {nm.get(reference, reference)} leaves {rem:.2f} points of "
            "error in all; ")
    if gate > rem:
        text += (f"the paper's gain of its gate on ADE20K (SAPA-G − SAPA-B, {signed(gate, 2)} points) is larger than "
                 "that, so a gain of that size cannot happen here.")
    else:
        text += f"the paper's gain of its gate on ADE20K ({signed(gate, 2)} points) would still fit in it."
    return text


def control_sentence(direct: Dict, vs_bilinear: Dict) -> str:
    """The control's reading, resting on the direct comparison CARAFE - control (``direct``, a
    :func:`pair_family` or :func:`paired_t` dict with ``p``) and mentioning the control against
    bilinear (``vs_bilinear``, a :func:`paired_differences` result) only as context."""
    lo, hi, p = direct["ci_low"], direct["ci_high"], direct["p"]
    vb = verdict(vs_bilinear)
    ctx = {"higher": "the control itself is higher than bilinear after Holm's correction",
           "lower": "the control itself is lower than bilinear after Holm's correction",
           "unresolved": "whether the control itself beats bilinear is unresolved"}[vb]
    if p < 0.05 and lo > 0:
        return ("CARAFE is higher than its parameter-matched control (the interval of the direct paired "
                "difference excludes zero), so parameters alone do not explain CARAFE's score; " + ctx)
    if p < 0.05 and hi < 0:
        return ("CARAFE is lower than its parameter-matched control, so its content-aware kernels do not even "
                "match a convolution of the same size; " + ctx)
    return ("the direct paired difference CARAFE − control is unresolved, so these seeds cannot tell CARAFE's "
            "content-aware kernels from the parameters they add; " + ctx)


def close_sentence(rows: Sequence[Dict], metric: str, settings: Sequence[str],
                   names: Optional[Dict[str, str]] = None) -> str:
    """Every pair of ``settings`` (Holm over the pairs): resolved pairs, or that none is and the
    largest difference the intervals still allow."""
    from .stats import too_close_to_call

    nm = _names(names)
    tc = too_close_to_call(rows, metric, settings)
    n = len(tc["seeds"])
    if tc["all_unresolved"]:
        widest = max(max(abs(p["ci_low"]), abs(p["ci_high"])) for p in tc["pairs"])
        return (f"no pair is resolved (Holm over the {len(tc['pairs'])} pairs, {plural(n, 'seed')}): these "
                f"{len(settings)} are too close to call on {METRIC_NAMES.get(metric, metric)}; the intervals still "
                f"allow differences of up to {100 * widest:.1f} points")
    text = "resolved pairs: " + "; ".join(
        f"{nm.get(p['a'], p['a'])} − {nm.get(p['b'], p['b'])} {signed(100 * p['mean'])} points (Holm p "
        f"{p['p_holm']:.3f})" for p in tc["resolved"])
    rest = len(tc["pairs"]) - len(tc["resolved"])
    return text + f"; too close to call: the other {plural(rest, 'pair')}"


def paper_agreement(rows: Sequence[Dict], paper: Dict[str, float] = PAPER_MIOU) -> Dict:
    """Pairs of the paper's upsamplers (Holm over all pairs, mIoU): ``pairs``, ``resolved``, ``agree``
    (resolved pairs whose sign matches the paper's order), ``disagree``."""
    from .stats import too_close_to_call

    tc = too_close_to_call(rows, "miou", list(paper))
    agree = [p for p in tc["resolved"] if (p["mean"] > 0) == (paper[p["a"]] > paper[p["b"]])]
    return dict(pairs=tc["pairs"], resolved=tc["resolved"], agree=agree,
                disagree=[p for p in tc["resolved"] if p not in agree])


def late_gains(rows: Sequence[Dict], metric: str = "val_miou") -> Dict[str, float]:
    """Per setting, the mean over its rows of the last validation score minus the one before
    (points), from the ``curve`` column (JSON); NaN where a curve has fewer than two values."""
    out: Dict[str, List[float]] = {}
    for r in rows:
        c = json.loads(r["curve"]) if isinstance(r["curve"], str) else r["curve"]
        v = [x for x in c.get(metric, []) if x is not None]
        out.setdefault(r["setting"], [])
        if len(v) >= 2:
            out[r["setting"]].append(100 * (v[-1] - v[-2]))
    return {u: (statistics.fmean(g) if g else math.nan) for u, g in out.items()}


def late_lr_share(row: Dict, last_epochs: int = 8) -> float:
    """The largest learning rate of a run's last ``last_epochs`` epochs as a share of its peak,
    from the ``curve`` column (JSON with ``epoch`` and ``lr`` lists)."""
    c = json.loads(row["curve"]) if isinstance(row["curve"], str) else row["curve"]
    if not c.get("lr") or len(c["lr"]) != len(c.get("epoch", [])):
        raise ValueError("the curve has no lr per epoch")
    end = max(c["epoch"])
    late = [lr for e, lr in zip(c["epoch"], c["lr"]) if e > end - last_epochs]
    return max(late) / max(c["lr"])


def interval_widths(rows: Sequence[Dict], a: str, b: str, metric: str = "miou") -> Dict:
    """Half-widths (points) of the 95 % interval of mean(a) - mean(b): paired (t over the per-seed
    differences) and unpaired (Welch), over the seeds both have; ``ratio`` = paired / Welch and
    ``correlation`` of the two settings' scores over the seeds."""
    va = {r["seed"]: float(r[metric]) for r in rows if r["setting"] == a}
    vb = {r["seed"]: float(r[metric]) for r in rows if r["setting"] == b}
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        raise ValueError(f"{a!r} and {b!r} share {len(seeds)} seeds; need >= 2")
    x, y = [va[k] for k in seeds], [vb[k] for k in seeds]
    n = len(seeds)
    paired = paired_t([p - q for p, q in zip(x, y)])
    h_paired = 100 * (paired["ci_high"] - paired["mean"])
    s2a, s2b = statistics.variance(x) / n, statistics.variance(y) / n
    se = math.sqrt(s2a + s2b)
    df = (s2a + s2b) ** 2 / ((s2a ** 2 + s2b ** 2) / (n - 1)) if s2a + s2b > 0 else n - 1
    h_welch = 100 * t_ppf(0.975, df) * se
    try:
        corr = statistics.correlation(x, y)
    except statistics.StatisticsError:
        corr = math.nan
    return dict(n=n, paired=h_paired, welch=h_welch, ratio=h_paired / h_welch if h_welch > 0 else math.nan,
                correlation=corr)


# --------------------------------------------------------------------------------------
# the preface's claims
# --------------------------------------------------------------------------------------
def _vs(rows, a, others, metric):
    """a against each of others (others - a), Holm over them: list of pair_family dicts."""
    return pair_family(rows, [(o, a) for o in others], metric)


def claims_main(rows: Optional[Sequence[Dict]], family: Sequence[str], baseline: str = "bilinear",
                names: Optional[Dict[str, str]] = None, command: str = "", status: str = "") -> List[str]:
    """The preface's verdicts from the main comparison (Markdown bullets).

    ``family``: every upsampler of the comparison (bilinear included). Needs 2 complete seeds;
    with fewer, one bullet says why the claims cannot be judged yet (``status``: the loader's
    sentence, shown when ``rows`` is None).
    """
    nm = _names(names)
    missing = rows is None
    seeds, rows = complete_rows(rows, family)
    n = len(seeds)
    if n < 2:
        if missing and status:
            return [f"* *SAPA is higher than bilinear upsampling, most at boundaries*: cannot be judged yet. "
                    f"{status}"]
        have = "no file" if missing else plural(n, "complete seed")
        return [f"* *SAPA is higher than bilinear upsampling, most at boundaries*: cannot be judged yet "
                f"(`main.csv`: {have}; a paired interval needs two); `{command}` fills it."]
    compared = [u for u in family if u != baseline]
    res = paired_results(rows, ("miou", "boundary_iou"), compared, baseline)
    by = {m: {r["setting"]: r for r in rs} for m, rs in res.items()}
    claims = []
    for m in ("miou", "boundary_iou"):
        for u in SIMILARITY:
            r = by[m][u]
            v = verdict(r)
            shared = [p for p in PLAIN if verdict(by[m][p]) == "higher"]
            if v == "higher" and not shared:
                word = ("**supported**: it survives Holm's correction, and none of "
                        f"{names_list(PLAIN, nm)} is higher than bilinear too")
            elif v == "higher":
                word = ("supported against bilinear, **but not specific to SAPA**: "
                        f"{names_list(shared, nm)} {'is' if len(shared) == 1 else 'are'} higher than bilinear too, "
                        "so bilinear is the wrong yardstick for the mechanism")
            elif v == "lower":
                word = "**contradicted**: lower than bilinear, surviving Holm's correction"
            else:
                word = f"**unresolved** with {plural(n, 'seed')} (Holm-adjusted p ≥ 0.05)"
            claims.append(f"* *{nm[u]} is higher than bilinear upsampling in {METRIC_NAMES[m]}* (chapter 6): "
                          f"{describe(r)}; {word}.")
    guided = [g for g in GUIDED + ("sapa-i",) if g in family]
    for m in ("miou", "boundary_iou"):
        # every guided upsampler against the three plain ones: Holm over all these pairs
        pairs = [(g, p) for g in list(SIMILARITY) + guided for p in PLAIN]
        fam = {(d["a"], d["b"]): d for d in pair_family(rows, pairs, m)}
        beat_all = [g for g in list(SIMILARITY) + guided if all(verdict(fam[(g, p)]) == "higher" for p in PLAIN)]
        sim = [u for u in SIMILARITY if u in beat_all]
        others = [g for g in guided if g in beat_all]
        text = (f"* *SAPA is higher than the plain learned upsamplers ({names_list(PLAIN, nm)}) in {METRIC_NAMES[m]}*, "
                f"a fairer yardstick than bilinear (paired, Holm over the {len(pairs)} comparisons of every guided "
                f"upsampler with the three, {plural(n, 'seed')}): higher than all three: "
                f"{names_list(sim, nm)}")
        if sim and others:
            text += (f"; **but not specific to similarity**: {names_list(others, nm)} "
                     f"{'is' if len(others) == 1 else 'are'} higher than all three too, so a gain over the plain "
                     "upsamplers is evidence for using the encoder guide, not for SAPA's similarity.")
        elif sim:
            text += "; no other guided upsampler is higher than all three."
        else:
            text += f" (other guided upsamplers that are: {names_list(others, nm)})."
        claims.append(text)
    others = [g for g in GUIDED if g in family]
    for m in ("miou", "boundary_iou"):
        pairs = [(u, g) for u in SIMILARITY for g in others]
        fam = pair_family(rows, pairs, m)
        parts, not_below = [], set(others)
        for u in SIMILARITY:
            mine = [d for d in fam if d["a"] == u]
            up = [d["b"] for d in mine if d["significant"] and d["mean"] > 0]
            down = [d["b"] for d in mine if d["significant"] and d["mean"] < 0]
            rest = [d["b"] for d in mine if not d["significant"]]
            not_below &= set(down + rest)
            parts.append(f"{nm[u]} is higher than {names_list(up, nm)}, lower than {names_list(down, nm)}, and "
                         f"unresolved against {names_list(rest, nm)}")
        tail = [g for g in others if g in not_below]
        conclusion = (f"this task shows no advantage of similarity over {names_list(tail, nm)}" if tail else
                      "both are higher than every other guided upsampler, an advantage specific to similarity")
        claims.append(f"* *What is specific to similarity* ({METRIC_NAMES[m]}: SAPA-B and SAPA-G against the other "
                      f"guided upsamplers, {names_list(others, nm)}, paired, Holm over the {len(pairs)} "
                      f"comparisons): " + "; ".join(parts) + f"; so {conclusion}.")
    for a, b, what in (("sapa-g", "carafe", "SAPA-G is higher than CARAFE in mIoU (Table 2)"),
                       ("sapa-g", "sapa-b", "the gate helps: SAPA-G is higher than SAPA-B in mIoU (Table 6)")):
        r = pair_family(rows, [(a, b)], "miou")[0]
        v = {"higher": "**supported**", "lower": "**contradicted**"}.get(verdict(r), f"**unresolved** with "
                                                                          f"{plural(n, 'seed')}")
        if b == "carafe" and verdict(r) == "higher":
            shared = [p for p in PLAIN if verdict(pair_family(rows, [(p, b)], "miou")[0]) == "higher"]
            if shared:
                v = (f"supported, **but not specific to SAPA**: {names_list(shared, nm)} "
                     f"{'is' if len(shared) == 1 else 'are'} higher than {nm[b]} too (paired, unadjusted)")
        claims.append(f"* *{what}*: {describe(r, adjusted=False)} (one planned comparison); {v}.")
    return claims


def claim_mechanism(rows: Optional[Sequence[Dict]], upsamplers: Sequence[str], sigmas: Sequence[float],
                    seeds: Sequence[int], command: str, names: Optional[Dict[str, str]] = None,
                    status: str = "") -> str:
    """The preface's verdict from chapter 7's controlled problem (rows of ``mechanism.csv``;
    ``status``: the loader's sentence, shown when ``rows`` is None)."""
    nm = _names(names)
    if rows is None and status:
        return f"* *SAPA keeps regions smooth and boundaries sharp* (chapter 7): cannot be judged yet. {status}"
    rows = list(rows or [])
    cells = {(r["upsampler"], float(r["sigma"]), r["seed"]) for r in rows}
    mseeds = [k for k in seeds if all((u, float(s), k) in cells for u in upsamplers for s in sigmas)]
    if len(mseeds) < 2:
        return (f"* *SAPA keeps regions smooth and boundaries sharp* (chapter 7): cannot be judged yet "
                f"(`mechanism.csv` has {plural(len(mseeds), 'complete seed')}); `{command}` completes it."
                + (f" {status}" if status else ""))
    fam = [u for u in upsamplers if u != "bilinear"]
    both_all = None
    for s in sigmas:
        rs = [r for r in rows if float(r["sigma"]) == float(s) and r["seed"] in mseeds]
        re = {r["setting"]: r for r in paired_differences(rs, "region_error", key="upsampler", settings=fam)}
        ba = {r["setting"]: r for r in paired_differences(rs, "boundary_acc", key="upsampler", settings=fam)}
        both = {u for u in fam if verdict(re[u]) == "lower" and verdict(ba[u]) == "higher"}
        both_all = both if both_all is None else both_all & both
    sapa_ok = sorted(u for u in both_all if u.startswith("sapa"))
    others = sorted(u for u in both_all if not u.startswith("sapa"))
    return (f"* *SAPA keeps regions smooth and boundaries sharp* (Fig. 2, chapter 7's controlled problem, "
            f"{plural(len(mseeds), 'seed')}): lower region error **and** higher boundary accuracy than bilinear at "
            f"every noise level, each surviving Holm's correction: {names_list(sapa_ok, nm, 'no SAPA variant')}; "
            f"other upsamplers that do too: {names_list(others, nm)}.")


def claim_table6(rows: Optional[Sequence[Dict]], command: str, status: str = "") -> str:
    """The preface's verdict on Table 6's normalisation group (rows of ``table6.csv``; ``status``:
    the loader's sentence, shown when ``rows`` is None)."""
    if rows is None and status:
        return f"* *$h = e^x$ is the best normalisation* (Table 6, chapter 8): cannot be judged yet. {status}"
    norms = [r for r in (rows or []) if r.get("group") == "normalization"]
    settings = ["none", "exp", "relu", "sigmoid", "softplus"]
    nseeds, rs = complete_rows(norms, settings)
    if len(nseeds) < 2:
        have = "no file" if rows is None else plural(len(nseeds), "complete seed")
        return (f"* *$h = e^x$ is the best normalisation* (Table 6, chapter 8): cannot be judged yet "
                f"(`table6.csv`: {have}); `{command}` fills it.")
    res = paired_differences(rs, "miou", baseline="exp", settings=["none", "relu", "sigmoid", "softplus"])
    better = [r["setting"] for r in res if verdict(r) == "higher"]
    worse = [r["setting"] for r in res if verdict(r) == "lower"]
    if better:
        word = f"**contradicted**: {', '.join(better)} {'is' if len(better) == 1 else 'are'} higher"
    elif len(worse) == len(res):
        word = "**supported**: every other normalisation is lower, each surviving Holm's correction"
    else:
        word = (f"**partly resolved**: lower than $e^x$ after Holm's correction: {', '.join(worse) or 'none'}; "
                f"the others are unresolved with {plural(len(nseeds), 'seed')}")
    return f"* *$h = e^x$ is the best normalisation* (Table 6, chapter 8): {word}."


def claim_segformer(rows: Optional[Sequence[Dict]], command: str = "python -m sapa.lab.hf --train") -> str:
    """The preface's verdict from chapter 9 (rows of ``segformer.csv``, :func:`sapa.lab.hf.load_results`):
    SAPA-B - bilinear in a real (tiny) SegFormer, paired over seeds, one planned comparison."""
    rs = [r for r in (rows or []) if r.get("upsampler") in ("bilinear", "sapa-b")]
    seeds = complete_seeds(rs, ["bilinear", "sapa-b"], key="upsampler")
    if len(seeds) < 2:
        return (f"* *SAPA-B is higher than bilinear in a real SegFormer* (chapter 9): cannot be judged yet "
                f"(`segformer.csv`: {'no file' if rows is None else plural(len(seeds), 'complete seed')}); "
                f"`{command}` fills it.")
    rs = [r for r in rs if r["seed"] in seeds]
    parts, verdicts = [], []
    for m in ("miou", "boundary_iou"):
        r = paired_differences(rs, m, baseline="bilinear", key="upsampler", settings=["sapa-b"])[0]
        verdicts.append(verdict(r))
        parts.append(f"{METRIC_NAMES[m]} {describe(r, adjusted=False, digits=2)}")
    word = ("**supported**" if all(v == "higher" for v in verdicts) else
            "**contradicted**" if "lower" in verdicts else f"**unresolved** with {plural(len(seeds), 'seed')}")
    return (f"* *SAPA-B is higher than bilinear in a real SegFormer* (chapter 9, a tiny SegFormer trained from "
            f"scratch, paired, one planned comparison): " + "; ".join(parts) + f"; {word}.")


# --------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------
def _check_labels(labels, name="labels"):
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.dtype.is_floating_point:
        seen = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name} must be a (B, H, W) integer tensor, got {seen}")


def labels_at(labels: torch.Tensor, size: Tuple[int, int], num_classes: int) -> torch.Tensor:
    """(B, H, W) labels -> (B, h, w) labels at a coarser ``size`` (H/h = W/w an integer) by block
    majority (ties to the lower class), as :func:`sapa.lab.mechanism.kernel_maps` does for 2 x 2."""
    _check_labels(labels)
    H, W = labels.shape[-2:]
    h, w = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return labels
    if H % h or W % w or H // h != W // w:
        raise ValueError(f"size {size} must divide the labels' {(H, W)} by one integer factor")
    oh = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).double()
    return F.avg_pool2d(oh, H // h).argmax(1)


def label_boundary(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: pixels whose 3 x 3 neighbourhood (inside the image) holds another label.

    The union over classes of :func:`sapa.lab.metrics.boundary_band` with dilation 1 (the
    image frame is not a boundary)."""
    from .metrics import boundary_band

    _check_labels(labels)
    out = torch.zeros(labels.shape, dtype=torch.bool)
    for c in torch.unique(labels).tolist():
        out |= boundary_band(labels == c, 1)
    return out


def same_class_indicator(labels_out: torch.Tensor, labels_in: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """(B, K*K, H', W') float64: 1 where window entry p (p = dy*K + dx, the zero-padded K x K
    window of the low-res map around the output pixel's centre (floor(i H / H'), floor(j W / W')))
    holds a low-res point of the output pixel's own class, 0 otherwise and outside the image."""
    _check_labels(labels_out, "labels_out")
    _check_labels(labels_in, "labels_in")
    K = int(kernel_size)
    if K < 1 or K % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size!r}")
    if labels_out.shape[0] != labels_in.shape[0]:
        raise ValueError(f"batch sizes differ: labels_out {tuple(labels_out.shape)}, labels_in {tuple(labels_in.shape)}")
    B, H, W = labels_in.shape
    Hq, Wq = labels_out.shape[-2:]
    R = K // 2
    pad = F.pad(labels_in.double()[:, None], (R, R, R, R), value=-1.0)[:, 0]  # (B, H+2R, W+2R)
    rows = torch.arange(Hq) * H // Hq
    cols = torch.arange(Wq) * W // Wq
    out = torch.empty(B, K * K, Hq, Wq, dtype=torch.float64)
    lab = labels_out.double()
    for dy in range(K):
        for dx in range(K):
            neigh = pad[:, rows[:, None] + dy, cols[None, :] + dx]
            out[:, dy * K + dx] = (neigh == lab).double()
    return out


def same_class_mass(kernels: torch.Tensor, labels_out: torch.Tensor, labels_in: torch.Tensor) -> torch.Tensor:
    """(B, H', W'): the kernel weight on low-res points of each output pixel's own class.

    Args:
        kernels: (B, K*K, H', W') per-pixel weights over the K x K window (entry p = dy*K + dx).
        labels_out: (B, H', W') labels at the output resolution.
        labels_in: (B, H, W) labels at the input (low) resolution.

    A kernel that selects perfectly has mass 1; SAPA's softmax then spreads it *evenly* over the
    own-class points, so its largest weight is 1 / (their number), far below 1.
    """
    if not isinstance(kernels, torch.Tensor) or kernels.dim() != 4:
        raise ValueError(f"kernels must be a (B, K*K, H', W') tensor, got "
                         f"{tuple(kernels.shape) if isinstance(kernels, torch.Tensor) else type(kernels).__name__}")
    K = int(round(math.sqrt(kernels.shape[1])))
    if K * K != kernels.shape[1] or kernels.shape[-2:] != labels_out.shape[-2:] or kernels.shape[0] != labels_out.shape[0]:
        raise ValueError(f"kernels {tuple(kernels.shape)} do not match labels_out {tuple(labels_out.shape)} "
                         "(need K*K channels and the same batch and size)")
    return (kernels.double() * same_class_indicator(labels_out, labels_in, K)).sum(1)


def _per_image(v: torch.Tensor, sel: torch.Tensor) -> torch.Tensor:
    s = (v * sel).flatten(1).sum(1)
    n = sel.flatten(1).sum(1)
    return torch.where(n > 0, s / n.clamp_min(1), torch.full_like(s, float("nan")))


def kernel_statistics(kernels: torch.Tensor, labels: torch.Tensor, num_classes: int,
                      input_size: Optional[Tuple[int, int]] = None) -> Dict[str, torch.Tensor]:
    """Per-image summaries of kernels at boundary and interior pixels.

    Args:
        kernels: (B, K*K, H', W') weights of an upsampling step.
        labels: (B, H, W) full-resolution labels (taken to H' x W' and to the input size by
            block majority, :func:`labels_at`).
        num_classes: number of classes.
        input_size: the step's input (low) resolution, default (H'/2, W'/2).

    Returns dict of (B,) float64 tensors (mean over the image's pixels of the kind named; NaN
    where an image has none): ``max_boundary``, ``max_interior`` (largest weight: how
    concentrated), ``points_boundary``, ``points_interior`` (effective number of points,
    exp(entropy): 25 = uniform for K = 5), ``mass_boundary`` (same-class mass: how selective),
    ``uniform_boundary`` (the same for the uniform kernel at the same pixels: what averaging
    gets for free), ``contrast_boundary`` (weight per own-class point / weight per other-class
    point, geometric mean over boundary pixels whose window holds both), and
    ``boundary_share`` (fraction of boundary pixels).
    """
    if not isinstance(kernels, torch.Tensor) or kernels.dim() != 4:
        raise ValueError("kernels must be a (B, K*K, H', W') tensor")
    _check_labels(labels)
    if labels.shape[0] != kernels.shape[0]:
        raise ValueError(f"kernels {tuple(kernels.shape)} and labels {tuple(labels.shape)} have different batch sizes")
    K = int(round(math.sqrt(kernels.shape[1])))
    size = tuple(kernels.shape[-2:])
    insize = tuple(input_size) if input_size is not None else (size[0] // 2, size[1] // 2)
    hi = labels_at(labels, size, num_classes)
    lo = labels_at(labels, insize, num_classes)
    w = kernels.double()
    bnd = label_boundary(hi)
    inner = ~bnd
    same = same_class_indicator(hi, lo, K)
    inimg = same_class_indicator(torch.zeros_like(hi), torch.zeros_like(lo), K)  # 1 inside the image
    other = inimg - same
    n_s, n_o = same.sum(1), other.sum(1)
    mass = (w * same).sum(1)
    neff = torch.exp(-(w * w.clamp_min(1e-300).log()).sum(1))
    maxw = w.max(1).values
    both = bnd & (n_s > 0) & (n_o > 0)
    logc = (((w * same).sum(1) / n_s.clamp_min(1)).clamp_min(1e-300).log()
            - ((w * other).sum(1) / n_o.clamp_min(1)).clamp_min(1e-300).log())
    return dict(max_boundary=_per_image(maxw, bnd), max_interior=_per_image(maxw, inner),
                points_boundary=_per_image(neff, bnd), points_interior=_per_image(neff, inner),
                mass_boundary=_per_image(mass, bnd), uniform_boundary=_per_image(n_s / K ** 2, bnd),
                contrast_boundary=_per_image(torch.where(both, logc, torch.zeros_like(logc)), both).exp(),
                boundary_share=bnd.double().flatten(1).mean(1))


def mass_sentence(stats: Dict[str, Dict[str, torch.Tensor]], names: Optional[Dict[str, str]] = None) -> str:
    """Which upsampler's kernels put the most same-class mass on boundary pixels, paired over the
    images (t interval of the per-image difference to the runner-up); says "tied" when that
    interval includes zero. ``stats``: {upsampler: :func:`kernel_statistics` output}."""
    nm = _names(names)
    if len(stats) < 2:
        raise ValueError("need the statistics of at least two upsamplers")
    mean = {u: float(torch.nanmean(s["mass_boundary"])) for u, s in stats.items()}
    order = sorted(mean, key=lambda u: -mean[u])
    a, b = order[:2]
    d = (stats[a]["mass_boundary"] - stats[b]["mass_boundary"])
    d = [float(v) for v in d if not math.isnan(float(v))]
    t = paired_t(d)
    diff = f"{signed(t['mean'], 3)} [{signed(t['ci_low'], 3)}, {signed(t['ci_high'], 3)}]"
    if t["ci_low"] > 0:
        return (f"highest: {nm.get(a, a)}, above {nm.get(b, b)} by {diff} (95 % interval over the "
                f"{t['n']} images, paired)")
    return (f"{nm.get(a, a)} and {nm.get(b, b)} are tied at the top (difference {diff}, 95 % interval over the "
            f"{t['n']} images, paired, includes zero)")


def _module_kernels(up, x, y):
    """The kernels (B, K*K, H', W') an upsampler module applies, for the kinds
    :func:`apply_kernels` handles (SAPA's window variants, CARAFE, FADE), else None."""
    from sapa.upsamplers import CARAFE, FADE, SAPAUpsampler

    if isinstance(up, SAPAUpsampler):
        return up.sapa.kernels(x, y)
    if isinstance(up, CARAFE):
        return up.kernels(x)
    if isinstance(up, FADE):
        return up.kernels(x, y)
    return None


def apply_kernels(up, x: torch.Tensor, y: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """What upsampler module ``up`` outputs for (x (B, C, H, W), y (B, C_y, H', W')) when its kernels
    are replaced by ``kernels`` (B, K*K, H', W'): the reassembly of x for SAPA's window variants
    and CARAFE; FADE keeps its gate, ``g * y + (1 - g) * reassembly``. With the module's own
    kernels this is the module's output (tested). Raises TypeError for other upsamplers."""
    from sapa.upsamplers import CARAFE, FADE, SAPAUpsampler
    from sapa.upsamplers.base import reassemble
    from sapa.windows import nearest_upsample_to

    if not isinstance(up, (SAPAUpsampler, CARAFE, FADE)):
        raise TypeError(f"apply_kernels handles SAPA's window variants, CARAFE and FADE, got {type(up).__name__}")
    K = int(round(math.sqrt(kernels.shape[1])))
    if kernels.dim() != 4 or K * K != kernels.shape[1] or kernels.shape[-2:] != y.shape[-2:]:
        raise ValueError(f"kernels must be (B, K*K, H', W') with the guide's size {tuple(y.shape[-2:])}, "
                         f"got {tuple(kernels.shape)}")
    out = reassemble(x, kernels.to(x.dtype), K)
    if isinstance(up, FADE):
        g = torch.sigmoid(nearest_upsample_to(up.gate(x), y.shape[-2:]))
        out = g * y + (1 - g) * out
    return out


def uniform_kernel_ablation(model, images: torch.Tensor, masks: torch.Tensor, num_classes: int,
                            steps: Optional[Sequence[int]] = None) -> Dict:
    """A trained model evaluated with the kernels of some upsampling steps replaced by the
    uniform 1 / K^2 average (eval only: it measures how much the trained model relies on its
    kernels, not what a model trained with a box kernel would reach).

    Args:
        model: a :class:`sapa.lab.models.Segmenter` whose upsamplers are SAPA window variants,
            CARAFE or FADE (FADE keeps its gate).
        images: (B, 3, H, W); masks: (B, H, W) labels.
        num_classes: classes of the masks.
        steps: indices into ``model.upsamplers`` to ablate (default: all).

    Returns dict ``trained``, ``uniform``: per-image mIoU (B,) float64 tensors, and ``diff``:
    :func:`sapa.lab.stats.paired_t` of uniform - trained over the images (needs B >= 2).
    """
    from .metrics import mean_iou

    if images.dim() != 4 or masks.dim() != 3 or images.shape[0] != masks.shape[0]:
        raise ValueError(f"images must be (B, 3, H, W) and masks (B, H, W), got {tuple(images.shape)}, "
                         f"{tuple(masks.shape)}")
    ups = list(model.upsamplers)
    steps = list(range(len(ups))) if steps is None else list(steps)
    if any(not (-len(ups) <= i < len(ups)) for i in steps):
        raise ValueError(f"steps {steps} out of range for {len(ups)} upsampling steps")
    handles = []

    def hook(module, args, output):
        x, y = args[0], args[1]
        w = _module_kernels(module, x, y)
        return apply_kernels(module, x, y, torch.full_like(w, 1.0 / w.shape[1]))

    def per_image(pred):
        return torch.tensor([mean_iou(p, m, num_classes) for p, m in zip(pred, masks)], dtype=torch.float64)

    with torch.no_grad():
        trained = per_image(model(images).argmax(1))
        try:
            for i in steps:
                if _module_kernels_kind(ups[i]) is None:
                    raise TypeError(f"step {i} ({type(ups[i]).__name__}) has no window kernels to replace")
                handles.append(ups[i].register_forward_hook(hook))
            uniform = per_image(model(images).argmax(1))
        finally:
            for h in handles:
                h.remove()
    return dict(trained=trained, uniform=uniform, diff=paired_t((uniform - trained).tolist()))


def _module_kernels_kind(up):
    from sapa.upsamplers import CARAFE, FADE, SAPAUpsampler

    return type(up).__name__ if isinstance(up, (SAPAUpsampler, CARAFE, FADE)) else None


def feature_pc1(feat: torch.Tensor) -> torch.Tensor:
    """(C, H, W) feature -> (H, W): its first principal component over the pixels, scaled by its
    largest absolute value into [-1, 1] (the sign is the SVD's, arbitrary)."""
    if not isinstance(feat, torch.Tensor) or feat.dim() != 3:
        raise ValueError(f"feat must be a (C, H, W) tensor, got "
                         f"{tuple(feat.shape) if isinstance(feat, torch.Tensor) else type(feat).__name__}")
    f = feat.detach().flatten(1).T.double()
    f = f - f.mean(0)
    v = torch.linalg.svd(f, full_matrices=False).Vh[0]
    p = (f @ v).view(feat.shape[1:])
    return (p / p.abs().max().clamp_min(1e-12)).float()


def spread(values: torch.Tensor, digits: int = 2) -> str:
    """``"0.75 ± 0.05"``: mean ± sample sd of a per-image statistic (B,), NaNs left out."""
    t = values[~torch.isnan(values)].double()
    if t.numel() == 0:
        raise ValueError("no finite values")
    sd = float(t.std()) if t.numel() > 1 else 0.0
    return f"{float(t.mean()):.{digits}f}\u00a0±\u00a0{signed(sd, digits, sign=False)}"


def interval_cell(t: Dict, scale: float = 100.0) -> str:
    """``"-1.2 [-2.0, -0.5]"``: a :func:`sapa.lab.stats.paired_t` mean and 95 % interval x scale."""
    d = decimals(scale * t["mean"], 1)
    return (f"{signed(scale * t['mean'], d)}\u00a0[{signed(scale * t['ci_low'], d)},"
            f"\u00a0{signed(scale * t['ci_high'], d)}]")


def stored_model(upsampler: str, seed: int = 0):
    """The exported model of the main sweep's run (``models/main_<upsampler>_s<seed>``, weights
    and config beside each other), rebuilt by :func:`sapa.lab.results.load_model`; None when it
    is not stored (or cannot be fetched)."""
    from .results import load_model, stored_file

    name = f"models/main_{upsampler.replace('+', '-')}_s{seed}"
    try:
        stored_file(name + ".json")  # the config beside the weights
        return load_model(stored_file(name + ".safetensors"))
    except FileNotFoundError:
        return None


CONTROL_KEYS = ("carafe_params", "ctrl_params", "carafe_ratio", "carafe_vs_bil_miou", "ctrl_vs_bil_miou",
                "carafe_vs_ctrl_miou", "carafe_vs_bil_boundary_iou", "ctrl_vs_bil_boundary_iou",
                "carafe_vs_ctrl_boundary_iou", "ctrl_vs_bil_fg_boundary_iou", "ctrl_phrase")


def control_texts(rows: Sequence[Dict], results: Dict[str, List[Dict]], control: str = "bilinear+conv",
                  model: str = "carafe") -> Dict[str, str]:
    """Every text chapter 6 shows about the parameter-matched control, keyed by glue name
    (:data:`CONTROL_KEYS`; "n/a" where the rows cannot give it).

    ``rows``: the complete-seed rows; ``results``: :func:`paired_results` for "miou",
    "boundary_iou" and "fg_boundary_iou" (empty with fewer than 2 seeds). The reading
    (``ctrl_phrase``) rests on the direct paired difference CARAFE - control
    (:func:`control_sentence`)."""
    out = {k: "n/a" for k in CONTROL_KEYS}
    first = {}
    for r in rows:
        if r["setting"] in (model, control) and r["setting"] not in first:
            first[r["setting"]] = r
    if len(first) == 2:
        rest = first[model]["params"] - first[model]["upsampler_params"]
        out["carafe_params"] = f"{first[model]['upsampler_params']:,}"
        out["ctrl_params"] = f"{first[control]['upsampler_params']:,}"
        out["carafe_ratio"] = f"{first[model]['upsampler_params'] / rest:.1f}"
    if results:
        by = {m: {r["setting"]: r for r in rs} for m, rs in results.items()}
        direct = {m: pair_family(rows, [(model, control)], m)[0] for m in ("miou", "boundary_iou")}
        for m in ("miou", "boundary_iou"):
            out[f"carafe_vs_bil_{m}"] = describe(by[m][model])
            out[f"ctrl_vs_bil_{m}"] = describe(by[m][control])
            out[f"carafe_vs_ctrl_{m}"] = describe(direct[m], adjusted=False)
        if "fg_boundary_iou" in by:
            out["ctrl_vs_bil_fg_boundary_iou"] = describe(by["fg_boundary_iou"][control])
        out["ctrl_phrase"] = control_sentence(direct["miou"], by["miou"][control])
    return out


KERNEL_KEYS = ("km_n", "km_sapab_max", "km_sapab_max_in", "km_fade_max", "km_fade_points", "km_sapab_points",
               "km_sapab_mass", "km_fade_mass", "km_uniform", "km_sapab_contrast", "km_fade_contrast",
               "mass_order")


def _median(t: torch.Tensor) -> float:
    t = t[~torch.isnan(t)]
    return float(t.median()) if t.numel() else math.nan


def kernel_texts(stats: Dict[str, Dict[str, torch.Tensor]], names: Optional[Dict[str, str]] = None):
    """``(table, texts)`` of chapter 6's kernel statistics: ``table`` = (header, rows) with, per
    upsampler, the max weight, effective points, same-class mass and the averaging kernel's
    same-class mass on boundary pixels (mean ± sd over images), or None without statistics;
    ``texts`` = {glue name: text} for every key of :data:`KERNEL_KEYS` ("n/a ..." where missing).
    ``stats``: {upsampler: :func:`kernel_statistics` output}."""
    nm = _names(names)
    texts = {k: "n/a (no stored model with kernels)" for k in KERNEL_KEYS}
    if not stats:
        return None, texts
    header = ["upsampler", "max weight", "eff. points", "same-class mass", "averaging kernel"]
    rows = [[nm.get(u, u), spread(s["max_boundary"]), spread(s["points_boundary"], 1), spread(s["mass_boundary"]),
             spread(s["uniform_boundary"])] for u, s in stats.items()]
    texts["km_n"] = str(len(next(iter(stats.values()))["mass_boundary"]))
    for u, tag in (("sapa-b", "sapab"), ("fade", "fade")):
        if u not in stats:
            continue
        s = stats[u]
        texts[f"km_{tag}_max"] = spread(s["max_boundary"])
        texts[f"km_{tag}_points"] = spread(s["points_boundary"], 1)
        texts[f"km_{tag}_mass"] = spread(s["mass_boundary"])
        texts[f"km_{tag}_contrast"] = f"{_median(s['contrast_boundary']):.0f}"
        if u == "sapa-b":
            texts["km_sapab_max_in"] = spread(s["max_interior"])
            texts["km_uniform"] = spread(s["uniform_boundary"])
    if len(stats) >= 2:
        texts["mass_order"] = mass_sentence(stats, nm)
    return (header, rows), texts


ABLATION_KEYS = ("abl_sapab_all", "abl_sapab_last", "abl_fade_all")


def ablation_texts(ablations: Dict[str, Dict[str, Dict]], names: Optional[Dict[str, str]] = None):
    """``(table, texts)`` of chapter 6's uniform-kernel ablation: ``ablations`` = {upsampler:
    {"all": ..., "last": ...}} of :func:`uniform_kernel_ablation` outputs; ``table`` =
    (header, rows) (mean per-image mIoU of the trained model, and its change with uniform kernels
    at every step and at the last step, points, 95 % interval over images) or None; ``texts`` =
    {glue name: text} for :data:`ABLATION_KEYS`."""
    nm = _names(names)
    texts = {k: "n/a (no stored model with kernels)" for k in ABLATION_KEYS}
    if not ablations:
        return None, texts
    header = ["upsampler", "mIoU", "Δ all steps", "Δ last step"]
    rows = [[nm.get(u, u), f"{100 * float(a['all']['trained'].mean()):.1f}", interval_cell(a["all"]["diff"]),
             interval_cell(a["last"]["diff"])] for u, a in ablations.items()]
    if "sapa-b" in ablations:
        texts["abl_sapab_all"] = interval_cell(ablations["sapa-b"]["all"]["diff"])
        texts["abl_sapab_last"] = interval_cell(ablations["sapa-b"]["last"]["diff"])
    if "fade" in ablations:
        texts["abl_fade_all"] = interval_cell(ablations["fade"]["all"]["diff"])
    return (header, rows), texts
