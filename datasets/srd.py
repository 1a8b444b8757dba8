"""Spatiotemporal Region Distortion (SRD): pseudo-anomalies with exact clip labels.

A localized region of a *normal* training item is cut from the first frame of a
contiguous run of clips, severely distorted (datasets.srd_ops), and pasted into every frame
of that run while it moves along a straight line. Those clips are labelled anomalous (1).

Where: the published code pastes on the output of each augmented view's pipeline (the
model's ``224 x 224`` crops), once per view (its own box, motion and distortions per view,
the same clips). The training loader does the same through :class:`ItemSRD`: the run is
drawn once per item, and each view plans and paints its patch on its own finished crops
(view 2: after its colour and RandAugment ops), so every clip labelled 1 is changed in
every view and every clip labelled 0 is untouched. :func:`apply_srd` distorts whatever clips it is given, in their own
coordinates (the demo's pictures, benchmarks).

Every random number comes from the ``torch.Generator`` passed in, so a call never touches
or reseeds a global RNG and two calls with one generator draw fresh fields. Pixels outside
the pasted boxes are left bit for bit as they were. In gradcam mode a box that covers the
blob poorly in all ``SALIENCY_TRIES`` draws is replaced by the best-covered one (not the
whole blob box).

Sizes: clips are ``[K, T, 3, H, W]`` (uint8 or float in [0, 1]). The published figures
(box sides 10-50 % of the frame, speed 20-35 px/frame, elastic alpha 40 / sigma 4, blur
kernel 5) are for 224 px crops; pixel figures are scaled by ``min(H, W) / 224``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from datasets.srd_masks import load_saliency, mask_path, saliency_in_crop  # noqa: F401 (re-exported)
from datasets.srd_ops import (DISTORTION_NAMES, DISTORTIONS, LEVELS, SEVERITIES,  # noqa: F401
                              _randint, _uniform, _warn_once, _warned, color_jitter, elastic,
                              gaussian_blur, logger, salt_and_pepper, swirl, torn_paper)
from utils.errors import ConfigError

MODES = ("center", "gradcam")
REFERENCE_SIZE = 224
MIN_SPEED, MAX_SPEED = 20.0, 35.0  # px per frame at 224 px
SALIENCY_THRESHOLD = 0.5
SALIENCY_TRIES = 10


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


def _check_options(severity, mode):
    if severity not in LEVELS:
        raise ValueError(f"SRD severity must be one of {SEVERITIES}, got {severity!r}")
    if mode not in MODES:
        raise ValueError(f"SRD mode must be one of {MODES}, got {mode!r}")


def _draw_run(g, k):
    """(start, length) of the run of distorted clips among ``k``."""
    start = _randint(g, 0, k - 1)
    return start, _randint(g, 1, k - start)


def plan_srd(shape, generator, severity="medium", mode="center", saliency=None, run=None) -> SRDPlan:
    """Draw run, region, motion and distortions for clips of ``shape (K, T, 3, H, W)``.

    ``saliency``: only read in "gradcam" mode; ``[h, w]`` (one map for the item) or
    ``[K, h, w]`` (one per clip; the first selected clip's map is used), float in [0, 1]
    or uint8, any resolution (resized to H x W). Missing or blob-less saliency falls back
    to the center region with a logged warning. ``run``: ``(start, length)`` already drawn
    (every view of an item distorts the same clips); None draws it here.
    """
    _check_options(severity, mode)
    k, t, _, h, w = shape
    g = generator
    if run is None:
        start, length = _draw_run(g, k)
    else:
        start, length = (int(v) for v in run)
        if not (0 <= start and 1 <= length and start + length <= k):
            raise ValueError(f"SRD run (start {start}, length {length}) does not fit {k} clips")

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


def _render_patch(cut, plan, generator, like):
    """Distorted copy of ``cut [3, ph, pw]`` in the dtype/device of ``like`` (uint8 or float)."""
    is_int = not like.dtype.is_floating_point
    patch = cut.float().cpu()
    if is_int:
        patch = patch / 255.0
    h, w = like.shape[-2:]
    patch = distort_patch(patch, plan, generator, scale=min(h, w) / REFERENCE_SIZE)
    if is_int:
        patch = (patch * 255.0).round()
    return patch.to(device=like.device, dtype=like.dtype)


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
    patch = _render_patch(clips[plan.start, 0, :, y0:y0 + ph, x0:x0 + pw], plan, generator, clips)
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


# ----------------------------------------------------------------------------- training views
class ItemSRD:
    """SRD of one training item, painted into each view's crops in that view's coordinates.

    Drawn here, once per item: whether SRD applies (probability ``p``, always when
    ``force``) and the run of clips, hence :attr:`labels` ``[K]`` (1 on the run). Each view
    then gets a :meth:`painter`, which plans its own box, motion and distortions on the
    view's ``size x size`` crops (as the published code calls its generator once per view)
    and pastes the patch into the run's clips. Because the box is drawn inside the crop,
    sized 10-50 % of it (or from the Grad-CAM blob mapped into it), every labelled clip is
    visibly changed in every view; clips off the run are never touched.

    Args:
        num_clips, num_frames: K and T of the item.
        generator: ``torch.Generator``; views draw from it in the order they are painted.
        p, force, severity, mode: as :func:`apply_srd`.
        saliency: gradcam mode: ``[K, h, w]`` masks (datasets.srd_masks.load_saliency) or None.
        saliency_box: ``(top, left, height, width)``, the frame region the masks cover (the
            test view's crop they were computed on); None = they cover each view's crop.
    """

    def __init__(self, num_clips, num_frames, generator, p=0.5, force=False, severity="medium",
                 mode="center", saliency=None, saliency_box=None):
        _check_options(severity, mode)
        self.k, self.t = int(num_clips), int(num_frames)
        self.generator = generator
        self.severity, self.mode = severity, mode
        self.saliency, self.saliency_box = saliency, saliency_box
        draw = torch.rand((), generator=generator).item()  # drawn even when forced
        self.applied = bool(force or draw < p)
        self.labels = torch.zeros(self.k, dtype=torch.long)
        self.run = None
        self.plans = []  # one SRDPlan per painted view, in painting order
        if self.applied:
            self.run = _draw_run(generator, self.k)
            self.labels[self.run[0]:self.run[0] + self.run[1]] = 1

    def painter(self, size):
        """A painter for one view whose crops are ``size x size``; None when SRD is off."""
        return _ViewPainter(self, int(size)) if self.applied else None


class _ViewPainter:
    """Pastes one view's patch; clips must come in order from the run's first clip."""

    def __init__(self, item, size):
        self.item, self.size = item, size
        self.start, self.length = item.run
        self.patch = self.boxes = None

    def clips(self):
        return range(self.start, self.start + self.length)

    def wants(self, clip_index):
        return self.start <= clip_index < self.start + self.length

    def paint(self, clip_index, crop, frame_box=None):
        """``crop [T, 3, size, size]`` (clip ``clip_index`` of the view, uint8 or float in
        [0, 1]) with the patch pasted: a new tensor, or ``crop`` itself off the run.

        ``frame_box``: the frame region the crop covers (``(top, left, height, width)``,
        frame pixels); only gradcam mode reads it, to map the masks into the crop.
        """
        if not self.wants(clip_index):
            return crop
        if tuple(crop.shape) != (self.item.t, 3, self.size, self.size):
            raise ValueError(f"SRD painter for {self.size} px crops of {self.item.t} frames got "
                             f"{tuple(crop.shape)}")
        if self.patch is None:
            if clip_index != self.start:
                raise RuntimeError(f"SRD: clip {clip_index} painted before the run's first clip {self.start}")
            self._plan(crop, frame_box)
        out = crop.clone()
        _, ph, pw = self.patch.shape
        for frame, (x0, y0, _, _) in zip(out, self.boxes[clip_index].tolist()):
            frame[:, y0:y0 + ph, x0:x0 + pw] = self.patch
        return out

    def _plan(self, crop, frame_box):
        item, size = self.item, self.size
        saliency = None
        if item.mode == "gradcam" and item.saliency is not None:
            saliency = saliency_in_crop(item.saliency[self.start], item.saliency_box, frame_box, size)
        plan = plan_srd((item.k, item.t, 3, size, size), item.generator, severity=item.severity,
                        mode=item.mode, saliency=saliency, run=item.run)
        x0, y0, pw, ph = plan.box
        self.patch = _render_patch(crop[0, :, y0:y0 + ph, x0:x0 + pw], plan, item.generator, crop)
        self.boxes = trajectory_boxes(plan, item.k, item.t, size, size)
        item.plans.append(plan)


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