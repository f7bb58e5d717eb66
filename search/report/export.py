"""What the report writes: the tables (trials.csv, architectures.csv, pareto.csv, transfer.csv), summary.md in
the verdicts' words, and best.yaml (a small config that retrains the chosen architecture, its figures in the
header; the same figures in best.json)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import yaml

from search.record import Role

from .stats import Verdict

# the per-architecture columns every consumer reads, in this order (issue-facing names: do not rename)
ARCH_COLUMNS = ("arch", "label", "role", "n_seeds", "seeds", "trials", "auc_mean", "auc_std", "auc_ci_low",
                "auc_ci_high", "auc_diff", "auc_diff_ci_low", "auc_diff_ci_high", "p_improvement", "verdict",
                "pareto", "below_static", "cheaper", "head_macs", "head_params_deploy", "macs_x_fewer",
                "params_x_fewer", "static_auc")
TRIAL_COLUMNS = ("trial", "state", "role", "stage", "arch", "label", "seed", "auc", "static_auc", "head_macs",
                 "head_params_deploy", "duration_s", "run_dir", "duplicate_of", "reason")


def _finite(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def fmt(value: Any, digits: int = 1, sign: bool = False) -> str:
    """A number for a reader: fixed decimals, `-` when missing (never `nan`)."""
    if not _finite(value):
        return "-"
    return f"{float(value):{'+' if sign else ''}.{digits}f}"


def fmt_count(value: Any) -> str:
    """118.9 M, 297.5 k, 950 (never 2.26e+05)."""
    if not _finite(value):
        return "-"
    value = float(value)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f}"


def fmt_interval(low: Any, high: Any, digits: int = 1, sign: bool = False) -> str:
    return "-" if not (_finite(low) and _finite(high)) else f"[{fmt(low, digits, sign)}, {fmt(high, digits, sign)}]"


def head_columns(table: pd.DataFrame) -> pd.DataFrame:
    """The head spec as one column per field (`head.block`, `head.num_blocks`, ...) instead of a JSON string."""
    heads = table["head"].map(lambda h: json.loads(h) if isinstance(h, str) and h.startswith("{") else {})
    fields = pd.json_normalize(heads.tolist()).drop(columns=["_target_", "_partial_"], errors="ignore")
    fields.index = table.index
    return fields.add_prefix("head.")


def arch_frame(table: pd.DataFrame) -> pd.DataFrame:
    """architectures.csv / pareto.csv: ARCH_COLUMNS (those present), the head's fields, then the rest."""
    first = [c for c in ARCH_COLUMNS if c in table]
    rest = [c for c in table.columns if c not in first and c not in ("head", "auc")]
    out = pd.concat([table[first], head_columns(table), table[rest]], axis=1)
    out["role"] = out["role"].fillna("")
    return out


def trial_frame(frame: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in TRIAL_COLUMNS if c in frame]
    rest = [c for c in frame.columns if c not in first and c != "head"]
    return frame[first + rest]


def _times(fewer: float, what: str) -> str:
    """A cost ratio to the baseline in words that never say "0.7x fewer"."""
    if not _finite(fewer):
        return f"{what}: n/a"
    return f"{fewer:.1f}x fewer {what}" if fewer >= 1 else f"{1 / fewer:.1f}x more {what}"


def _claim(row: pd.Series) -> str:
    """One sentence in the verdict's words."""
    words = Verdict.WORDS.get(row.get("verdict"), "not compared (no baseline)")
    parts = [f"`{row['label']}` is **{words}**"]
    if _finite(row.get("macs_x_fewer")):
        parts.append(f"{_times(row['macs_x_fewer'], 'MACs')}, {_times(row['params_x_fewer'], 'parameters')}")
    if _finite(row.get("auc_diff")):
        parts.append(f"AUC difference {fmt(row['auc_diff'], 1, True)} "
                     f"{fmt_interval(row['auc_diff_ci_low'], row['auc_diff_ci_high'], 1, True)}, "
                     f"p_improvement {fmt(row['p_improvement'], 2)}")
    parts.append(f"{int(row['n_seeds'])} seed(s)")
    text = parts[0] + ": " + "; ".join(parts[1:]) + "."
    if row.get("below_static"):
        text += " Its AUC is not above the static box's: it does not track."
    return text


