"""Spatiotemporal Region Distortion (SRD): pseudo-anomalies with exact clip labels.

A localized region of a *normal* training item is cut from the first frame of a
contiguous run of clips, severely distorted, and pasted into every frame of that run
while it moves along a straight line. Those clips are labelled anomalous (1).

Everything works on whole tensors, never per-frame conversions: one patch is distorted
(``grid_sample`` for elastic/swirl, banded-matrix products for Gaussian smoothing, one
affine map for colour) and written into each frame's box by a strided-view copy. Every
random number comes from the ``torch.Generator`` passed in, so a call never touches or
reseeds a global RNG and two calls with one generator draw fresh fields. Pixels outside
the pasted boxes are left bit for bit as they were.

Choices where the published code is loose: salt and pepper each hit a ``salt`` fraction
of the patch's pixels (all channels); "torn paper" lines are white, one pixel wide; the
hue turn is a YIQ rotation; in gradcam mode a box that covers the blob poorly in all
``SALIENCY_TRIES`` draws is replaced by the best-covered one (not the whole blob box).

Sizes: a training item is ``clips [K, T, 3, H, W]`` (uint8 or float in [0, 1]).
The published figures (speed 20-35 px/frame, elastic alpha 40 / sigma 4, blur kernel 5)
are for 224 px frames; they are scaled by ``min(H, W) / 224``.
"""
from __future__ import annotations

import functools
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from utils.errors import ConfigError, DataError

logger = logging.getLogger("FrameShield.srd")

SEVERITIES = ("light", "medium", "heavy")
MODES = ("center", "gradcam")
REFERENCE_SIZE = 224
MIN_SPEED, MAX_SPEED = 20.0, 35.0  # px per frame at 224 px

# Per-severity settings (published levels): how many distortions, and each one's strength.
LEVELS = {
    "light": dict(count=(2, 3), alpha=20.0, sigma=2.0, salt=0.01, lines=5,
                  jitter=(0.2, 0.1), swirl=1.0, blur=3),
    "medium": dict(count=(3, 6), alpha=40.0, sigma=4.0, salt=0.05, lines=10,
                   jitter=(0.5, 0.2), swirl=3.0, blur=5),
    "heavy": dict(count=(6, 6), alpha=60.0, sigma=6.0, salt=0.10, lines=20,
                  jitter=(0.8, 0.3), swirl=5.0, blur=7),
}
SALIENCY_THRESHOLD = 0.5
SALIENCY_TRIES = 10


# ----------------------------------------------------------------------------- random
def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=g).item()


def _randint(g: torch.Generator, low: int, high: int) -> int:
    """Uniform integer in [low, high] (both ends included)."""
    return int(torch.randint(low, high + 1, (), generator=g).item())


# ----------------------------------------------------------------------------- filters
def _gaussian_kernel1d(sigma: float, radius: int) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _reflect_index(n: int, r: int) -> torch.Tensor:
    """Source index of each of the ``n + 2r`` positions of a reflect-101 padded axis."""
    src = torch.arange(-r, n + r)
    period = max(2 * (n - 1), 1)
    src = src.remainder(period)
    return torch.where(src >= n, period - src, src)


@functools.lru_cache(maxsize=256)
def _blur_matrix(n: int, sigma: float, radius: int, valid: bool) -> torch.Tensor:
    """Matrix applying a 1-D Gaussian along an axis of output length ``n``.

    ``valid=True``: ``[n, n + 2*radius]``, a 'valid' convolution of a longer input.
    ``valid=False``: ``[n, n]``, same size, reflect-101 borders folded into the matrix.
    Blurring a patch by two small matrix products is several times faster on CPU than
    a depthwise conv2d; matrices are cached per size (patch sides take few values).
    """
    kernel = _gaussian_kernel1d(sigma, radius)
    taps = kernel.numel()
    cols = torch.arange(n)[:, None] + torch.arange(taps)[None, :]
    weights = kernel.expand(n, taps).contiguous()
    band = torch.zeros(n, n + taps - 1, dtype=torch.float64).scatter_(1, cols, weights)
    if not valid:
        band = torch.zeros(n, n, dtype=torch.float64).index_add_(1, _reflect_index(n, radius), band)
    return band.float()


