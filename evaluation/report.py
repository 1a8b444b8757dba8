"""The robustness report: robustness.json, robustness.md and the eps / steps sweep plots.

Input: {model name: evaluation.robustness.evaluate_robustness result}.
"""
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from utils.io import atomic_write_json, atomic_write_text
from utils.plots import save_figure

METRIC_KEYS = ("auc_all", "auc_ano", "ap")


def format_table(results_by_model) -> str:
    """Plain-text table (for the log) of every setting's AUC@all / AUC@ano / AP per model."""
    lines = []
    for name, res in results_by_model.items():
        lines.append(f"{name}:")
        lines.append(f"  {'attack':<58} AUC@all  AUC@ano  AP      seg/s")
        for r in [res["clean"]] + list(res["rows"]):
            rate = f"{r['segments_per_s']:.2f}" if "segments_per_s" in r else "-"
            lines.append(f"  {r['key']:<58} {r['auc_all']:.4f}   {r['auc_ano']:.4f}   {r['ap']:.4f}  {rate}")
    return "\n".join(lines)


def write_robustness_report(output_dir, results_by_model, markdown=True, transfer_from=None):
    """robustness.json, plots/robustness_eps.png and _steps.png and (markdown) robustness.md.

    results_by_model: {model name: :func:`evaluate_robustness` result}. Returns the paths written.
    """
    output = Path(output_dir)
    paths = []
    plots = {}
    for axis in ("eps", "steps"):
        curves = {n: r["sweeps"][axis] for n, r in results_by_model.items() if axis in r.get("sweeps", {})}
        if curves:
            path = output / "plots" / f"robustness_{axis}.png"
            plot_sweep(curves, axis, path)
            plots[axis] = path
            paths.append(path)
    atomic_write_json(output / "robustness.json", summarize(results_by_model))
    paths.append(output / "robustness.json")
    if markdown:
        atomic_write_text(output / "robustness.md", render_markdown(results_by_model, plots, output, transfer_from))
        paths.append(output / "robustness.md")
    return paths


def summarize(results_by_model) -> dict:
    """JSON-ready copy of {model name: evaluate_robustness result} without the per-video
    scores (NaN -> None): what robustness.json holds, e.g. for results.json["robustness"]."""
    return _json_ready({name: {k: v for k, v in res.items() if k != "videos"}
                        for name, res in results_by_model.items()})


def _json_ready(obj):
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def plot_sweep(curves, axis, path):
    """One row of panels (AUC@all, AUC@ano, AP) versus eps or steps, one line per model."""
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    xkey = "eps_255" if axis == "eps" else "steps"
    for ax, metric, title in zip(axes, METRIC_KEYS, ("AUC@all", "AUC@ano", "AP")):
        for name, curve in curves.items():
            xs = np.asarray(curve[xkey], dtype=float)
            ys = np.asarray([np.nan if v is None else v for v in curve[metric]], dtype=float)
            ax.plot(xs, ys, marker="o", label=f"{name} ({curve['attack']})")
        if axis == "eps":
            ax.set_xscale("symlog", linthresh=0.25)
            ax.set_xlabel("eps (1/255)")
        else:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel("attack steps")
        if metric != "ap":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)


def render_markdown(results_by_model, plots, output, transfer_from=None) -> str:
    """robustness.md: settings x models table, sanity checks per model, the sweep plots."""
    names = list(results_by_model)
    keys = []
    for res in results_by_model.values():
        for r in res["rows"]:
            if r["key"] not in keys:
                keys.append(r["key"])
    out = ["# Robustness report", "",
           "Frame-level AUC@all / AUC@ano / AP (published metric) of clean and attacked test segments; "
           "eps in 1/255 units, L-infinity, [0, 1] pixels. See docs/ROBUSTNESS.md.", ""]
    if transfer_from:
        out += [f"Transfer attacks are crafted on `{transfer_from}`.", ""]
    header = "| attack | " + " | ".join(f"{n} AUC@all | {n} AUC@ano | {n} AP" for n in names) + " |"
    out += [header, "|" + "---|" * (1 + 3 * len(names))]

    def cells(row):
        if row is None:
            return " - | - | - "
        return " | ".join(_fmt(row[k]) for k in METRIC_KEYS)
    out.append("| clean | " + " | ".join(cells(results_by_model[n]["clean"]) for n in names) + " |")
    for key in keys:
        row_cells = [cells(next((r for r in results_by_model[n]["rows"] if r["key"] == key), None)) for n in names]
        out.append(f"| `{key}` | " + " | ".join(row_cells) + " |")
    out += ["", "Worst case over all attacks (lowest AUC@all):", ""]
    for n in names:
        rows = [r for r in results_by_model[n]["rows"] if not math.isnan(r["auc_all"])]
        if rows:
            worst = min(rows, key=lambda r: r["auc_all"])
            out.append(f"- **{n}**: {_fmt(worst['auc_all'])} (`{worst['key']}`)")
    out += ["", "## Sanity checks", ""]
    for n in names:
        res = results_by_model[n]
        out.append(f"**{n}** (checkpoint `{res.get('checkpoint')}`, {res['segments']} segments, "
                   f"{res['segments_per_s']:.2f} attacked segments/s for the main attack):")
        out.append("")
        for c in res["sanity"]:
            mark = {True: "pass", False: "**FAIL**", None: "n/a"}[c["passed"]]
            out.append(f"- {mark} `{c['check']}`: {c['detail']}")
        out.append("")
    if plots:
        out += ["## Sweeps", ""]
        for axis, path in plots.items():
            out.append(f"![AUC versus {axis}]({Path(path).relative_to(output).as_posix()})")
            out.append("")
    return "\n".join(out) + "\n"


def _fmt(value):
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"