def summary_markdown(title: str, frame: pd.DataFrame, table: pd.DataFrame, objectives: list, best: Optional[pd.Series],
                     why: str, transfer: Optional[tuple[pd.DataFrame, dict]] = None, min_seeds: int = 1,
                     retrain: str = "", hardware: Optional[dict[str, Any]] = None,
                     activations: Optional[pd.DataFrame] = None) -> str:
    states = frame["state"].value_counts().to_dict()
    front = table[table["pareto"]].sort_values("head_macs")
    margin = table.attrs.get("margin", float("nan"))
    confidence = table.attrs.get("confidence", 0.95)
    lines = [f"# Sweep report: {title}", "",
             f"{len(frame)} trials (" + ", ".join(f"{v} {k.lower()}" for k, v in states.items()) + f"); "
             f"{len(table)} architectures, {int(table['n_seeds'].min())} to {int(table['n_seeds'].max())} seed(s) "
             "each.", "", "## How sure these figures are", "",
             f"Every AUC is the mean over an architecture's seeds, with a {confidence:.0%} interval from a "
             f"{table.attrs.get('method', 'bootstrap')} ({table.attrs.get('resamples', '?')} resamples"
             + (f", {table.attrs['sequences']} sequences" if table.attrs.get("sequences") else "") + "). "
             "Against the baseline: **dominates the baseline** = cheaper in every cost objective and the AUC "
             "difference's interval lies above zero; **no worse than the baseline** = the interval's lower end "
             f"is above -{fmt(margin, 1)} AUC points (the margin); otherwise **worse than the baseline**; "
             "**unconfirmed** = fewer than 2 seeds on either side (no seed spread to judge by). `p_improvement` "
             "is the share of resamples in which the candidate beats the baseline.", ""]
    base = table[table["role"] == Role.BASELINE]
    if not base.empty:
        b = base.iloc[0]
        lines += [f"Baseline (RepVGG head, `{b['label']}`): AUC {fmt(b['auc'])} "
                  f"{fmt_interval(b['auc_ci_low'], b['auc_ci_high'])} over {int(b['n_seeds'])} seed(s), "
                  f"{fmt_count(b['head_macs'])} head MACs, {fmt_count(b['head_params_deploy'])} deployed head "
                  "parameters.", ""]
    if "static_auc" in table and table["static_auc"].notna().any():
        lines += [f"Static-box tracker (the first box forever) on the same sequences: AUC "
                  f"{fmt(table['static_auc'].mean())}; a head at or below it does not track."]
        below = table[table["below_static"].astype(bool)]
        if len(below):
            lines += ["", f"**Warning:** {len(below)} architecture(s) score at or below the static box and are "
                          "never counted as dominating or chosen: " + ", ".join(f"`{x}`" for x in below["label"])
                      + "."]
        lines += [""]
    aims = ", ".join(f"{o.name} {'up' if o.direction == 'maximize' else 'down'}" for o in objectives)
    shown = pd.DataFrame({
        "architecture": front["label"], "role": front["role"].fillna(""), "seeds": front["n_seeds"].astype(int),
        "AUC": front["auc"].map(fmt),
        f"{confidence:.0%} interval": [fmt_interval(a, b) for a, b in zip(front["auc_ci_low"], front["auc_ci_high"])],
        "vs baseline": [f"{fmt(d, 1, True)} {fmt_interval(a, b, 1, True)}" for d, a, b in
                        zip(front.get("auc_diff", []), front.get("auc_diff_ci_low", []),
                            front.get("auc_diff_ci_high", []))] if "auc_diff" in front else "-",
        "p_improvement": front["p_improvement"].map(lambda v: fmt(v, 2)) if "p_improvement" in front else "-",
        "head MACs": front["head_macs"].map(fmt_count),
        "params": front["head_params_deploy"].map(fmt_count),
        "verdict": front["verdict"].fillna("-") if "verdict" in front else "-"})
    lines += [f"## Pareto-optimal architectures ({aims}; on the means)", "", shown.to_markdown(index=False), "",
              "## What holds", ""]
    claimed = pd.concat([front, table[(table["role"] == Role.USER_HEAD) & ~table["pareto"]]])
    lines += [f"- {_claim(row)}" for _, row in claimed.iterrows() if row.get("role") != Role.BASELINE] or \
        ["- The baseline is the only architecture on the front."]
    lines += [""]
    if transfer is not None:
        scores, info = transfer
        lines += [f"## Transfer to `{info['preset']}` (never used for selection)", "",
                  f"The references and the front ({info['architectures']} architectures, {info['runs']} runs) "
                  f"scored again on a differently built split ({info.get('sequences') or '?'} sequences). Rank "
                  "agreement between the val and test means (Kendall's tau): "
                  + (f"tau {fmt(info['kendall_tau'], 2)}, p = {fmt(info['kendall_p'], 3)}"
                     if _finite(info["kendall_tau"]) else "not computed (fewer than three architectures)")
                  + f". Static-box tracker on it: AUC {fmt(info['static_auc'])}.", ""]
        rows = pd.DataFrame({"architecture": scores["label"], "role": scores["role"].fillna(""),
                             "val AUC": scores["val_auc_mean"].map(fmt), "test AUC": scores["test_auc_mean"].map(fmt),
                             f"test {confidence:.0%} interval": [fmt_interval(a, b) for a, b in
                                                                 zip(scores["test_auc_ci_low"],
                                                                     scores["test_auc_ci_high"])],
                             "test vs baseline": [f"{fmt(d, 1, True)} {fmt_interval(a, b, 1, True)}" for d, a, b in
                                                  zip(scores["test_auc_diff"], scores["test_auc_diff_ci_low"],
                                                      scores["test_auc_diff_ci_high"])]})
        lines += [rows.to_markdown(index=False), "", transfer_words(scores, info), ""]
    if hardware is not None:
        lines += ["## MACs against measured latency", "", latency_words(hardware), ""]
    lines += int8_words(table, activations)
    lines += [f"## Chosen architecture (best.yaml; among front members with at least {min_seeds} seed(s) that "
              "track)", ""]
    if best is None:
        lines += [f"None: {why}. No best.yaml was written.", ""]
    else:
        lines += [f"`{best['label']}` ({why}): AUC {fmt(best['auc'])} "
                  f"{fmt_interval(best['auc_ci_low'], best['auc_ci_high'])} over {int(best['n_seeds'])} seed(s), "
                  f"{fmt_count(best['head_macs'])} MACs; {Verdict.WORDS.get(best.get('verdict'), '')}. "
                  f"Retrain it with `{retrain}`.", ""]
    return "\n".join(lines)


