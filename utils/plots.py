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
