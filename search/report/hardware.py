"""Where MACs mislead: the rank agreement between a study's head MACs and their measured latency, and the most a
faster head can save, from the latency each trial measured before training (tracker.latency)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pandas as pd

from search.record import Role

from .stats import kendall_tau

LATENCY = ("head_latency_ms", "frame_latency_ms")


def latency_facts(table: pd.DataFrame, frame: pd.DataFrame) -> Optional[dict[str, Any]]:
    """None when the trials measured no latency; else what it was measured on (runtime, device, threads: the
    trials' own record), Kendall's tau (and p) between head MACs and head latency, and between head MACs and
    frame latency, over the architectures, and the baseline's share of the frame in MACs and in measured time."""
    if not all(c in table and table[c].notna().sum() >= 1 for c in LATENCY):
        return None
    timed = table[table["head_latency_ms"].notna() & table["frame_latency_ms"].notna()]
    where = {k: (frame[f"latency_{k}"].dropna().unique().tolist() if f"latency_{k}" in frame else [])
             for k in ("runtime", "device", "threads")}
    where["threads"] = [int(float(v)) for v in where["threads"]]  # a column with gaps reads as floats
    facts: dict[str, Any] = {k: ", ".join(map(str, v)) or "?" for k, v in where.items()}
    facts["mixed"] = any(len(v) > 1 for v in where.values())
    facts["architectures"] = len(timed)
    facts["tau_head"], facts["p_head"] = kendall_tau(timed["head_macs"], timed["head_latency_ms"])
    facts["tau_frame"], facts["p_frame"] = kendall_tau(timed["head_macs"], timed["frame_latency_ms"])
    base = timed[timed["role"] == Role.BASELINE]
    facts["baseline_mac_share"] = facts["baseline_time_share"] = np.nan
    if not base.empty:
        b = base.iloc[0]
        if "model_macs" in b and b["model_macs"]:
            facts["baseline_mac_share"] = float(b["head_macs"] / b["model_macs"])
        facts["baseline_time_share"] = float(b["head_latency_ms"] / b["frame_latency_ms"])
        fastest = timed.loc[timed["frame_latency_ms"].idxmin()]
        facts["fastest"], facts["fastest_speedup"] = fastest["label"], float(b["frame_latency_ms"]
                                                                             / fastest["frame_latency_ms"])
    facts["discordant"] = discordant_pairs(timed)
    return facts


def discordant_pairs(table: pd.DataFrame, shown: int = 3) -> list[tuple[str, str]]:
    """Pairs of architectures where fewer MACs came with a longer head time, the largest time gaps first."""
    rows = table[["label", "head_macs", "head_latency_ms"]].to_numpy()
    pairs = []
    for i in range(len(rows)):
        for j in range(len(rows)):
            (a, macs_a, ms_a), (b, macs_b, ms_b) = rows[i], rows[j]
            if macs_a < macs_b and ms_a > ms_b:
                pairs.append((ms_a - ms_b, a, b))
    return [(a, b) for _, a, b in sorted(pairs, reverse=True)[:shown]]
