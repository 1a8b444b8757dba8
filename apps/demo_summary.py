"""The demo's results: the table over seeds, the claims it checks, summary.md and the plots."""
from pathlib import Path

import numpy as np

from apps.demo_stages import METRIC_TITLES, METRICS, MODELS, fmt, read_json
from training.pseudo_labels import agreement, read_pseudo_label_file


def pseudo_label_agreement(labels_file: Path, data_root: Path) -> dict | None:
    """How often the pseudo labels of anomalous training videos equal the true clip labels.

    The truth (from the generator's meta.json, never read by training) of a segment is 1
    when any of its sampled frames lies in the anomaly interval. Both files are validated
    (training.pseudo_labels.read_pseudo_label_file, :func:`meta_videos`): a damaged one is a
    DataError naming it, not a traceback at the end of a long demo.
    """
    meta_file = data_root / "meta.json"
    if not (labels_file.is_file() and meta_file.is_file()):
        return None
    videos = meta_videos(meta_file)
    labels = read_pseudo_label_file(labels_file)
    intervals = {path: info["interval"] for path, info in videos.items() if info.get("label") and path in labels}
    return agreement(labels, intervals)


def meta_videos(meta_file: Path) -> dict:
    """``videos`` of a synthetic dataset's meta.json: {path: info dict}, each anomalous video's
    ``interval`` a pair of integers (start < end) or null; DataError naming the file otherwise."""
    from utils.errors import DataError

    hint = "delete the synthetic dataset folder (demo.py generates it again when absent)"
    try:
        videos = read_json(meta_file).get("videos")
    except (OSError, ValueError, RecursionError, AttributeError) as err:
        raise DataError(f"{meta_file} is not a readable JSON object ({type(err).__name__}: {err}); {hint}") from err
    if not isinstance(videos, dict) or not all(isinstance(v, dict) for v in videos.values()):
        raise DataError(f"{meta_file}: 'videos' must be an object of per-video objects; {hint}")
    for path, info in videos.items():
        interval = info.get("interval")
        if interval is not None and not (isinstance(interval, list) and len(interval) == 2
                                         and all(isinstance(v, int) and not isinstance(v, bool) for v in interval)
                                         and 0 <= interval[0] < interval[1]):
            raise DataError(f"{meta_file}: video {path!r} has interval {interval!r}; it must be [start, end] "
                            f"with integers 0 <= start < end, or null; {hint}")
    return videos


def collect(output: Path, seeds, data_root: Path) -> dict:
    """Per-seed metrics of every model from the attack stages' results.json, mean and spread."""
    per_seed = {}
    for seed in seeds:
        root = output / f"seed{seed}"
        row = {}
        for model in MODELS:
            results = read_json(root / f"attack_{model}" / "results.json")
            row[model] = {f"{kind}_{metric}": results[kind][metric] for kind, metric in METRICS}
            row[model].update(clean_ap=results["clean"]["ap"], adv_ap=results["adversarial"]["ap"])
            attack = results["attack"]
        row["pseudo_labels"] = pseudo_label_agreement(root / "pseudo_labels" / "pseudo_labels.json", data_root)
        row["selection"] = selection_of(root)
        per_seed[str(seed)] = row
    chosen = per_seed[str(seeds[0])]["selection"]
    summary = {"models": {}, "per_seed": per_seed, "attack": attack, "curves": training_curves(output, seeds),
               "select": chosen.get("baseline", {}).get("select"),
               "select_advtrain": chosen.get("frameshield", {}).get("select")}
    for model, (title, _) in MODELS.items():
        stats = {}
        for name in per_seed[str(seeds[0])][model]:
            values = np.array([per_seed[str(s)][model][name] for s in seeds], dtype=float)
            stats[name] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                           "min": float(values.min()), "max": float(values.max())}
        summary["models"][model] = {"title": title, **stats}
    summary["claims"] = check_claims(summary["models"])
    return summary


