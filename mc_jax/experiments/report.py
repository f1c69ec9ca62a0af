"""Tables, plots and the summary of the experiment suite (docs/results/<exp>/, docs/results.md).

Only reported seeds count (the validation seed of the learning-rate sweep does not). Each table row is a model
(group): its learning rate, the number of seeds, mean and standard deviation, the per-seed values; E1 adds the
"gap closed toward attention" ``(MC - base) / (attention - base)`` of the same memory and kv.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mc_jax.experiments.definitions import TITLES
from mc_jax.experiments.jobs import VALIDATION_SEED, Outcome, score

# What the paper reports for the same comparisons (arXiv 2602.24281, from the project's EVALUATION.md; [S] =
# secondary transcription), and the check our numbers are held to.
PAPER = {
    "e1": "MQAR (Zoology protocol, Fig. 5, curves only [S]): MC variants beat their base RNNs at every model width; "
          "constant segments (GRM, SSC) beat Log-Linear++ (GRM over logarithmic segments) almost everywhere.",
    "e1s": "The paper picks the segment length per model from {16 ... 512} at 2K-32K context (smaller segments: more "
           "cached memories, closer to attention); no MQAR search is reported.",
    "e2": "Not in the paper as such (token MQAR is Zoology's task); the paper's MQAR claim is the one of E1.",
    "e3": "S-NIAH at 16K (Table 2 [S]): S-NIAH-2 Titans 75.4 -> +GRM 88.2 (Transformer 94.2); S-NIAH-3 Titans "
          "21.2 -> +GRM 32.2, DLA 4.0 -> +GRM 18.2 (Transformer 40.8). Post-training MC (section 4.3): no numbers.",
    "e4": "Language modelling (Table 1 [S]): GRM lowers perplexity a little (1.3B Titans Wikitext 15.60 -> 15.37); "
          "SWLA 52.55 -> +GRM 54.60 average commonsense accuracy.",
    "e5": "Ablation (Table 3/5 [S], Titans + GRM retrieval average 40.5): without context-dependent gamma 33.0, "
          "without gating 32.4; perplexity barely moves (13.3-13.7).",
    "eb": "Not in the paper (its blocks follow each base model's own design); the project's question: does the "
          "library's default block learn recall at least as well as the bare layer?",
}


def reported(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        if o.job.seed == VALIDATION_SEED or "error" in o.result:
            continue
        groups.setdefault(o.job.group, []).append(o)
    return groups


def _value(o: Outcome) -> float:
    r = o.result
    if r.get("bits_per_byte") is not None:
        return r["bits_per_byte"]
    return math.nan if r.get("accuracy") is None else float(r["accuracy"])


# A run whose final training loss is within this fraction of ln(vocab) (a uniform prediction) never left the chance
# plateau: a failed optimisation, not a measurement of capacity (MQAR runs stall there for some seeds).
CHANCE_PLATEAU = 0.99


def stuck_at_chance(result: dict[str, Any]) -> bool:
    """Whether a classification run's final training loss stayed at the chance level ``ln(vocab_size)``."""
    loss, vocab = result.get("train_loss"), result.get("config", {}).get("model", {}).get("vocab_size")
    if result.get("bits_per_byte") is not None or loss is None or not vocab:
        return False
    return loss >= CHANCE_PLATEAU * math.log(vocab)


def summarise(outcomes: list[Outcome]) -> dict[str, dict[str, Any]]:
    """``group -> {lr, n, mean, std, values, metric, stuck, ...}`` over the reported seeds (``stuck``: per seed,
    :func:`stuck_at_chance`)."""
    out = {}
    for group, items in reported(outcomes).items():
        items = sorted(items, key=lambda o: o.job.seed)
        vals = [_value(o) for o in items]
        metric = "bits_per_byte" if items[0].result.get("bits_per_byte") is not None else "accuracy"
        entry = {"lr": items[0].job.lr, "n": len(vals), "mean": float(np.mean(vals)),
                 "std": float(np.std(vals)) if len(vals) > 1 else 0.0, "values": vals, "metric": metric,
                 "seeds": [o.job.seed for o in items], "stuck": [stuck_at_chance(o.result) for o in items],
                 "wall_seconds": float(sum(o.result.get("wall_seconds", 0.0) for o in items))}
        for key in ("by_segment", "niah", "loss_by_position"):
            if key in items[0].result:
                entry[key] = _mean_nested([o.result[key] for o in items], key)
        out[group] = entry
    errors = [f"{o.job.id}: {o.result['error']}" for o in outcomes if "error" in o.result]
    if errors:
        out["_errors"] = {"errors": errors}
    return out


