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
    # candidates timed at different moments of a shared machine compare by their ratio to the reference timed in
    # the same rounds (tracker.latency); absolute medians only when no ratio was recorded
    relative = all(c in timed and timed[c].notna().all() for c in ("head_latency_ratio", "frame_latency_ratio"))
    facts["relative"] = relative
    facts["head_measure"] = "head_latency_ratio" if relative else "head_latency_ms"
    facts["frame_measure"] = "frame_latency_ratio" if relative else "frame_latency_ms"
    facts["tau_head"], facts["p_head"] = kendall_tau(timed["head_macs"], timed[facts["head_measure"]])
    facts["tau_frame"], facts["p_frame"] = kendall_tau(timed["head_macs"], timed[facts["frame_measure"]])
    base = timed[timed["role"] == Role.BASELINE]
    facts["baseline_mac_share"] = facts["baseline_time_share"] = np.nan
    if not base.empty:
        b = base.iloc[0]
        if "model_macs" in b and b["model_macs"]:
            facts["baseline_mac_share"] = float(b["head_macs"] / b["model_macs"])
        facts["baseline_time_share"] = float(b["head_latency_ms"] / b["frame_latency_ms"])
        measure = facts["frame_measure"]
        fastest = timed.loc[timed[measure].idxmin()]
        facts["fastest"], facts["fastest_speedup"] = fastest["label"], float(b[measure] / fastest[measure])
    facts["discordant"] = discordant_pairs(timed, facts["head_measure"])
    return facts


def discordant_pairs(table: pd.DataFrame, measure: str = "head_latency_ms", shown: int = 3) -> list[tuple[str, str]]:
    """Pairs of architectures where fewer MACs came with a longer head time, the largest time gaps first."""
    rows = table[["label", "head_macs", measure]].to_numpy()
    pairs = []
    for i in range(len(rows)):
        for j in range(len(rows)):
            (a, macs_a, ms_a), (b, macs_b, ms_b) = rows[i], rows[j]
            if macs_a < macs_b and ms_a > ms_b:
                pairs.append((ms_a - ms_b, a, b))
    return [(a, b) for _, a, b in sorted(pairs, reverse=True)[:shown]]


INT8_COLUMNS = ("int8_auc_mean", "int8_auc_ci_low", "int8_auc_ci_high", "int8_auc_drop_mean",
                "int8_auc_drop_ci_low", "int8_auc_drop_ci_high")


def _per_trial_arrays(done: pd.DataFrame, scores: dict[int, pd.Series], common: list) -> dict[str, np.ndarray]:
    groups = done.groupby("arch", sort=False)["trial"].apply(list)
    return {a: np.stack([scores[int(t)].loc[common].to_numpy(float) for t in trials]) for a, trials in groups.items()}


def int8_uncertainty(table: pd.DataFrame, frame: pd.DataFrame, conf: Any,
                     tables: Optional[dict[int, pd.DataFrame]] = None) -> tuple[pd.DataFrame, Optional[pd.DataFrame]]:
    """INT8 accuracy with intervals, from each trial's per-sequence scores of its FP32 (`model`) and INT8 (`int8`)
    trackers on the same sequences: `int8_auc_*` and `int8_auc_drop_*` (FP32 minus INT8, paired by sequence and
    seed) by the report's bootstrap. And, for heads run with several activations, each activation's drop against
    ReLU's on the same head (the ReLU6 question: a difference of drops, its interval and the share of resamples
    in which it quantises better). Returns the table with the columns (unchanged without INT8 trials) and that
    comparison (None without one). `tables`: the trials' per-sequence tables (load.sequence_tables) when the
    caller has read them."""
    from .analysis import completed
    from .load import sequence_tables, tracker_scores
    from .stats import bootstrap_table

    if "int8_auc" not in table or table["int8_auc"].isna().all():
        return table, None
    done = completed(frame)
    done = done[done["arch"].isin(table["arch"]) & done["int8_auc"].notna()]
    tables = sequence_tables(done) if tables is None else tables
    fp32, int8 = tracker_scores(tables, "model"), tracker_scores(tables, "int8")
    done = done[done["trial"].astype(int).isin(set(fp32) & set(int8))]
    if done.empty:
        return table, None
    common = sorted(set.intersection(*(set(fp32[int(t)].index) & set(int8[int(t)].index) for t in done["trial"])))
    quantised, full = _per_trial_arrays(done, int8, common), _per_trial_arrays(done, fp32, common)
    drops = {a: full[a] - quantised[a] for a in quantised}
    rows = []
    for name, arrays in (("int8_auc", quantised), ("int8_auc_drop", drops)):
        stats = bootstrap_table(arrays, None, conf)[["auc_mean", "auc_ci_low", "auc_ci_high"]]
        rows.append(stats.rename(columns=lambda c: c.replace("auc", name, 1)))
    attrs = dict(table.attrs)
    table = table.drop(columns=[c for c in INT8_COLUMNS if c in table]).merge(
        pd.concat(rows, axis=1), left_on="arch", right_index=True, how="left")
    scopes = sorted(map(str, done["int8_scope"].dropna().unique())) if "int8_scope" in done else []
    table.attrs.update(attrs, int8_sequences=len(common), int8_scope=", ".join(scopes) or "?")
    return table, activation_drops(table, drops, conf)


def activation_drops(table: pd.DataFrame, drops: dict[str, np.ndarray], conf: Any) -> Optional[pd.DataFrame]:
    """For each head (every field but the activation) with ReLU among its activations: every other activation's
    INT8 drop minus ReLU's, with the bootstrap interval, and `p_smaller_drop` (the share of resamples in which it
    loses less accuracy to INT8 than ReLU does)."""
    import json

    from .stats import bootstrap_table

    rows = []
    heads = table.set_index("arch")["head"].map(lambda h: json.loads(h) if isinstance(h, str) else dict(h or {}))
    family: dict[str, list[str]] = {}
    for arch, head in heads.items():
        if arch in drops and "activation" in head:
            key = json.dumps({k: v for k, v in head.items() if k != "activation"}, sort_keys=True)
            family.setdefault(key, []).append(arch)
    for members in family.values():
        relu = [a for a in members if heads[a]["activation"] == "relu"]
        if not relu or len(members) < 2:
            continue
        stats = bootstrap_table({a: -drops[a] for a in members}, relu[0], conf)  # "improvement" = a smaller drop
        for arch in members:
            if arch == relu[0]:
                continue
            row = table.set_index("arch").loc[arch]
            rows.append({"arch": arch, "label": row["label"], "activation": heads[arch]["activation"],
                         "against": table.set_index("arch").loc[relu[0], "label"],
                         "drop": float(drops[arch].mean()), "relu_drop": float(drops[relu[0]].mean()),
                         "drop_diff": -float(stats.loc[arch, "auc_diff"]),
                         "drop_diff_ci_low": -float(stats.loc[arch, "auc_diff_ci_high"]),
                         "drop_diff_ci_high": -float(stats.loc[arch, "auc_diff_ci_low"]),
                         "p_smaller_drop": float(stats.loc[arch, "p_improvement"]),
                         "n_seeds": int(min(stats.loc[arch, "n_seeds"], stats.loc[relu[0], "n_seeds"]))})
    return pd.DataFrame(rows) if rows else None
