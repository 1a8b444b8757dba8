"""SRD's patch distortions and the random/filter helpers they share (see datasets.srd).

Each distortion takes a float patch ``[3, h, w]`` in [0, 1], a ``torch.Generator`` (the only
source of randomness: no global RNG is touched), the severity level's settings
(:data:`LEVELS`) and the scale of the frame relative to the published 224 px, and returns a
new patch of the same shape, still in [0, 1]. Whole-tensor operations only: ``grid_sample``
for elastic/swirl, banded-matrix products for Gaussian smoothing, one affine map for colour.

Choices where the published code is loose: salt and pepper each hit a ``salt`` fraction of
the patch's pixels (all channels); "torn paper" lines are white, one pixel wide; the hue
turn is a YIQ rotation.
"""
from __future__ import annotations

import functools
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger("FrameShield.srd")

SEVERITIES = ("light", "medium", "heavy")

# Per-severity settings (published levels): how many distortions, and each one's strength.
LEVELS = {
    "light": dict(count=(2, 3), alpha=20.0, sigma=2.0, salt=0.01, lines=5,
                  jitter=(0.2, 0.1), swirl=1.0, blur=3),
    "medium": dict(count=(3, 6), alpha=40.0, sigma=4.0, salt=0.05, lines=10,
                   jitter=(0.5, 0.2), swirl=3.0, blur=5),
    "heavy": dict(count=(6, 6), alpha=60.0, sigma=6.0, salt=0.10, lines=20,
                  jitter=(0.8, 0.3), swirl=5.0, blur=7),
}


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Log ``message`` once per process per key (SRD runs per item in loader workers)."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


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
