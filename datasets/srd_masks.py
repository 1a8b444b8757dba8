"""Grad-CAM saliency masks for SRD's gradcam mode: where they live, reading them, and
mapping them into the crop a training view keeps.

gradcam.py runs the trained model on the train-as-test loader, whose test view is the
centre crop (``datasets.transforms.CenterView``): a mask therefore covers that crop of the
frame, at the model's input size. A training view sees another region (view 2's multi-scale
crops), so :func:`saliency_in_crop` resamples a mask from the region it covers into the
region a view keeps; pixels the mask does not cover read as not salient.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from datasets.srd_ops import _warn_once
from utils.errors import DataError


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


def saliency_in_crop(saliency: torch.Tensor, mask_box, crop_box, size: int) -> torch.Tensor:
    """Resample a mask covering frame region ``mask_box`` onto the ``size x size`` crop of
    frame region ``crop_box``.

    Args:
        saliency: ``[h, w]`` float in [0, 1] (or uint8), any resolution.
        mask_box, crop_box: ``(top, left, height, width)`` in frame pixels (a pixel ``r``
            spans ``[r, r + 1)``), as ``CenterView.crop_box`` / ``MultiScaleCrop.frame_box``
            give them. ``mask_box`` None: the mask covers the crop itself (plain resize).

    Returns ``float [size, size]``: bilinear samples at the crop's pixel centres; 0 where the
    crop reaches outside the mask's region. When both boxes are equal and the mask is
    ``size x size`` the mask comes back unchanged up to float rounding (the samples fall
    on its pixel centres).
    """
    sal = saliency.detach().float().cpu()
    if saliency.dtype == torch.uint8:
        sal = sal / 255.0
    if mask_box is None:
        mask_box = crop_box
    top, left, height, width = (float(v) for v in crop_box)
    m_top, m_left, m_height, m_width = (float(v) for v in mask_box)
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    ys = top + centres * height  # frame coordinates of the crop's pixel centres
    xs = left + centres * width
    gy = (2.0 * (ys - m_top) / m_height - 1.0).float()  # grid_sample units, align_corners=False
    gx = (2.0 * (xs - m_left) / m_width - 1.0).float()
    grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)
    out = F.grid_sample(sal[None, None], grid[None], mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out[0, 0]
