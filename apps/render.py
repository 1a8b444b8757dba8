"""What infer.py shows a person: the score plot and the annotated mp4.

The plot puts P(abnormal) over time with the threshold, detected intervals and shaded
ground truth; the mp4 (H.264 via PyAV) draws on every frame a score bar with the threshold tick,
the score and the time as text, and a red border on frames above the threshold, around the
highest-scoring moment.
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
# A 3x5 bitmap font for the numbers drawn on each frame (no font dependency): "1" = ink.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ".": ("000", "000", "000", "000", "010"), ":": ("000", "010", "000", "010", "000"),
    "s": ("000", "111", "100", "011", "111"), "t": ("010", "111", "010", "010", "011"),
    "p": ("000", "111", "101", "111", "100"), "/": ("001", "001", "010", "100", "100"),
    "-": ("000", "000", "111", "000", "000"), " ": ("000", "000", "000", "000", "000"),
}


def text_mask(text, scale=1) -> np.ndarray:
    """bool [5*scale, (4*len - 1)*scale]: ``text`` in the 3x5 bitmap font (one blank column
    between characters); characters outside the font are drawn blank."""
    blank = _GLYPHS[" "]
    rows = ["0".join(_GLYPHS.get(c, blank)[r] for c in text) for r in range(5)]
    mask = np.array([[c == "1" for c in row] for row in rows], dtype=bool)
    return mask.repeat(scale, axis=0).repeat(scale, axis=1)


def _stamp(frame, mask, top, left, color):
    """Paint ``mask`` (bool [h, w]) in ``color`` onto ``frame`` (uint8 [3, H, W]) at (top, left),
    over a dark box one glyph pixel wider on every side; clipped at the frame's edges."""
    pad = max(1, mask.shape[0] // 5)
    _, height, width = frame.shape
    y0, x0 = max(0, top - pad), max(0, left - pad)
    y1, x1 = min(height, top + mask.shape[0] + pad), min(width, left + mask.shape[1] + pad)
    frame[:, y0:y1, x0:x1] = (frame[:, y0:y1, x0:x1] // 4)
    h, w = min(mask.shape[0], height - top), min(mask.shape[1], width - left)
    if h <= 0 or w <= 0:
        return
    ink = torch.from_numpy(mask[:h, :w])
    region = frame[:, top:top + h, left:left + w]
    region[:, ink] = color.view(3, 1).expand(3, int(ink.sum()))


def overlay_frames(frames, scores, threshold, times=None):
    """Draw the score bar, the score and time as text and, on frames above ``threshold``, a red border.

    frames: uint8 [N, 3, H, W]; scores: [N]; times: [N] seconds (None: no time). The bar along
    the bottom is filled to ``score * W`` (green at or below the threshold, red above) on a dark
    track; the threshold is a white tick with black edges that rises above the bar, so it shows
    at any score, with its value above it. Top left: the score (4 decimals) and the time ("12.3s"), white or red, in a
    3x5 bitmap font scaled to the frame.
    """
    out = frames.clone()
    n, _, h, w = out.shape
    bar, border = max(4, h // 16), max(2, min(h, w) // 40)
    scale = max(1, h // 60)
    red = torch.tensor([230, 20, 20], dtype=torch.uint8).view(3, 1, 1)
    green = torch.tensor([40, 200, 60], dtype=torch.uint8).view(3, 1, 1)
    white = torch.tensor([255, 255, 255], dtype=torch.uint8)
    half = max(1, scale // 2)  # the tick is 2 * half px wide, with a 1 px black edge each side
    tick = min(w - half - 1, max(half + 1, int(round(threshold * w))))  # whole, even at 0 or 1
    lo, hi = max(0, tick - half), min(w, tick + half)
    rise = min(h - bar, bar)  # the tick stands out above the bar by one bar height
    label = text_mask(f"{threshold:.4g}", scale)  # the threshold's value above its tick
    label_left = min(max(border + scale, tick - label.shape[1] // 2), max(0, w - label.shape[1] - border - scale))
    for i in range(n):
        score = float(scores[i])
        fill = int(round(min(max(score, 0.0), 1.0) * w))
        anomalous = score > threshold
        if anomalous:  # first, so that the bar and the tick stay on top of it
            out[i, :, :border, :] = red
            out[i, :, h - border:, :] = red
            out[i, :, :, :border] = red
            out[i, :, :, w - border:] = red
        out[i, :, h - bar:, :] = 24
        out[i, :, h - bar:, :fill] = red if anomalous else green
        out[i, :, h - bar - rise:, max(0, lo - 1):min(w, hi + 1)] = 0
        out[i, :, h - bar - rise:, lo:hi] = 255
        text = f"{score:.4f}" + (f" {float(times[i]):.1f}s" if times is not None else "")
        _stamp(out[i], text_mask(text, scale), border + 2 * scale, border + 2 * scale,
               red.view(3) if anomalous else white)
        _stamp(out[i], label, max(0, h - bar - rise - label.shape[0] - 2 * scale), label_left, white)
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
                frames = overlay_frames(frames, scores[inds], threshold, np.asarray(inds) / source.fps)
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