def transfer_words(scores: pd.DataFrame, info: dict, tracks_by: float = 10.0) -> str:
    """Whether the front holds on the test split, plainly: the ranking (Kendall's tau and its p-value), and
    whether the heads track there at all (their margin over the static box)."""
    tau, p, n = info["kendall_tau"], info["kendall_p"], len(scores)
    if not _finite(tau):
        text = "Too few architectures to compare rankings (Kendall's tau needs three)."
    elif tau > 0 and p < 0.05:
        text = f"The val ranking carries over (tau {fmt(tau, 2)}, p {fmt(p, 3)})."
    elif tau > 0:
        text = (f"The val ranking points the same way (tau {fmt(tau, 2)}) but is not significant with {n} "
                f"architectures (p {fmt(p, 3)}): weak evidence that the front holds.")
    else:
        text = f"**The front does not hold on this split**: the val ranking does not carry over (tau {fmt(tau, 2)})."
    margin = scores["test_auc_mean"] - info["static_auc"]
    if (margin < tracks_by).all():
        text += (f" **No head tracks well on this split**: every test AUC is within {fmt(margin.max(), 1)} points "
                 f"of the static box's ({fmt(info['static_auc'])}), so differences between heads here say little.")
    below = scores[margin <= 0]
    if len(below):
        text += (f" {len(below)} of {n} architectures do not beat the static box on it: "
                 + ", ".join(f"`{x}`" for x in below["label"]) + ".")
    return text