def training_curves(output: Path, seeds) -> dict:
    """{model: {seed: {"plot", "csv"}}}: each trained model's plots/training.png and metrics.csv,
    relative to ``output`` (where summary.md lies); only the files that exist."""
    curves = {}
    for model in MODELS:
        for seed in seeds:
            folder = Path(f"seed{seed}") / model
            files = {"plot": folder / "plots" / "training.png", "csv": folder / "metrics.csv"}
            found = {k: str(v) for k, v in files.items() if (output / v).is_file()}
            if found:
                curves.setdefault(model, {})[str(seed)] = found
    return curves


def selection_of(root: Path) -> dict:
    """{training stage: {"select", "epoch", "epochs"}}: which epoch each trained model is (TRAIN.SELECT)."""
    out = {}
    for model in MODELS:
        try:
            results = read_json(root / model / "results.json")
        except (OSError, ValueError):
            continue
        best = results.get("best") or {}
        out[model] = {"select": results.get("select", "test"), "epoch": best.get("epoch"), "epochs": results.get("epochs")}
    return out


def selection_sentence(summary: dict) -> str:
    """Which epoch each trained model is, in words (TRAIN.SELECT of stage 1 and stage 2)."""
    words = {"val": "the epoch with the best AUC@all on the validation split of the training videos",
             "last": "the last epoch", "test": "the epoch with the best test AUC@all (selection on the test split)"}
    first, second = summary.get("select") or "test", summary.get("select_advtrain") or summary.get("select") or "test"
    return (f"Model selection: the baseline is {words[first]} (TRAIN.SELECT {first}); the adversarially trained "
            f"models are {words[second]} (TRAIN.SELECT {second}).")


def check_claims(models: dict) -> dict:
    """The demo's targets (issue #17: means over seeds), each with the measured value."""
    base, shield = models["baseline"], models["frameshield"]
    drop = base["clean_auc_all"]["mean"] - base["adversarial_auc_all"]["mean"]
    gain = shield["adversarial_auc_all"]["mean"] - base["adversarial_auc_all"]["mean"]
    loss = base["clean_auc_all"]["mean"] - shield["clean_auc_all"]["mean"]
    return {
        "baseline clean AUC@all >= 0.80": {"value": base["clean_auc_all"]["mean"],
                                           "holds": base["clean_auc_all"]["mean"] >= 0.80},
        "PGD drops baseline AUC@all by >= 0.30": {"value": drop, "holds": drop >= 0.30},
        "FrameShield adv AUC@all beats baseline's by >= 0.15": {"value": gain, "holds": gain >= 0.15},
        "FrameShield clean AUC@all at most 0.05 below baseline": {"value": loss, "holds": loss <= 0.05},
    }


