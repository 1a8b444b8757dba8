"""What infer.py shows a person: the score plot and the annotated mp4.

The plot puts P(abnormal) over time with the threshold, detected intervals and shaded
ground truth; the mp4 (H.264 via PyAV) draws a score bar on every frame and a red border on
frames above the threshold, around the highest-scoring moment.
"""
import math
from fractions import Fraction

import numpy as np
import torch

from utils.io import atomic_path

DEFAULT_RENDER_SECONDS = 20.0


def plot_scores(path, times, clean, threshold, labels=None, attacked=None, auc=None,
                attacked_auc=None, intervals=(), title=""):
    """Score over time (seconds) with the threshold line, shaded ground truth and AUC."""
    from matplotlib.figure import Figure

    from utils.plots import anomaly_intervals, save_figure

    figure = Figure(figsize=(9, 3))
    axes = figure.add_subplot()
    step = times[1] - times[0] if len(times) > 1 else 1.0
    if labels is not None:
        for k, (start, end) in enumerate(anomaly_intervals(labels)):
            axes.axvspan(times[start], times[end - 1] + step, color="red", alpha=0.15, linewidth=0,
                         label="ground truth" if k == 0 else None)
    for k, interval in enumerate(intervals):
        axes.axvspan(interval["start_s"], interval["end_s"], ymin=0.97, ymax=1.0, color="black",
                     linewidth=0, label="detected" if k == 0 else None)
    axes.plot(times, clean, color="tab:blue", label="clean" + (f" (AUC {auc:.3f})" if auc is not None and
                                                                 math.isfinite(auc) else ""))
    if attacked is not None:
        label = "attacked (PGD)" + (f" (AUC {attacked_auc:.3f})" if attacked_auc is not None and
                                    math.isfinite(attacked_auc) else "")
        axes.plot(times, attacked, color="tab:orange", label=label)
    axes.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    axes.set(xlim=(0, max(times[-1] + step, step)), ylim=(-0.02, 1.04), xlabel="time (s)",
             ylabel="P(abnormal)", title=title)
    axes.legend(loc="upper right", fontsize="small")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- rendering
def overlay_frames(frames, scores, threshold):
    """Draw the score bar and, on frames scoring above ``threshold``, a red border.

    frames: uint8 [N, 3, H, W]; scores: [N]. The bar along the bottom is filled to
    ``score * W`` (green below the threshold, red above) with a white tick at the threshold.
    """
    out = frames.clone()
    n, _, h, w = out.shape
    bar, border = max(4, h // 16), max(2, min(h, w) // 40)
    red = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    green = torch.tensor([40, 200, 60], dtype=torch.uint8).view(3, 1, 1)
    out[:, :, h - bar:, :] = 24
    tick = min(w - 1, max(0, int(round(threshold * w))))
    for i in range(n):
        score = float(scores[i])
        fill = int(round(min(max(score, 0.0), 1.0) * w))
        anomalous = score > threshold
        out[i, :, h - bar:, :fill] = red if anomalous else green
        out[i, :, h - bar:, max(0, tick - 1):tick + 1] = 255
        if anomalous:
            out[i, :, :border, :] = red
            out[i, :, h - border:, :] = red
            out[i, :, :, :border] = red
            out[i, :, :, w - border:] = red
    return out


def _encoder_size(h, w, min_short=240, max_long=960):
    """Output size: small videos scaled up by an integer factor, large ones down; even sides."""
    scale = 1.0
    if min(h, w) < min_short:
        scale = float(math.ceil(min_short / min(h, w)))
    elif max(h, w) > max_long:
        scale = max_long / max(h, w)
    return max(2, int(h * scale) // 2 * 2), max(2, int(w * scale) // 2 * 2)


def render_annotated(path, source, scores, threshold, max_seconds=DEFAULT_RENDER_SECONDS, chunk=32):
    """A short annotated mp4 (H.264 via PyAV) around the highest-scoring frame.

    At most ``max_seconds`` of video are written, centred on the peak score (the whole
    video when shorter). Frames are decoded and encoded in chunks. Returns a dict with the
    path and the rendered frame range.
    """
    import av
    import torch.nn.functional as F

    count = min(source.num_frames, max(1, int(round(max_seconds * source.fps))))
    peak = int(np.argmax(scores))
    first = min(max(0, peak - count // 2), source.num_frames - count)
    rate = Fraction(source.fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        container = av.open(str(tmp), mode="w", format="mp4")
        try:
            stream = None
            for lo in range(first, first + count, chunk):
                inds = list(range(lo, min(lo + chunk, first + count)))
                frames = source.reader.read(inds)
                size = _encoder_size(*frames.shape[-2:])
                if tuple(frames.shape[-2:]) != size:
                    mode = "nearest" if size[0] > frames.shape[-2] else "area"
                    frames = F.interpolate(frames.float(), size=size, mode=mode).round().clamp(0, 255).to(torch.uint8)
                frames = overlay_frames(frames, scores[inds], threshold)
                if stream is None:
                    stream = container.add_stream("libx264", rate=rate)
                    stream.height, stream.width = size
                    stream.pix_fmt = "yuv420p"
                for array in frames.permute(0, 2, 3, 1).contiguous().numpy():
                    for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                        container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        finally:
            container.close()
    return {"path": str(path), "start_frame": first, "end_frame": first + count,
            "start_s": round(first / source.fps, 6), "end_s": round((first + count) / source.fps, 6)}