def latency_words(facts: dict[str, Any]) -> str:
    """What the latency measurements say about MACs as a cost, plainly, with the limit a head can move."""
    where = f"{facts['runtime']} on {facts['device']}, {facts['threads']} thread(s), batch 1, median"
    text = [f"Latency was measured before training on {where} ({facts['architectures']} architectures)"
            + ("; heads are compared by their time over the reference head's, timed in the same rounds (robust to "
               "a shared machine's load)." if facts.get("relative") else ".")]
    if facts.get("mixed"):
        text.append("**Warning:** the trials were timed on more than one runtime, machine or thread count; "
                    "their latencies do not compare.")
    if _finite(facts["tau_head"]):
        strength = ("MACs rank heads by speed well" if facts["tau_head"] >= 0.8 else
                    "MACs rank heads by speed only roughly" if facts["tau_head"] >= 0.5 else
                    "**MACs do not rank heads by speed here**")
        text.append(f"{strength}: Kendall's tau between head MACs and head latency {fmt(facts['tau_head'], 2)} "
                    f"(p {fmt(facts['p_head'], 3)}); between head MACs and frame latency "
                    f"{fmt(facts['tau_frame'], 2)} (p {fmt(facts['p_frame'], 3)}).")
    if facts["discordant"]:
        text.append("Fewer MACs but a slower head: " + "; ".join(f"`{a}` against `{b}`"
                                                                  for a, b in facts["discordant"]) + ".")
    if _finite(facts["baseline_time_share"]):
        text.append(f"The limit: the baseline head is {fmt(100 * facts['baseline_mac_share'], 1)} % of the "
                    f"per-frame MACs and {fmt(100 * facts['baseline_time_share'], 1)} % of the measured frame time, "
                    f"so no head can make the frame more than {fmt(100 * facts['baseline_time_share'], 1)} % "
                    f"faster; the fastest architecture measured (`{facts['fastest']}`) runs the frame "
                    f"{fmt(facts['fastest_speedup'], 2)}x as fast as the baseline.")
    return " ".join(text)


def int8_words(table: pd.DataFrame, activations: Optional[pd.DataFrame]) -> list[str]:
    """summary.md's INT8 section: every architecture's INT8 AUC and drop with intervals, the ONNX Runtime
    latencies, and the activation comparison in plain words."""
    timed = table[table["int8_auc_drop_mean"].notna()] if "int8_auc_drop_mean" in table else table.iloc[:0]
    if timed.empty:
        return []
    scope = table.attrs.get("int8_scope", "?")
    rows = pd.DataFrame({
        "architecture": timed["label"], "seeds": timed["n_seeds"].astype(int), "FP32 AUC": timed["auc"].map(fmt),
        "INT8 AUC": [f"{fmt(m)} {fmt_interval(a, b)}" for m, a, b in
                     zip(timed["int8_auc_mean"], timed["int8_auc_ci_low"], timed["int8_auc_ci_high"])],
        "drop": [f"{fmt(m, 2, True)} {fmt_interval(a, b, 2, True)}" for m, a, b in
                 zip(timed["int8_auc_drop_mean"], timed["int8_auc_drop_ci_low"], timed["int8_auc_drop_ci_high"])],
        "ORT FP32 ms": timed.get("onnx_frame_latency_ms", pd.Series(index=timed.index, dtype=float)).map(
            lambda v: fmt(v, 2)),
        "ORT INT8 ms": timed.get("int8_frame_latency_ms", pd.Series(index=timed.index, dtype=float)).map(
            lambda v: fmt(v, 2))})
    lines = ["## INT8 (post-training static quantisation, ONNX Runtime)", "",
             f"Each trial's model quantised to INT8 ({scope}; per-channel weights, QDQ, calibrated on training "
             f"crops) and scored on the same {table.attrs.get('int8_sequences', '?')} sequences as in FP32; the "
             "drop is FP32 minus INT8 AUC, paired by sequence and seed, with the same bootstrap. Latency: the "
             "search branch per frame on ONNX Runtime's CPU kernels, median.", "",
             rows.to_markdown(index=False, disable_numparse=True), ""]
    if activations is not None:
        lines += ["Against ReLU on the same head (drop difference = this activation's drop minus ReLU's; below "
                  "zero: it loses less to INT8):", ""]
        for _, r in activations.iterrows():
            low, high = r["drop_diff_ci_low"], r["drop_diff_ci_high"]
            words = ("**unconfirmed (too few seeds)**" if r["n_seeds"] < 2 else
                     "**quantises better than ReLU**" if high < 0 else "**quantises worse than ReLU**" if low > 0
                     else "**no measurable difference from ReLU**")
            lines.append(f"- `{r['label']}` {words}: drop {fmt(r['drop'], 2, True)} against ReLU's "
                         f"{fmt(r['relu_drop'], 2, True)}, difference {fmt(r['drop_diff'], 2, True)} "
                         f"{fmt_interval(low, high, 2, True)}, p_smaller_drop {fmt(r['p_smaller_drop'], 2)} "
                         f"({int(r['n_seeds'])} seed(s)).")
        lines += [""]
    return lines