def summary_markdown(summary: dict, seeds, meta: dict) -> str:
    attack = summary["attack"]
    spread = "mean ± std over seeds " + ", ".join(str(s) for s in seeds) if len(seeds) > 1 else f"seed {seeds[0]}"
    lines = [f"# FrameShield demo ({meta['preset']} preset)", "",
             f"Frame-level AUROC on the synthetic test set ({spread}). Attack: L-inf PGD, "
             f"eps {attack['eps_255']:g}/255, {attack['steps']} steps of {attack['step_size_255']:.3g}/255, "
             "every test segment pushed away from its true label. " + selection_sentence(summary), "",
             "| model | " + " | ".join(METRIC_TITLES) + " |", "|---|" + "---|" * len(METRICS)]
    for model, stats in summary["models"].items():
        cells = []
        for kind, metric in METRICS:
            s = stats[f"{kind}_{metric}"]
            cells.append(fmt(s["mean"]) + (f" ± {fmt(s['std'])}" if len(seeds) > 1 else ""))
        lines.append(f"| {stats['title']} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines += ["", "Per seed, clean -> attacked AUC@all:", "",
                  "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---|" + "---|" * len(seeds)]
        for model, stats in summary["models"].items():
            rows = [summary["per_seed"][str(s)][model] for s in seeds]
            lines.append(f"| {stats['title']} | " + " | ".join(
                f"{fmt(r['clean_auc_all'])} -> {fmt(r['adversarial_auc_all'])}" for r in rows) + " |")
    lines += ["", "Targets (means):", ""]
    for claim, result in summary["claims"].items():
        lines.append(f"- {claim}: {fmt(result['value'])} ({'holds' if result['holds'] else 'NOT met'})")
    agreements = [r["pseudo_labels"] for r in summary["per_seed"].values() if r.get("pseudo_labels")]
    if agreements:
        acc = np.mean([a["accuracy"] for a in agreements])
        lines += ["", f"Pseudo labels of the anomalous training videos agree with the true clip labels "
                      f"on {100 * acc:.1f}% of segments (mean over seeds)."]
    curves = summary.get("curves") or {}
    if curves:
        lines += ["", "Training curves (loss parts and LR per step, test AUC per epoch; TensorBoard: "
                      "`tensorboard --logdir` this folder):", ""]
        for model, per_seed in curves.items():
            links = []
            for seed, files in per_seed.items():
                link = f"[seed {seed}]({files['plot']})" if "plot" in files else f"seed {seed}"
                links.append(link + (f" ([csv]({files['csv']}))" if "csv" in files else ""))
            lines.append(f"- {summary['models'][model]['title']}: " + ", ".join(links))
    wall = f"Wall time: {meta['wall_s']:.0f} s on {meta['device']} ({meta['jobs']} parallel stage(s))"
    reused = meta.get("reused", [])
    if reused:  # a resumed run: its wall time does not cover the stages finished before
        wall += (f"; {len(reused)} stage(s) were reused from an earlier run (their own run times "
                 f"are in demo_state.json)")
    lines += ["", wall + ".", ""]
    return "\n".join(lines)


def print_table(summary: dict, seeds) -> None:
    print()
    head = f"{'model':<36}" + "".join(f"{t:>17}" for t in METRIC_TITLES)
    print(head)
    print("-" * len(head))
    for stats in summary["models"].values():
        cells = []
        for kind, metric in METRICS:
            s = stats[f"{kind}_{metric}"]
            cells.append(fmt(s["mean"]) + (f" ± {fmt(s['std'], 2)}" if len(seeds) > 1 else ""))
        print(f"{stats['title']:<36}" + "".join(f"{c:>17}" for c in cells))
    print()
    for claim, result in summary["claims"].items():
        print(f"  {'ok ' if result['holds'] else 'NOT'} {claim}: {fmt(result['value'])}")
    print(flush=True)


# ----------------------------------------------------------------------------- plots
def _attack_scores(folder: Path) -> dict:
    from training.stage import read_scores

    return read_scores(folder / "scores.npz")


def plot_roc_curves(path: Path, output: Path, seed) -> Path:
    """ROC of the baseline and FrameShield, clean and attacked (one seed)."""
    from sklearn.metrics import roc_curve

    from utils import plots

    curves = {}
    for model, name in (("baseline", "PromptMIL"), ("frameshield", "FrameShield")):
        data = _attack_scores(output / f"seed{seed}" / f"attack_{model}")
        labels = data["frame_labels"]
        for kind in ("clean", "adversarial"):
            scores = data[f"{kind}_frame_scores"]
            fpr, tpr, _ = roc_curve(labels, scores)
            from sklearn.metrics import roc_auc_score

            curves[f"{name}, {kind}"] = (fpr, tpr, roc_auc_score(labels, scores))
    return plots.plot_roc(path, curves, title=f"frame-level ROC under PGD (seed {seed})")


def pick_videos(data_root: Path, count=4) -> list:
    """Test videos to draw: the first anomalous one of each anomaly type (list order), then normal."""
    meta = meta_videos(data_root / "meta.json")
    chosen, types = [], set()
    for path, info in meta.items():
        if info["split"] == "test" and info.get("label") and info.get("anomaly") not in types:
            chosen.append(path)
            types.add(info.get("anomaly"))
    chosen = chosen[:count - 1]
    chosen += [p for p, i in meta.items() if i["split"] == "test" and not i.get("label")][:1]
    return chosen


