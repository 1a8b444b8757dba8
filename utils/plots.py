"""Evaluation plots: ROC curve and per-video anomaly-score curves.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no display, no global
backend switch) and written atomically as PNG.
"""
import io
import re
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from utils.io import atomic_write_bytes


def save_figure(figure, path, dpi=100, tight=True) -> Path:
    """Render a matplotlib ``Figure`` on the Agg canvas and write it as PNG atomically."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def anomaly_intervals(labels):
    """[(start, end)] end-exclusive runs of 1 in a per-frame 0/1 array."""
    labels = np.asarray(labels).astype(bool).astype(np.int8)
    edges = np.diff(np.concatenate([[0], labels, [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def plot_roc(path, curves, title="ROC (frame level)"):
    """ROC curves to ``path``. ``curves``: {label: (fpr, tpr, auc)} (e.g. clean, adversarial)."""
    figure = Figure(figsize=(4.5, 4.5))
    axes = figure.add_subplot()
    for label, (fpr, tpr, auc) in curves.items():
        axes.plot(fpr, tpr, label=f"{label} (AUC {auc:.4f})")
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate",
             ylabel="true positive rate", title=title)
    axes.legend(loc="lower right")
    return save_figure(figure, path)


def plot_score_curve(path, scores, labels, adversarial_scores=None, title=""):
    """Per-frame anomaly scores of one video with its ground-truth intervals shaded.

    scores, adversarial_scores: [num_frames] in [0, 1]; labels: [num_frames] 0/1.
    """
    figure = Figure(figsize=(8, 2.8))
    axes = figure.add_subplot()
    for index, (start, end) in enumerate(anomaly_intervals(labels)):
        axes.axvspan(start, end, color="red", alpha=0.15, linewidth=0,
                     label="ground-truth anomaly" if index == 0 else None)
    frames = np.arange(len(scores))
    axes.plot(frames, scores, color="tab:blue", label="clean")
    if adversarial_scores is not None:
        axes.plot(frames, adversarial_scores, color="tab:orange", label="adversarial")
    axes.set(xlim=(0, max(len(scores) - 1, 1)), ylim=(-0.02, 1.02), xlabel="frame",
             ylabel="P(abnormal)", title=title)
    axes.legend(loc="upper right", fontsize="small")
    return save_figure(figure, path)


def safe_file_name(name):
    """A file name made of the video name's letters, digits, '-', '_' and '.'."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._")
    return cleaned or "video"


def plot_videos(out_dir, per_video, adversarial=None, limit=None):
    """One score-curve PNG per video in ``out_dir``; returns the paths.

    per_video: {name: {"scores", "labels"}} (evaluation.metrics.evaluate_scores' ``per_video``);
    adversarial: the same for the attacked clips (drawn on the same axes when given);
    limit: at most this many videos (anomalous ones first, then in order).
    """
    names = sorted(per_video, key=lambda n: -int(np.asarray(per_video[n]["labels"]).max() > 0))
    if limit is not None:
        names = names[:limit]
    paths = []
    for name in names:
        entry = per_video[name]
        adv = adversarial[name]["scores"] if adversarial and name in adversarial else None
        paths.append(plot_score_curve(Path(out_dir) / f"scores_{safe_file_name(name)}.png",
                                      entry["scores"], entry["labels"], adv, title=name))
    return paths


def write_stage_plots(out_dir, evals, title="", limit=16):
    """All plots of an evaluated stage under ``out_dir``; returns the written paths.

    evals: {"clean": evaluate_scores result, optionally "adversarial": the same}. Writes
    ``roc.png`` (one curve per entry whose ROC is defined) and ``scores_<video>.png`` for at
    most ``limit`` videos (anomalous first; None = all), adversarial curves on the same axes.
    """
    out_dir = Path(out_dir)
    paths = []
    curves = {name: (e["roc"]["fpr"], e["roc"]["tpr"], e["auc_all"])
              for name, e in evals.items() if e.get("roc") is not None}
    if curves:
        paths.append(plot_roc(out_dir / "roc.png", curves, title=f"ROC {title}".strip()))
    clean = evals.get("clean")
    if clean is not None:
        adversarial = evals.get("adversarial")
        paths += plot_videos(out_dir, clean["per_video"],
                             adversarial["per_video"] if adversarial else None, limit=limit)
    return paths


def plot_training(path, rows, title=""):
    """Training curves to ``path``: loss parts and LR per optimizer step, test metrics per epoch.

    rows: metrics.csv rows (training.scalars.read_metrics): ``kind`` "train" rows with
    ``step``, ``loss_<part>``, ``lr``; ``kind`` "eval" rows with ``epoch``, ``auc_all``,
    ``auc_ano``, ``ap`` (and ``adv_*`` after an attack). Returns the path.
    """
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    figure = Figure(figsize=(12, 3.4))
    loss_axes, lr_axes, eval_axes = figure.subplots(1, 3)
    steps = [r["step"] for r in train]
    parts = [k for k in dict.fromkeys(k for r in train for k in r) if k.startswith("loss_")]
    for key in parts:
        values = [r.get(key) for r in train]
        loss_axes.plot(steps, [np.nan if v is None else v for v in values], label=key[5:],
                       linewidth=2 if key == "loss_total" else 1)
    loss_axes.set(xlabel="optimizer step", ylabel="loss", title="loss parts (unweighted)")
    if parts:
        loss_axes.legend(fontsize="small")
    lr_axes.plot(steps, [r.get("lr") for r in train], color="tab:green")
    lr_axes.set(xlabel="optimizer step", ylabel="learning rate", title="LR")
    lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    epochs = [r["epoch"] for r in evals]
    for key, style in (("auc_all", "-o"), ("auc_ano", "-s"), ("ap", "-^"),
                       ("adv_auc_all", "--o"), ("adv_auc_ano", "--s"), ("adv_ap", "--^")):
        values = [r.get(key) for r in evals]
        if any(v is not None for v in values):
            eval_axes.plot(epochs, [np.nan if v is None else v for v in values], style, label=key, markersize=4)
    eval_axes.set(xlabel="epoch", ylabel="frame-level metric", ylim=(0, 1.02), title="test")
    if evals:
        eval_axes.legend(fontsize="small", loc="lower right")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)