def _mean_nested(items: list[Any], key: str) -> Any:
    if key == "niah":
        return {"lengths": items[0]["lengths"], "depths": items[0]["depths"],
                "exact": np.nanmean([np.asarray(i["exact"], float) for i in items], 0).tolist()}
    return np.nanmean([np.asarray(i, float) for i in items], 0).tolist()


def gap_closed(summary: dict[str, dict[str, Any]]) -> dict[str, float]:
    """E1: ``(MC - base) / (attention - base)`` per ``kv<k>-<memory>-<variant>`` group."""
    out = {}
    for group, s in summary.items():
        parts = group.split("-")
        if len(parts) != 3 or parts[2] == "none":
            continue
        kv, memory, _ = parts
        base, att = summary.get(f"{kv}-{memory}-none"), summary.get(f"{kv}-attention")
        if base and att and att["mean"] != base["mean"]:
            out[group] = (s["mean"] - base["mean"]) / (att["mean"] - base["mean"])
    return out


def table(name: str, summary: dict[str, dict[str, Any]]) -> str:
    gaps = gap_closed(summary) if name in ("e1", "e1s") else {}
    metric = next((s["metric"] for s in summary.values() if "metric" in s), "accuracy")
    pct = metric == "accuracy"
    fmt = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    head = f"| model | lr | seeds | {'accuracy %' if pct else 'bits/byte'} mean ± std | per seed |"
    lines = [head + (" gap closed |" if gaps else ""), "|---|---|---|---|---|" + ("---|" if gaps else "")]
    for group, s in sorted(summary.items()):
        if group.startswith("_"):
            continue
        row = (f"| {group} | {s['lr']:g} | {s['n']} | {fmt(s['mean'])} ± {fmt(s['std'])} | "
               + ", ".join(fmt(v) + ("‡" if bad else "") for v, bad in zip(s["values"], s["stuck"])) + " |")
        if gaps:
            row += f" {100 * gaps[group]:.0f}% |" if group in gaps else " |"
        lines.append(row)
    if any(any(s["stuck"]) for group, s in summary.items() if not group.startswith("_")):
        lines += ["", f"‡ that seed's final training loss is at the chance level (>= {CHANCE_PLATEAU:g} ln(vocab)): it "
                  "never left the initial plateau. It counts in the mean and spread like every other seed."]
    if "_errors" in summary:
        lines += ["", "Failed jobs:"] + [f"- {e}" for e in summary["_errors"]["errors"]]
    return "\n".join(lines)