def _blur(img: torch.Tensor, sigma: float, radius: int, valid: bool) -> torch.Tensor:
    """Gaussian-blur ``img [C, h, w]`` along both axes (output ``[C, h-2r, w-2r]`` if ``valid``)."""
    h, w = img.shape[-2:]
    grow = 2 * radius if valid else 0
    rows = _blur_matrix(h - grow, float(sigma), radius, valid)
    cols = _blur_matrix(w - grow, float(sigma), radius, valid)
    return rows @ img @ cols.T


def _grid_units(h: int, w: int) -> torch.Tensor:
    """``[2]``: grid_sample units (align_corners=True) per pixel along x and y."""
    return torch.tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])


def _identity_grid(h: int, w: int) -> torch.Tensor:
    """``[h, w, 2]`` sampling grid (x, y in [-1, 1]) that reproduces the image."""
    gx, gy = torch.linspace(-1.0, 1.0, w), torch.linspace(-1.0, 1.0, h)
    return torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)


def _sample(patch: torch.Tensor, grid: torch.Tensor, padding: str) -> torch.Tensor:
    """Bilinear sample ``patch [3, h, w]`` at ``grid [h, w, 2]`` (grid_sample units)."""
    out = F.grid_sample(patch.unsqueeze(0), grid.unsqueeze(0), mode="bilinear",
                        padding_mode=padding, align_corners=True)
    return out.squeeze(0)


# ----------------------------------------------------------------------------- distortions
# Each takes a float patch [3, h, w] in [0, 1], the generator, the level's settings and
# the frame-size scale, and returns a new patch of the same shape, still in [0, 1].
def elastic(patch, g, level, scale):
    """Smoothed random displacement field (alpha px, sigma px), fresh on every call.

    Displacement = alpha * blur_sigma(uniform noise in [-1, 1]) per axis; the blur is
    linear with unit gain, so it is computed as ``alpha * (2 * blur(u) - 1)`` for u in [0, 1].
    """
    h, w = patch.shape[-2:]
    sigma = max(level["sigma"] * scale, 0.5)
    r = max(int(math.ceil(3.0 * sigma)), 1)  # kernel cut at 3 sigma
    smooth = _blur(torch.rand((2, h + 2 * r, w + 2 * r), generator=g), sigma, r, valid=True)
    reach = level["alpha"] * scale * _grid_units(h, w)  # alpha px in grid units, per axis
    grid = torch.addcmul(_identity_grid(h, w) - reach, smooth.permute(1, 2, 0), 2.0 * reach)
    return _sample(patch, grid, padding="reflection")


def salt_and_pepper(patch, g, level, scale):
    """Set a fraction ``salt`` of pixels to white and another ``salt`` to black."""
    prob = level["salt"]
    u = torch.rand(patch.shape[-2:], generator=g)
    return torch.where(u < prob, 1.0, torch.where(u < 2 * prob, 0.0, patch))


def torn_paper(patch, g, level, scale):
    """Draw ``lines`` one-pixel bright (white) straight lines between random points."""
    h, w = patch.shape[-2:]
    n = level["lines"]
    ends = torch.rand((n, 4), generator=g)
    x0, y0 = ends[:, 0] * (w - 1), ends[:, 1] * (h - 1)
    x1, y1 = ends[:, 2] * (w - 1), ends[:, 3] * (h - 1)
    t = torch.linspace(0.0, 1.0, 2 * max(h, w))
    xs = (x0[:, None] + (x1 - x0)[:, None] * t).round().long()
    ys = (y0[:, None] + (y1 - y0)[:, None] * t).round().long()
    out = patch.clone()
    out[:, ys.reshape(-1), xs.reshape(-1)] = 1.0
    return out