def best_files(best: pd.Series, why: str, frame: pd.DataFrame, study_name: str, out: Path, rule: str
               ) -> tuple[str, dict[str, Any]]:
    """best.yaml's text (the config and a header with the figures it was chosen on) and best.json's record."""
    config = best_config(best, frame)
    figures = {k: (None if not _finite(best.get(k)) else float(best[k])) for k in
               ("auc_mean", "auc_ci_low", "auc_ci_high", "auc_diff", "auc_diff_ci_low", "auc_diff_ci_high",
                "p_improvement", "head_macs", "head_params_deploy", "macs_x_fewer", "params_x_fewer")}
    record = {"study": study_name, "rule": rule, "why": why, "arch": best["arch"], "label": best["label"],
              "trials": [int(t) for t in str(best["trials"]).split(",")], "seeds": str(best.get("seeds", "")),
              "n_seeds": int(best["n_seeds"]), "verdict": best.get("verdict"), **figures}
    header = [f"# The architecture chosen from study {study_name!r} by rule={rule}: {why}.",
              f"# {best['label']} (arch {best['arch']}; trials {best['trials']}; seeds {best.get('seeds', '')})",
              f"# AUC {fmt(best['auc_mean'])} {fmt_interval(best['auc_ci_low'], best['auc_ci_high'])} over "
              f"{int(best['n_seeds'])} seed(s); against the baseline {fmt(best.get('auc_diff'), 1, True)} "
              f"{fmt_interval(best.get('auc_diff_ci_low'), best.get('auc_diff_ci_high'), 1, True)}, verdict "
              f"{best.get('verdict')}",
              f"# head MACs {fmt_count(best['head_macs'])}, deployed head parameters "
              f"{fmt_count(best['head_params_deploy'])}",
              f"# retrain: python -m tracker.train --config-dir {out} --config-name best"]
    return "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False), record


def _changed(run: Any, default: Any) -> Any:
    """The leaves of `run` that differ from `default` (nested dicts), None when nothing does."""
    if isinstance(run, dict) and isinstance(default, dict):
        out = {k: d for k, v in run.items() if (d := _changed(v, default.get(k))) is not None}
        return out or None
    return None if run == default else run


def best_config(row: pd.Series, frame: pd.DataFrame) -> dict[str, Any]:
    """A primary config that composes conf/train.yaml with the chosen head and only the settings in which the
    trial differed from what its config groups compose to."""
    trial = frame[frame["trial"] == int(str(row["trials"]).split(",")[0])].iloc[0]
    run_dir = Path(str(trial["run_dir"]))
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    choices = {}
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        runtime = yaml.safe_load(hydra_file.read_text())["hydra"]["runtime"]["choices"]
        choices = {k: v for k, v in runtime.items() if k in ("head", "model", "data", "trainer", "evaluation")}
    choices.setdefault("head", resolved["head"]["block"])
    from omegaconf import OmegaConf

    from tracker.config import compose_here

    defaults = OmegaConf.to_container(compose_here("train", [f"{k}={v}" for k, v in choices.items()]), resolve=True,
                                      enum_to_str=True)
    head = {k: v for k, v in resolved["head"].items() if not k.startswith("_")}
    config: dict[str, Any] = {"defaults": ["train", *({f"override {k}": v} for k, v in choices.items()), "_self_"],
                              "head": head}
    for group in ("data", "trainer", "evaluation", "model"):
        changed = _changed(resolved.get(group), defaults.get(group))
        if changed is not None:
            config[group] = changed
    return config