def sweep_table(outcomes: list[Outcome]) -> str:
    """The learning-rate sweeps on :data:`VALIDATION_SEED`: a row per swept model, a column per rate ("" if none)."""
    runs = {(o.job.group, o.job.lr): o for o in outcomes if o.job.seed == VALIDATION_SEED}
    if not runs:
        return ""
    lrs = sorted({lr for _, lr in runs})
    lm = any(o.result.get("bits_per_byte") is not None for o in runs.values())
    fmt = (lambda x: f"{x:.3f}") if lm else (lambda x: f"{100 * x:.1f}")
    lines = [f"Learning-rate sweep on seed {VALIDATION_SEED} ({'bits/byte' if lm else 'accuracy %'}; * the rate "
             "taken):", "", "| model | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " |",
             "|---|" + "---|" * len(lrs)]
    for group in sorted({g for g, _ in runs}):
        mine = [runs[(group, lr)] for lr in lrs if (group, lr) in runs]
        best = max(mine, key=lambda o: score(o.result)).job.lr
        cells = [("failed" if "error" in o.result else fmt(_value(o))) + ("*" if lr == best else "")
                 if (o := runs.get((group, lr))) else "" for lr in lrs]
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(name: str, summary: dict[str, dict[str, Any]], folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    items = {g: s for g, s in summary.items() if not g.startswith("_")}
    if name == "e1":
        fig, ax = plt.subplots(figsize=(7, 4))
        series: dict[str, list[tuple[int, float, float]]] = {}
        for g, s in items.items():
            kv, rest = g.split("-", 1)
            series.setdefault(rest, []).append((int(kv[2:]), 100 * s["mean"], 100 * s["std"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", label=label)
        ax.set(xlabel="key-value pairs (kv)", ylabel="accuracy (%)", title=TITLES[name])
        ax.legend(fontsize=6, ncol=2)
        written.append(_save(fig, folder / "accuracy_vs_kv.png"))
    if any("by_segment" in s for s in items.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for g, s in sorted(items.items()):
            if "by_segment" in s:
                ax.plot(100 * np.asarray(s["by_segment"]), marker=".", label=g)
        ax.set(xlabel="segment of the queried pair", ylabel="accuracy (%)", title=f"{TITLES[name]}: by segment")
        ax.legend(fontsize=5, ncol=2)
        written.append(_save(fig, folder / "accuracy_by_segment.png"))
    for g, s in sorted(items.items()):
        if "niah" in s:
            grid = s["niah"]
            fig, ax = plt.subplots(figsize=(5, 4))
            im = ax.imshow(100 * np.asarray(grid["exact"]), vmin=0, vmax=100, cmap="viridis", aspect="auto")
            ax.set(xticks=range(len(grid["lengths"])), xticklabels=grid["lengths"], yticks=range(len(grid["depths"])),
                   yticklabels=[f"{d:.2f}" for d in grid["depths"]], xlabel="length", ylabel="depth", title=g)
            fig.colorbar(im, label="exact match (%)")
            written.append(_save(fig, folder / f"niah_{g}.png"))
    if any("loss_by_position" in s for s in items.values()):
        fig, ax = plt.subplots(figsize=(7, 4))
        for g, s in sorted(items.items()):
            if "loss_by_position" in s:
                ax.plot(np.asarray(s["loss_by_position"]) / math.log(2), marker=".", label=g)
        ax.set(xlabel="position bucket", ylabel="bits per byte", title=f"{TITLES[name]}: loss by position")
        ax.legend()
        written.append(_save(fig, folder / "loss_by_position.png"))
    return written


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def verdict(name: str, summary: dict[str, dict[str, Any]]) -> list[str]:
    """Plain statements of whether our numbers agree with the paper's claim for this experiment."""
    s = {g: v for g, v in summary.items() if not g.startswith("_")}
    out = []
    if name in ("e1", "e1s"):
        for g, gap in sorted(gap_closed(s).items()):
            out.append(f"{g}: closes {100 * gap:.0f}% of the gap to attention")
        for key in sorted({g.rsplit("-", 1)[0] for g in s if g.count("-") == 2}):
            base, log = s.get(f"{key}-none"), s.get(f"{key}-grm_log")
            better = [v for v in ("grm", "ssc") if f"{key}-{v}" in s and log and s[f"{key}-{v}"]["mean"] > log["mean"]]
            if base:
                mc = {g: v["mean"] for g, v in s.items() if g.startswith(key + "-") and not g.endswith("none")}
                above = sum(v > base["mean"] for v in mc.values())
                out.append(f"{key}: {above}/{len(mc)} caching variants above the base memory"
                           + (f"; above Log-Linear++ (grm_log): {', '.join(better) or 'none'}" if log else ""))
        if name == "e1s":
            cached = sorted((g for g in s if g.count("-") == 2 and not g.endswith("-none")),
                            key=lambda g: -s[g]["mean"])
            out.append("ranked: " + ", ".join(f"{g.split('-', 2)[2]} {100 * s[g]['mean']:.1f}" for g in cached))
    elif name in ("e2", "e4"):
        lower = name == "e4"
        for mc, none in (("mc", "none"), ("mc_swept", "none_swept")):
            if mc in s and none in s:
                better = s[mc]["mean"] < s[none]["mean"] if lower else s[mc]["mean"] > s[none]["mean"]
                rates = f" at lr {s[mc]['lr']:g} / {s[none]['lr']:g}" if mc.endswith("_swept") else ""
                out.append(f"MC {'better' if better else 'not better'} than no caching{rates} "
                           f"({s[mc]['mean']:.3f} vs {s[none]['mean']:.3f})")
        if name == "e2" and "attention_4x" in s:
            equal = f"; at MC's steps attention {s['attention']['mean']:.3f}" if "attention" in s else ""
            out.append(f"ceiling: attention trained 4x longer {s['attention_4x']['mean']:.3f}{equal}")
    elif name == "e3":
        for needle in sorted({g.split("-")[0] for g in s}):
            vals = {v: s[f"{needle}-{v}"]["mean"] for v in ("base", "mc", "posttrain", "base_ft", "posttrain_ft")
                    if f"{needle}-{v}" in s}
            out.append(f"{needle}: mean exact match " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in vals.items()))
    elif name == "eb" and "bare" in s:
        for g in sorted(s):
            if g != "bare" and not g.endswith("-none"):
                ok = s[g]["mean"] >= s["bare"]["mean"] - 0.02
                out.append(f"{g}: {100 * s[g]['mean']:.1f} vs bare {100 * s['bare']['mean']:.1f} "
                           f"(min over seeds {100 * min(s[g]['values']):.1f}): "
                           + ("at least as good as the bare layer (within 2 points)" if ok else "below the bare layer"))
    elif name == "e5":
        for ablation, claim in (("token_gates", "without context-dependent gamma"), ("uniform", "uniform weights")):
            if "grm" in s and ablation in s:
                below = s[ablation]["mean"] < s["grm"]["mean"]
                out.append(f"{ablation} ({claim}) {'below' if below else 'not below'} grm "
                           f"({100 * s[ablation]['mean']:.1f} vs {100 * s['grm']['mean']:.1f}): the paper's drop "
                           + ("holds" if below else "does not hold") + " here")
        if "grm" in s and "residual" in s:
            out.append(f"grm {'above' if s['grm']['mean'] > s['residual']['mean'] else 'not above'} residual "
                       f"({100 * s['grm']['mean']:.1f} vs {100 * s['residual']['mean']:.1f}): the paper's gating "
                       "claim " + ("holds" if s["grm"]["mean"] > s["residual"]["mean"] else "does not hold") + " here")
    return out


def write(name: str, outcomes: list[Outcome], notes: list[str], results_dir: Path) -> dict[str, Any]:
    """Write ``<results_dir>/<name>/{table.md, summary.json, *.png}``; returns the summary."""
    folder = results_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    summary = summarise(outcomes)
    sweep = sweep_table(outcomes)
    text = "\n".join([f"# {TITLES[name]}", "", *notes, "", table(name, summary), "", *([sweep, ""] if sweep else []),
                      "Paper: " + PAPER[name], "", *[f"- {v}" for v in verdict(name, summary)]]) + "\n"
    (folder / "table.md").write_text(text)
    pngs = plots(name, summary, folder)
    (folder / "summary.json").write_text(json.dumps({"summary": summary, "notes": notes,
                                                     "plots": [p.name for p in pngs]},
                                                    indent=1, default=float))
    return summary


def write_overview(results_dir: Path, path: Path, preface: str = "") -> Path:
    """``results.md``: ``<results_dir>/notes.md`` (hand-written measurements and caveats, when present), then every
    experiment's table present under ``results_dir``, with the paper beside it."""
    notes = results_dir / "notes.md"
    if not preface and notes.exists():
        preface = notes.read_text().strip()
    parts = ["# Results of the experiment suite", "",
             ("Generated by `python -m mc_jax.experiments <name>` from the job JSONs (one per run); each section "
             f"links its folder under `{results_dir.name}/`. Numbers are held-out accuracy (%) or bits per byte."), ""]
    if preface:
        parts += [preface, ""]
    for name in TITLES:
        table_md = results_dir / name / "table.md"
        if table_md.exists():
            body = table_md.read_text().split("\n", 1)[1]
            parts += [f"## {TITLES[name]}", body.strip(), ""]
        else:
            parts += [f"## {TITLES[name]}", "Not run yet.", "", "Paper: " + PAPER[name], ""]
    path.write_text("\n".join(parts) + "\n")
    return path


__all__ = ["PAPER", "gap_closed", "plots", "summarise", "sweep_table", "table", "verdict", "write", "write_overview"]