def plot_score_grid(path: Path, output: Path, seed, data_root: Path) -> Path:
    """Per-frame P(abnormal), clean vs attacked, of a few test videos: baseline | FrameShield."""
    from matplotlib.figure import Figure

    from utils.plots import anomaly_intervals, save_figure

    videos = pick_videos(data_root)
    meta = meta_videos(data_root / "meta.json")
    models = (("baseline", "PromptMIL"), ("frameshield", "FrameShield"))
    data = {m: _attack_scores(output / f"seed{seed}" / f"attack_{m}") for m, _ in models}
    figure = Figure(figsize=(11, 1.9 * len(videos) + 0.6))
    axes = figure.subplots(len(videos), len(models), squeeze=False, sharey=True)
    for row, video in enumerate(videos):
        for col, (model, title) in enumerate(models):
            d = data[model]
            names = [str(v) for v in d["videos"]]
            i = names.index(video)
            lo, hi = d["frame_offsets"][i], d["frame_offsets"][i + 1]
            ax = axes[row, col]
            for start, end in anomaly_intervals(d["frame_labels"][lo:hi]):
                ax.axvspan(start, end, color="red", alpha=0.15, linewidth=0)
            frames = np.arange(hi - lo)
            ax.plot(frames, d["clean_frame_scores"][lo:hi], color="tab:blue", label="clean")
            ax.plot(frames, d["adversarial_frame_scores"][lo:hi], color="tab:orange", label="PGD-attacked")
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlim(0, max(hi - lo - 1, 1))
            kind = meta.get(video, {}).get("anomaly") or "normal"
            ax.set_title(f"{title}: {video.split('/')[-1]} ({kind})", fontsize=9)
            if col == 0:
                ax.set_ylabel("P(abnormal)")
            if row == len(videos) - 1:
                ax.set_xlabel("frame")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    figure.suptitle("red: ground-truth anomaly", fontsize=9, y=0.995)
    figure.tight_layout()
    save_figure(figure, path, dpi=80, tight=False)
    return path


def plot_srd_example(path: Path, data_root: Path, clips=4, frames=2) -> Path:
    """One normal training video before (top) and after (bottom) SRD, as in training."""
    import torch
    from matplotlib.figure import Figure

    from datasets import srd
    from datasets.frames import open_video
    from datasets.lists import parse_list_file
    from utils.plots import save_figure

    record = next(r for r in parse_list_file(data_root / "train.txt") if not r.is_anomalous)
    reader = open_video(data_root / record.path, record.num_frames, list_start=record.start_frame)
    inds = np.linspace(0, record.num_frames - 1, clips * frames).round().astype(int)
    video = reader.read(inds).view(clips, frames, 3, *reader.read([0]).shape[-2:])
    for seed in range(200):  # the first SRD draw that leaves clip 0 untouched, for contrast
        out, pa_labels, boxes = srd.apply_srd(video, torch.Generator().manual_seed(seed), force=True)
        if pa_labels[0] == 0 and pa_labels.sum() >= 1:
            break
    figure = Figure(figsize=(1.3 * clips * frames, 3.0))
    axes = figure.subplots(2, clips * frames)
    for k in range(clips):
        for t in range(frames):
            col = k * frames + t
            for row, source in enumerate((video, out)):
                ax = axes[row, col]
                ax.imshow(source[k, t].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 1 and pa_labels[k]:
                    x0, y0, x1, y1 = boxes[k, t].tolist()
                    ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
                        (x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", linewidth=1))
            if t == 0:
                axes[1, col].set_xlabel(f"clip {k}: label {int(pa_labels[k])}", fontsize=8, loc="left")
    axes[0, 0].set_ylabel("normal", fontsize=9)
    axes[1, 0].set_ylabel("after SRD", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path, dpi=80, tight=False)
    return path


# ----------------------------------------------------------------------------- entry
