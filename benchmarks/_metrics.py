"""Figures derived from raw timings: statistics, FLOP counts, FLOP-bound fractions, overhead ratios.
Standard library only, shared by ``run.py`` (which stores them in the JSON) and ``compare.py``."""

from __future__ import annotations

import statistics

BOOK = {"hidden": 256, "batch_size": 32, "num_steps": 35}
#: one axis at a time around the book's configuration
SWEEP = {"hidden": (64, 256, 1024), "batch_size": (1, 32, 256), "num_steps": (35, 140)}

FLOPS_FORMULA = ("per token, training = forward + backward ~ 3 x forward, forward = "
                 "2 * (V*3H + H*3H + H*V): the input projection of the one-hot token (counted as a "
                 "dense V x 3H product even where a row lookup replaces it), the three gates' "
                 "recurrent products and the dense head; element-wise work is not counted. "
                 "V=28, H=256: 1.35 MFLOP per token")


def flops_per_token(vocab: int, hidden: int) -> float:
    """Training FLOPs per token of the one-layer book model: 3 x the forward pass."""
    forward = 2 * (vocab * 3 * hidden + hidden * 3 * hidden + hidden * vocab)
    return 3.0 * forward


def stats(values) -> dict:
    values = [float(v) for v in values]
    return {"min": min(values), "median": statistics.median(values), "max": max(values),
            "n": len(values)}


def sweep_configs() -> list[tuple[str | None, dict]]:
    """``(axis, config)`` for the book's configuration (axis None) and each one-axis step."""
    out = [(None, dict(BOOK))]
    for axis, values in SWEEP.items():
        for value in values:
            if value != BOOK[axis]:
                out.append((axis, {**BOOK, axis: value}))
    return out


def is_book(config: dict) -> bool:
    return all(config.get(k) == v for k, v in BOOK.items())


def median(entry, key="tokens_per_s"):
    """The median of ``entry[key]``, or None when the entry failed."""
    if not entry or "error" in entry or key not in entry:
        return None
    return entry[key]["median"]


def merge_rounds(runs: list[dict], tokens_per_step: int | None = None) -> dict:
    """One case run in several interleaved rounds (a fresh worker each, see ``run.py
    --rounds``) -> one entry: tokens/s over every round's repeats pooled, each round's median
    in ``round_medians`` (for :func:`side_by_side`; None for a round that failed, which is
    otherwise left out), the largest peak RSS, the first round's warm-up, ms per step from
    ``tokens_per_step``. Every round failed: the first round's error."""
    ok = [r for r in runs if "error" not in r and "rates" in r]
    if not ok:
        return runs[0]
    merged = dict(ok[0])
    rates = [x for r in ok for x in r["rates"]]
    merged.update(rates=rates, tokens_per_s=stats(rates), repeats=len(rates),
                  round_medians=[r["tokens_per_s"]["median"] if any(r is o for o in ok)
                                 else None for r in runs],
                  loss_last_epoch=ok[-1]["loss_last_epoch"],
                  finite=all(r.get("finite", True) for r in ok))
    if tokens_per_step:
        merged["ms_per_step"] = stats(1e3 * tokens_per_step / x for x in rates)
    if any("peak_rss_mb" in r for r in ok):
        merged["peak_rss_mb"] = max(r.get("peak_rss_mb", 0) for r in ok)
    return merged


def side_by_side(entry, other) -> float | None:
    """``entry``'s tokens/s over ``other``'s: the median of the per-round ratios where both ran
    in the same interleaved rounds (so a machine whose speed drifts between cases moves both
    sides of each ratio alike), else the ratio of the medians; None when either failed."""
    a, b = (e.get("round_medians") if e else None for e in (entry, other))
    pairs = [(x, y) for x, y in zip(a, b) if x and y] if a and b and len(a) == len(b) else []
    if len(pairs) > 1:
        return statistics.median(x / y for x, y in pairs)
    ma, mb = median(entry), median(other)
    return ma / mb if ma and mb else None


def derive(result: dict) -> dict:
    """Add FLOP-bound fractions to every training entry and the summary block (overhead ratio
    against the fastest bare mode, the default modes) to one run's result, in place."""
    peak = (result.get("gemm") or {}).get("peak_gflops")
    for entry in result.get("train", []) + result.get("bare", []):
        cfg = entry["config"]
        entry["flops_per_token"] = flops_per_token(cfg["vocab"], cfg["hidden"])
        rate = median(entry)
        if peak and rate is not None:
            bound = peak * 1e9 / entry["flops_per_token"]
            entry["flop_bound_tokens_per_s"] = bound
            entry["fraction_of_flop_bound"] = rate / bound
    bare_book = [e for e in result.get("bare", []) if is_book(e["config"]) and median(e)]
    fastest = max(bare_book, key=median, default=None)
    summary = {"fastest_bare": None if fastest is None else
               {"mode": fastest["mode"], "tokens_per_s": median(fastest)}, "rows": []}
    for entry in result.get("train", []):
        if not is_book(entry["config"]):
            continue
        rate = median(entry)
        summary["rows"].append({
            "impl": entry["impl"], "mode": entry["mode"], "default_mode": entry["default_mode"],
            "tokens_per_s": rate,
            "vs_fastest_bare": side_by_side(entry, fastest) if rate and fastest else None,
            "fraction_of_flop_bound": entry.get("fraction_of_flop_bound")})
    result["summary"] = summary
    return result