# 3x3 colour algebra is done in NumPy float64: a torch op on a 3x3 tensor costs more in
# dispatch than the arithmetic.
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.596, -0.274, -0.322],
                        [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def _hue_matrix(shift: float) -> np.ndarray:
    """3x3 RGB matrix turning the hue by ``shift`` of a full circle (rotation in YIQ)."""
    a = 2.0 * math.pi * shift
    rot = np.array([[1.0, 0.0, 0.0],
                    [0.0, math.cos(a), -math.sin(a)],
                    [0.0, math.sin(a), math.cos(a)]])
    return _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ


def color_jitter(patch, g, level, scale):
    """Brightness/contrast/saturation factors in [1-v, 1+v], hue shift in [-h, h]; random order.

    Same factor ranges as torchvision's ColorJitter. Every step is affine in RGB (the hue
    turn is a YIQ rotation instead of an HSV round trip; contrast blends towards the mean
    gray, an affine function of the channel means), so the four steps are composed into
    one 3x3 matrix and offset, applied once and clamped once (torchvision clamps after
    every step; this does not, and costs a fraction as much).
    """
    v, hue = level["jitter"]
    matrix, offset = np.eye(3), np.zeros(3)
    channel_means = patch.mean(dim=(1, 2)).double().numpy()
    for op in torch.randperm(4, generator=g).tolist():
        if op == 3:
            step = _hue_matrix(_uniform(g, -hue, hue))
            matrix, offset = step @ matrix, step @ offset
            continue
        f = _uniform(g, max(0.0, 1.0 - v), 1.0 + v)
        if op == 0:  # brightness
            matrix, offset = f * matrix, f * offset
        elif op == 1:  # contrast: blend with the mean gray of the current image
            mean_gray = _LUMA @ (matrix @ channel_means + offset)
            matrix, offset = f * matrix, f * offset + (1.0 - f) * mean_gray
        else:  # saturation: blend with the per-pixel gray
            step = f * np.eye(3) + (1.0 - f) * np.outer(np.ones(3), _LUMA)
            matrix, offset = step @ matrix, step @ offset
    affine = torch.from_numpy(np.concatenate([offset[:, None], matrix], axis=1)).float()  # [3, 1+3]
    out = torch.addmm(affine[:, :1], affine[:, 1:], patch.reshape(3, -1))
    return out.view_as(patch).clamp(0.0, 1.0)


def swirl(patch, g, level, scale):
    """Rotate around the patch center by ``strength * exp(-d^2 / 2r^2)``, r = min(h, w) // 3."""
    h, w = patch.shape[-2:]
    cx, cy = w // 2, h // 2
    radius = max(min(h, w) // 3, 1)
    dx = (torch.arange(w, dtype=torch.float32) - cx)[None, :]
    dy = (torch.arange(h, dtype=torch.float32) - cy)[:, None]
    angle = torch.exp((dx * dx + dy * dy) * (-0.5 / radius ** 2)) * level["swirl"]  # [h, w]
    cos, sin = torch.cos(angle), torch.sin(angle)
    src = torch.stack((cx + dx * cos - dy * sin, cy + dx * sin + dy * cos), dim=-1)  # pixels
    units = _grid_units(h, w)
    return _sample(patch, src * units - 1.0, padding="border")


def gaussian_blur(patch, g, level, scale):
    """Gaussian blur; kernel size from the level (scaled, odd, >= 3), sigma by OpenCV's rule."""
    k = max(3, int(round(level["blur"] * scale)) | 1)
    sigma = 0.3 * ((k - 1) * 0.5 - 1.0) + 0.8
    return _blur(patch, sigma, k // 2, valid=False)


DISTORTIONS = {
    "elastic": elastic,
    "salt_and_pepper": salt_and_pepper,
    "torn_paper": torn_paper,
    "color_jitter": color_jitter,
    "swirl": swirl,
    "gaussian_blur": gaussian_blur,
}
DISTORTION_NAMES = tuple(DISTORTIONS)


# ----------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class SRDPlan:
    """Everything drawn for one distortion, before any pixel is touched.

    ``box`` is the cut region ``(x0, y0, w, h)`` in the first selected frame;
    ``velocity`` is ``(vx, vy)`` in px per frame (already scaled to the frame size);
    ``region`` says where the box came from: "center", "gradcam" or "center-fallback".
    """

    start: int
    length: int
    box: tuple[int, int, int, int]
    velocity: tuple[float, float]
    distortions: tuple[str, ...]
    severity: str
    region: str


def _center_box(g, h, w):
    pw = max(_randint(g, int(w * 0.1), int(w * 0.5)), 1)
    ph = max(_randint(g, int(h * 0.1), int(h * 0.5)), 1)
    jx = _randint(g, -int(w * 0.1), int(w * 0.1))
    jy = _randint(g, -int(h * 0.1), int(h * 0.1))
    x0 = min(max(w // 2 - pw // 2 + jx, 0), w - pw)
    y0 = min(max(h // 2 - ph // 2 + jy, 0), h - ph)
    return x0, y0, pw, ph


def _largest_blob(saliency: torch.Tensor, h: int, w: int) -> np.ndarray | None:
    """Boolean [h, w] mask of the largest connected blob above the threshold, or None."""
    from scipy import ndimage

    sal = saliency.detach().float().cpu()
    if saliency.dtype == torch.uint8:
        sal = sal / 255.0
    sal = F.interpolate(sal[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    binary = (sal > SALIENCY_THRESHOLD).numpy()
    labels, count = ndimage.label(binary)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _saliency_box(g, blob: np.ndarray, h: int, w: int):
    """A box inside the blob's bounding box, sides in [half, all] of min(blob side, frame/4).

    Up to ``SALIENCY_TRIES`` positions are drawn; the first covering at least half blob
    pixels wins, else the best-covered one.
    """
    rows = np.flatnonzero(blob.any(axis=1))
    cols = np.flatnonzero(blob.any(axis=0))
    bx0, by0 = int(cols[0]), int(rows[0])
    bw, bh = int(cols[-1]) - bx0 + 1, int(rows[-1]) - by0 + 1
    max_pw, max_ph = max(min(bw, w // 4), 1), max(min(bh, h // 4), 1)
    pw = max(_randint(g, max_pw // 2, max_pw), 1)
    ph = max(_randint(g, max_ph // 2, max_ph), 1)
    best, best_cover = None, -1.0
    for _ in range(SALIENCY_TRIES):
        x0 = _randint(g, bx0, bx0 + bw - pw)
        y0 = _randint(g, by0, by0 + bh - ph)
        cover = float(blob[y0:y0 + ph, x0:x0 + pw].mean())
        if cover > best_cover:
            best, best_cover = (x0, y0, pw, ph), cover
        if cover >= 0.5:
            break
    return best


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process per key (SRD runs per item in loader workers)."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def plan_srd(shape, generator, severity="medium", mode="center", saliency=None) -> SRDPlan:
    """Draw run, region, motion and distortions for clips of ``shape (K, T, 3, H, W)``.

    ``saliency``: only read in "gradcam" mode; ``[h, w]`` (one map for the item) or
    ``[K, h, w]`` (one per clip; the first selected clip's map is used), float in [0, 1]
    or uint8, any resolution (resized to H x W). Missing or blob-less saliency falls back
    to the center region with a logged warning.
    """
    if severity not in LEVELS:
        raise ValueError(f"SRD severity must be one of {SEVERITIES}, got {severity!r}")
    if mode not in MODES:
        raise ValueError(f"SRD mode must be one of {MODES}, got {mode!r}")
    k, t, _, h, w = shape
    g = generator
    start = _randint(g, 0, k - 1)
    length = _randint(g, 1, k - start)

    region = "center"
    box = None
    if mode == "gradcam":
        if saliency is None:
            _warn_once("no-saliency", "SRD gradcam mode: no saliency mask for this video; "
                       "using the default center region (run gradcam.py to write masks)")
            region = "center-fallback"
        else:
            sal = saliency[start] if saliency.dim() == 3 else saliency
            blob = _largest_blob(sal, h, w)
            if blob is None:
                _warn_once("empty-saliency", "SRD gradcam mode: a saliency mask has no region "
                           f"above {SALIENCY_THRESHOLD}; using the default center region")
                region = "center-fallback"
            else:
                box = _saliency_box(g, blob, h, w)
                region = "gradcam"
    if box is None:
        box = _center_box(g, h, w)

    scale = min(h, w) / REFERENCE_SIZE
    angle = _uniform(g, 0.0, 2.0 * math.pi)
    speed = _uniform(g, MIN_SPEED, MAX_SPEED) * scale
    lo, hi = LEVELS[severity]["count"]
    count = _randint(g, lo, hi)
    order = torch.randperm(len(DISTORTION_NAMES), generator=g)[:count].tolist()
    return SRDPlan(start=start, length=length, box=box,
                   velocity=(speed * math.cos(angle), speed * math.sin(angle)),
                   distortions=tuple(DISTORTION_NAMES[i] for i in order),
                   severity=severity, region=region)


def trajectory_boxes(plan: SRDPlan, k: int, t: int, h: int, w: int) -> torch.Tensor:
    """Boxes ``[K, T, 4]`` long (x0, y0, x1, y1; x1/y1 exclusive), zero outside the run.

    Frame ``i`` of the run (``i = (clip - start) * T + frame``) sits at
    ``round(origin + velocity * i)``, clamped so the whole patch stays inside the frame.
    """
    x0, y0, pw, ph = plan.box
    steps = torch.arange(plan.length * t, dtype=torch.float64)
    xs = (x0 + plan.velocity[0] * steps).round().clamp(0, w - pw).long()
    ys = (y0 + plan.velocity[1] * steps).round().clamp(0, h - ph).long()
    boxes = torch.zeros((k, t, 4), dtype=torch.long)
    run = torch.stack((xs, ys, xs + pw, ys + ph), dim=-1).view(plan.length, t, 4)
    boxes[plan.start:plan.start + plan.length] = run
    return boxes


def distort_patch(patch: torch.Tensor, plan: SRDPlan, generator, scale: float) -> torch.Tensor:
    """Apply the plan's distortions in order to ``patch [3, h, w]`` float in [0, 1]."""
    level = LEVELS[plan.severity]
    for name in plan.distortions:
        patch = DISTORTIONS[name](patch, generator, level, scale)
    return patch.clamp(0.0, 1.0)  # each step keeps [0, 1] up to float rounding


def _paste(out: torch.Tensor, patch: torch.Tensor, boxes: torch.Tensor, plan: SRDPlan) -> None:
    """Copy ``patch [3, ph, pw]`` into ``out [K, T, 3, H, W]`` at every box of the run.

    One strided-view copy per frame: ~10x faster on CPU than a single scatter through
    broadcast advanced indices, and ~2x faster than slicing (measured at 224 px).
    """
    _, ph, pw = patch.shape
    s_clip, s_frame, s_chan, s_row, s_col = out.stride()
    run = boxes[plan.start:plan.start + plan.length].tolist()
    for ci, clip_boxes in enumerate(run, start=plan.start):
        for fi, (bx0, by0, _, _) in enumerate(clip_boxes):
            offset = out.storage_offset() + ci * s_clip + fi * s_frame + by0 * s_row + bx0 * s_col
            out.as_strided((3, ph, pw), (s_chan, s_row, s_col), offset).copy_(patch)


# ----------------------------------------------------------------------------- entry
def apply_srd_with_plan(clips, generator, p=0.5, force=False, severity="medium",
                        mode="center", saliency=None, inplace=False):
    """Like :func:`apply_srd`, also returning the :class:`SRDPlan` (None when not applied)."""
    if clips.dim() != 5 or clips.shape[2] != 3:
        raise ValueError(f"SRD expects clips [K, T, 3, H, W], got {tuple(clips.shape)}")
    k, t, _, h, w = clips.shape
    pa_labels = torch.zeros(k, dtype=torch.long)
    boxes = torch.zeros((k, t, 4), dtype=torch.long)
    draw = torch.rand((), generator=generator).item()  # drawn even when forced: same stream layout
    if not force and draw >= p:
        return clips, pa_labels, boxes, None

    plan = plan_srd(clips.shape, generator, severity=severity, mode=mode, saliency=saliency)
    x0, y0, pw, ph = plan.box
    cut = clips[plan.start, 0, :, y0:y0 + ph, x0:x0 + pw]
    is_int = not clips.dtype.is_floating_point
    patch = cut.float().cpu()
    if is_int:
        patch = patch / 255.0
    patch = distort_patch(patch, plan, generator, scale=min(h, w) / REFERENCE_SIZE)
    if is_int:
        patch = (patch * 255.0).round()
    patch = patch.to(device=clips.device, dtype=clips.dtype)

    boxes = trajectory_boxes(plan, k, t, h, w)
    out = clips if inplace else clips.clone()
    _paste(out, patch, boxes, plan)
    pa_labels[plan.start:plan.start + plan.length] = 1
    return out, pa_labels, boxes, plan


def apply_srd(clips, generator, p=0.5, force=False, severity="medium", mode="center",
              saliency=None, inplace=False):
    """Distort a normal training item with probability ``p`` (always when ``force``).

    Args:
        clips: ``[K, T, 3, H, W]`` uint8 or float in [0, 1] (returned in the same dtype).
        generator: ``torch.Generator`` (CPU), the only source of randomness.
        severity: "light" | "medium" | "heavy". mode: "center" | "gradcam".
        saliency: gradcam mode's map, ``[h, w]`` or ``[K, h, w]`` (see :func:`plan_srd`).
        inplace: write the patch into ``clips`` itself instead of a copy (saves a full
            copy of the item; only for callers that own ``clips``).

    Returns:
        ``(clips, pa_labels [K] long, boxes [K, T, 4] long)``. When not applied, ``clips``
        is the input object itself, labels and boxes are zero. When applied, clips
        ``start .. start+length-1`` carry label 1 and the pasted patch; every pixel outside
        ``boxes`` equals the input exactly.
    """
    out, pa_labels, boxes, _ = apply_srd_with_plan(
        clips, generator, p=p, force=force, severity=severity, mode=mode,
        saliency=saliency, inplace=inplace)
    return out, pa_labels, boxes


def srd_options_from_config(cfg) -> dict:
    """``apply_srd`` keyword arguments from ``cfg.ADV_TRAIN`` (SRD_PROB/SRD_SEVERITY/SRD_MODE)."""
    adv = cfg.ADV_TRAIN
    prob = float(adv.SRD_PROB)
    if not 0.0 <= prob <= 1.0:
        raise ConfigError(f"ADV_TRAIN.SRD_PROB must be in [0, 1], got {adv.SRD_PROB!r}")
    severity = str(adv.SRD_SEVERITY).lower()
    if severity not in SEVERITIES:
        raise ConfigError(f"ADV_TRAIN.SRD_SEVERITY must be one of {SEVERITIES}, got {adv.SRD_SEVERITY!r}")
    mode = str(adv.SRD_MODE).lower()
    if mode not in MODES:
        raise ConfigError(f"ADV_TRAIN.SRD_MODE must be one of {MODES}, got {adv.SRD_MODE!r}")
    if mode == "gradcam" and not str(adv.GRADCAM_DIR):
        raise ConfigError("ADV_TRAIN.SRD_MODE is 'gradcam' but ADV_TRAIN.GRADCAM_DIR is empty: "
                          "set it to the folder written by gradcam.py")
    return dict(p=prob, severity=severity, mode=mode)


# ----------------------------------------------------------------------------- saliency files
def mask_path(gradcam_dir, video_path: str, frame_index: int) -> Path:
    """Where gradcam.py writes (and SRD reads) one mask: ``DIR/<video>/<frame>.png``.

    ``video_path`` is the list file's relative path; ``frame_index`` is the loader's frame
    index (``frame_inds``), so writer and reader agree whatever the on-disk numbering.
    """
    return Path(gradcam_dir) / _safe_video_dir(video_path) / f"{int(frame_index)}.png"


def _safe_video_dir(video_path: str) -> PurePosixPath:
    rel = PurePosixPath(str(video_path).replace(os.sep, "/"))
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"video path {video_path!r} cannot name a Grad-CAM mask folder "
                        "(it must be relative, without '..')")
    return rel


@functools.lru_cache(maxsize=4096)
def _available_masks(folder: str) -> tuple[int, ...]:
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return tuple(sorted(int(n[:-4]) for n in names if n.endswith(".png") and n[:-4].isdigit()))


def load_saliency(gradcam_dir, video_path: str, frame_inds) -> torch.Tensor | None:
    """Per-clip saliency ``[K, h, w]`` float in [0, 1] for one item, or None.

    ``frame_inds`` is ``[K, T]`` (or ``[K]``); the mask of each clip's first frame is read
    (SRD cuts its patch from the first frame of the run). A frame without a mask file uses
    the video's mask nearest in frame index. None (with a logged warning, once per video)
    when the video has no masks at all; SRD then falls back to the center region.
    """
    from PIL import Image

    folder = Path(gradcam_dir) / _safe_video_dir(video_path)
    available = _available_masks(str(folder))
    if not available:
        _warn_once(f"no-masks:{folder}", f"no Grad-CAM masks in {folder} for video {video_path!r}; "
                   "SRD uses the default center region for it")
        return None
    firsts = torch.as_tensor(frame_inds).reshape(len(frame_inds), -1)[:, 0].tolist()
    avail = np.asarray(available)
    maps = []
    for idx in firsts:
        nearest = int(avail[np.abs(avail - idx).argmin()])
        path = folder / f"{nearest}.png"
        try:
            with Image.open(path) as im:
                maps.append(torch.from_numpy(np.asarray(im.convert("L"), dtype=np.uint8).copy()))
        except OSError as err:
            raise DataError(f"cannot read Grad-CAM mask {path}: {err}; rerun gradcam.py") from err
    if any(m.shape != maps[0].shape for m in maps):
        raise DataError(f"Grad-CAM masks in {folder} differ in size; rerun gradcam.py")
    return torch.stack(maps).float() / 255.0
