"""Paired statistics for sweeps: differences to a baseline, t intervals, Holm's correction.

A sweep trains every upsampler with the same seeds, and a seed fixes the initialisation
*and* the data order (see :func:`sapa.lab.train.train`), so the runs of two upsamplers with
one seed are a pair. The question "is upsampler A better than bilinear?" is then
answered by the per-seed differences ``d_s = metric(A, s) - metric(bilinear, s)``:

* mean difference, its standard error ``sd / sqrt(n)``, a two-sided Student-t confidence
  interval (``1 - alpha``, default 95 %) and the paired t-test p-value;
* Holm's step-down correction of the p-values over every comparison of the family (all
  upsamplers against the baseline), and Bonferroni-widened intervals
  (``1 - alpha / m``) that hold simultaneously for the m comparisons; a difference
  *survives the correction* when its Holm-adjusted p-value is below ``alpha``.

Nothing here needs SciPy: the t distribution's CDF is the regularised incomplete beta
function (Lentz's continued fraction), its quantile a bisection of the CDF; both agree with
the tables to 1e-10.

Reading a sweep that is still running: :func:`complete_seeds` gives the seeds that every
setting of a comparison has (only those form pairs), :func:`verdict` names the direction of a
difference that survives Holm's correction, :func:`describe_difference` writes one
difference as text (mean, interval, Holm-adjusted p, n), and :func:`too_close_to_call` lists
the settings of a group whose pairwise differences no test of the group resolves.

Usage::

    from sapa.lab.sweep import read_csv
    from sapa.lab.stats import paired_differences
    rows = read_csv("book/results/main.csv")
    for r in paired_differences(rows, "boundary_iou", baseline="bilinear"):
        print(r["setting"], r["mean"], r["ci_low"], r["ci_high"], r["p_holm"], r["significant"])
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["t_cdf", "t_ppf", "paired_t", "holm", "paired_differences", "complete_seeds", "verdict",
           "describe_difference", "too_close_to_call", "plural", "join_names", "decimals", "signed"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) for 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` > 0 degrees of freedom at ``t``."""
    if not df > 0:
        raise ValueError(f"df must be positive, got {df!r}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile of Student's t distribution: the t with ``t_cdf(t, df) == q``, 0 < q < 1."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q!r}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def paired_t(diffs: Sequence[float], alpha: float = 0.05) -> Dict[str, float]:
    """Paired t statistics of per-pair differences (n >= 2).

    Returns ``n``, ``mean``, ``sd`` (sample), ``se``, ``t``, ``p`` (two-sided), and the
    ``1 - alpha`` interval ``ci_low``, ``ci_high``. With zero spread, ``t`` is +-inf (p = 0)
    for a non-zero mean and NaN (p = 1) for a zero mean.
    """
    d = [float(v) for v in diffs]
    if len(d) < 2:
        raise ValueError(f"need at least 2 paired differences, got {len(d)}")
    if any(math.isnan(v) for v in d):
        raise ValueError(f"differences contain NaN: {d}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    n = len(d)
    mean = statistics.fmean(d)
    sd = statistics.stdev(d)
    se = sd / math.sqrt(n)
    df = n - 1
    if se > 0:
        t = mean / se
        p = 2.0 * (1.0 - t_cdf(abs(t), df))
    else:
        t = math.copysign(math.inf, mean) if mean != 0 else math.nan
        p = 0.0 if mean != 0 else 1.0
    half = t_ppf(1.0 - alpha / 2.0, df) * se
    return {"n": n, "mean": mean, "sd": sd, "se": se, "t": t, "p": min(1.0, max(0.0, p)),
            "ci_low": mean - half, "ci_high": mean + half}


def holm(pvalues: Sequence[float]) -> List[float]:
    """Holm's step-down adjusted p-values (same order as the input).

    Sorted ascending, the i-th smallest (0-based) of m p-values is multiplied by (m - i),
    the running maximum is taken (monotone) and the result capped at 1. A hypothesis is
    rejected at family-wise level alpha when its adjusted p-value is below alpha.
    """
    p = [float(v) for v in pvalues]
    if any(math.isnan(v) or v < 0 or v > 1 for v in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted


def paired_differences(
    rows: Iterable[Dict],
    metric: str,
    baseline: str = "bilinear",
    key: str = "setting",
    pair: str = "seed",
    alpha: float = 0.05,
    settings: Optional[Sequence[str]] = None,
) -> List[Dict]:
    """Every setting against ``baseline``: paired differences of ``metric`` with intervals.

    Args:
        rows: sweep rows (dicts, e.g. :func:`sapa.lab.sweep.read_csv`) with columns ``key``,
            ``pair`` and ``metric``.
        metric: the column compared (e.g. "miou", "boundary_iou").
        baseline: the value of ``key`` everything is compared against.
        key: the column naming a setting (default "setting").
        pair: the column pairing runs (default "seed").
        alpha: level of the intervals and of the tests.
        settings: the family of comparisons (default: every setting but the baseline, in
            first-seen order). Holm's correction runs over exactly this family.

    Returns:
        one dict per setting: ``setting``, the :func:`paired_t` fields of
        ``metric(setting) - metric(baseline)`` over the seeds both have (``n``, ``mean``,
        ``sd``, ``se``, ``t``, ``p``, ``ci_low``, ``ci_high``), ``p_holm``,
        ``ci_low_adj``/``ci_high_adj`` (Bonferroni, ``1 - alpha / m``), ``significant``
        (``p_holm < alpha``), and ``seeds`` (the pairs used).

    Raises ValueError when the baseline is missing, a setting has a seed twice, or a
    setting shares fewer than 2 seeds with the baseline.
    """
    by: Dict[str, Dict] = {}
    order: List[str] = []
    for r in rows:
        s, sd, v = r[key], r[pair], float(r[metric])
        if s not in by:
            by[s] = {}
            order.append(s)
        if sd in by[s]:
            raise ValueError(f"{key}={s!r} has two rows for {pair}={sd!r}: pass rows of one sweep setting")
        by[s][sd] = v
    if baseline not in by:
        raise ValueError(f"baseline {baseline!r} not among the {key} values {order}")
    family = [s for s in (settings if settings is not None else order) if s != baseline]
    missing = [s for s in family if s not in by]
    if missing:
        raise ValueError(f"settings {missing} not in the rows ({order})")
    m = len(family)
    out = []
    for s in family:
        common = sorted(set(by[s]) & set(by[baseline]))
        if len(common) < 2:
            raise ValueError(f"{key}={s!r} shares {len(common)} {pair}{'s' if len(common) != 1 else ''} with the baseline; need >= 2")
        res = paired_t([by[s][k] - by[baseline][k] for k in common], alpha)
        adj = paired_t([by[s][k] - by[baseline][k] for k in common], alpha / max(m, 1))
        out.append(dict(setting=s, metric=metric, baseline=baseline, seeds=common, alpha=alpha, **res,
                        ci_low_adj=adj["ci_low"], ci_high_adj=adj["ci_high"]))
    for r, ph in zip(out, holm([r["p"] for r in out])):
        r["p_holm"] = ph
        r["significant"] = ph < alpha
    return out


def complete_seeds(rows: Iterable[Dict], settings: Sequence[str], key: str = "setting",
                   pair: str = "seed") -> List:
    """The values of ``pair`` (seeds) that every setting in ``settings`` has, sorted.

    A sweep appends its rows as runs finish; a seed enters a paired comparison only once
    every setting of the comparison has it, so the comparison never mixes seed sets.
    Empty when a setting has no rows at all.
    """
    have: Dict[str, set] = {s: set() for s in settings}
    for r in rows:
        if r[key] in have:
            have[r[key]].add(r[pair])
    if not have:
        return []
    common = set.intersection(*have.values())
    return sorted(common)


def verdict(result: Dict, alpha: float = 0.05) -> str:
    """``"higher"`` or ``"lower"`` when a :func:`paired_differences` result survives Holm's
    correction (``p_holm < alpha``) with a positive or negative mean, else ``"unresolved"``."""
    if result.get("p_holm", 1.0) < alpha and result["mean"] != 0:
        return "higher" if result["mean"] > 0 else "lower"
    return "unresolved"


def plural(n: int, word: str, plural_form: Optional[str] = None) -> str:
    """``"1 seed"``, ``"3 seeds"``: the count and the word, pluralised by the count
    (``plural_form``: the plural when it is not ``word + "s"``)."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r}")
    return f"{n} {word if n == 1 else (plural_form or word + 's')}"


def join_names(names: Sequence[str], empty: str = "none") -> str:
    """``"A"``, ``"A and B"``, ``"A, B and C"``; ``empty`` for an empty list."""
    names = [str(n) for n in names]
    if not names:
        return empty
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def decimals(value: float, digits: int = 1, most: int = 6) -> int:
    """The decimals that show ``value``: ``digits``, more (up to ``most``) when a nonzero value
    would print as 0."""
    d = digits
    while value != 0 and not math.isnan(value) and round(abs(value), d) == 0 and d < most:
        d += 1
    return d


def signed(value: float, digits: int = 1, sign: bool = True, minus: str = "-") -> str:
    """``value`` with ``digits`` decimals, more (up to 6) when a nonzero value would print as
    0.0, scientific notation when even 6 decimals round it away; never ``-0.0``. ``sign``: a
    ``+`` before positives; ``minus``: the minus sign (``"\u2212"`` for typeset text); NaN: n/a."""
    v = float(value)
    if math.isnan(v):
        return "n/a"
    if v == 0:
        return f"{0:.{digits}f}"
    d = decimals(v, digits)
    text = (f"{v:+.{d}f}" if sign else f"{v:.{d}f}") if round(abs(v), d) != 0 else (
        f"{v:+.0e}" if sign else f"{v:.0e}")
    return text.replace("-", minus)


def describe_difference(result: Dict, scale: float = 100.0, digits: int = 1, unit: str = "points",
                        adjusted: bool = True, show_n: bool = True, minus: str = "-") -> str:
    """One :func:`paired_differences` result as plain text, e.g.
    ``"+1.2 points (95 % CI +0.4 to +2.0, Holm p = 0.012, n = 5)"``.

    ``scale`` multiplies the mean and the interval (100: fractions to percentage points); the
    three numbers share the mean's decimals (:func:`decimals`: a nonzero mean never prints as
    +0.0); ``adjusted=False`` writes the unadjusted ``p`` (one planned comparison); ``show_n``
    appends the number of pairs; ``minus`` as in :func:`signed`. The interval's level is the one
    ``paired_differences`` was called with (95 % for alpha = 0.05).
    """
    for k in ("mean", "ci_low", "ci_high"):
        if k not in result:
            raise ValueError(f"result lacks {k!r}: pass a sapa.lab.stats.paired_differences entry")
    p = result.get("p_holm", result.get("p", math.nan)) if adjusted else result.get("p", math.nan)
    ptxt = "< 0.001" if p < 0.001 else f"= {p:.3f}"
    label = "Holm p" if adjusted else "p"
    level = result.get("alpha")
    lvl = f"{100 * (1 - level):.0f} %" if level else "95 %"
    d = decimals(scale * result["mean"], digits)
    f = lambda v: signed(scale * v, d, minus=minus)  # noqa: E731
    tail = f", n = {result['n']}" if show_n and "n" in result else ""
    return f"{f(result['mean'])} {unit} ({lvl} CI {f(result['ci_low'])} to {f(result['ci_high'])}, {label} {ptxt}{tail})"


def too_close_to_call(rows: Iterable[Dict], metric: str, settings: Sequence[str], key: str = "setting",
                      pair: str = "seed", alpha: float = 0.05) -> Dict:
    """Every pair of ``settings`` compared (paired t, Holm over all the pairs).

    Returns dict ``pairs`` (a list of dicts ``a``, ``b``, and the :func:`paired_t` fields of
    ``metric(a) - metric(b)``, ``p_holm``, ``significant``), ``resolved`` (the pairs whose
    difference survives Holm's correction) and ``all_unresolved`` (True when no pair does:
    the settings are too close to call with these seeds). Uses the seeds every setting has
    (:func:`complete_seeds`); raises ValueError with fewer than 2 of them.
    """
    rows = list(rows)
    seeds = complete_seeds(rows, settings, key, pair)
    if len(seeds) < 2:
        raise ValueError(f"{list(settings)} share {len(seeds)} {pair}{'s' if len(seeds) != 1 else ''}; need >= 2")
    val: Dict[str, Dict] = {s: {} for s in settings}
    for r in rows:
        if r[key] in val and r[pair] in seeds:
            val[r[key]][r[pair]] = float(r[metric])
    pairs = []
    for i, a in enumerate(settings):
        for b in settings[i + 1:]:
            res = paired_t([val[a][k] - val[b][k] for k in seeds], alpha)
            pairs.append(dict(a=a, b=b, **res))
    for r, ph in zip(pairs, holm([r["p"] for r in pairs])):
        r["p_holm"] = ph
        r["significant"] = ph < alpha
    resolved = [r for r in pairs if r["significant"]]
    return {"pairs": pairs, "resolved": resolved, "all_unresolved": not resolved, "seeds": seeds}
