"""Per-clip image transforms (torchvision.transforms.v2) for the two training views and test.

Every transform takes one clip ``uint8 [T, 3, H, W]`` and draws its random parameters once
for the whole clip, so all frames of a clip get the same crop, jitter and RandAugment ops
(v2 transforms treat the leading dims as a batch of images sharing one draw). Randomness
comes from torch's global RNG, which the dataset seeds per item (see video_dataset.py).
Pixels stay uint8 until the last step, which returns float in [0, 1]: ``view(clip)``
returns float, ``view.apply_uint8(clip)`` the uint8 result before that step (the datasets
convert straight into their output buffer, saving a full-size copy per item).

- view 1 / test: resize the short side to ``int(256 / 224 * size)``, centre crop ``size``.
- view 2: multi-scale crop (X-CLIP's MultiScaleCrop: side lengths from scales 1, .875,
  .75, .66 of the short side of the resized frame, width and height at most one scale
  apart, at one of five fixed positions) resized to ``size x size``; colour jitter with
  probability ``color_jitter``; grayscale with probability ``gray_scale``; RandAugment
  (2 ops, magnitude 10).
- three crops (TEST.NUM_CROP 3): short side resized to ``size``, three ``size`` crops along
  the long side (start, centre, end) -> ``[3, T, 3, size, size]``.

Resizing and cropping are done in one resample (``resized_crop`` on the original frame),
which is the same geometric mapping as resize-then-crop with one interpolation fewer.
"""
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


def resize_short_side(size):
    """Short side before the centre crop, as in X-CLIP: ``int(256 / 224 * size)``."""
    return int(256 / 224 * size)


def to_unit_float(clip):
    """uint8 -> float32 in [0, 1] (the last data step)."""
    return clip.to(torch.float32).div_(255.0)


def _crop_resize(clip, top, left, height, width, size):
    return F.resized_crop(clip, int(top), int(left), max(1, int(height)), max(1, int(width)),
                          [size, size], antialias=True)


class CenterView:
    """View 1 and test: short side to ``int(256/224*size)``, centre crop ``size``."""

    random = False  # same output for any clip batch: may be applied to many clips at once

    def __init__(self, size):
        self.size = size
        self.short = resize_short_side(size)

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def apply_uint8(self, clip):
        h, w = clip.shape[-2:]
        scale = min(h, w) / self.short  # original pixels per resized pixel
        crop = self.size * scale
        return _crop_resize(clip, round((h - crop) / 2), round((w - crop) / 2), round(crop), round(crop),
                            self.size)


class ThreeCropView:
    """TEST.NUM_CROP 3: short side to ``size``; three crops along the long side.

    Returns ``float [3, T, 3, size, size]``.
    """

    def __init__(self, size):
        self.size = size

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def apply_uint8(self, clip):
        h, w = clip.shape[-2:]
        side = min(h, w)
        long_side = max(h, w)
        crops = []
        for offset in (0, (long_side - side) / 2, long_side - side):
            top, left = (offset, 0) if h > w else (0, offset)
            crops.append(_crop_resize(clip, round(top), round(left), side, side, self.size))
        return torch.stack(crops)


class MultiScaleCrop:
    """X-CLIP's MultiScaleCrop followed by a resize to ``size x size`` (uint8 in, uint8 out).

    The crop is chosen on the frame resized to short side ``int(256/224*size)`` and then
    mapped back to the original frame.
    """

    def __init__(self, size, scales=MULTI_SCALES, max_scale_gap=1):
        self.size = size
        self.short = resize_short_side(size)
        self.pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales))
                      if abs(i - j) <= max_scale_gap]
        self.scales = scales

    def params(self, h, w):
        """(top, left, height, width) in original pixels, drawn from torch's global RNG."""
        factor = min(h, w) / self.short
        rh, rw = h / factor, w / factor  # frame size after the short-side resize
        base = min(rh, rw)
        i, j = self.pairs[int(torch.randint(len(self.pairs), ()))]
        crop_w, crop_h = int(base * self.scales[i]), int(base * self.scales[j])
        step_w, step_h = (rw - crop_w) / 4, (rh - crop_h) / 4
        positions = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))  # (row, col) in quarter steps
        row, col = positions[int(torch.randint(len(positions), ()))]
        return (row * step_h * factor, col * step_w * factor, crop_h * factor, crop_w * factor)

    def __call__(self, clip):
        top, left, height, width = self.params(*clip.shape[-2:])
        return _crop_resize(clip, round(top), round(left), round(height), round(width), self.size)


class AugmentedView:
    """View 2: multi-scale crop + resize, colour jitter, grayscale, RandAugment; float out."""

    random = True  # one draw per call: call it once per clip

    def __init__(self, size, color_jitter=0.8, gray_scale=0.2, randaug_ops=2, randaug_magnitude=10):
        self.size = size
        self.crop = MultiScaleCrop(size)
        self.pixel_ops = v2.Compose([
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)],
                           p=color_jitter),
            v2.RandomGrayscale(p=gray_scale),
            v2.RandAugment(num_ops=randaug_ops, magnitude=randaug_magnitude),
        ])

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def apply_uint8(self, clip):
        top, left, height, width = (round(v) for v in self.crop.params(*clip.shape[-2:]))
        height, width = max(1, height), max(1, width)
        if height * width >= self.size * self.size:
            return self.pixel_ops(_crop_resize(clip, top, left, height, width, self.size))
        # an upsampled crop (small source frames): the pixel ops run on the crop at its own
        # resolution and the result is upsampled, ~(size^2 / crop area) times cheaper. The
        # ops are per-pixel colour maps, histogram ops and geometric ops whose magnitudes
        # are relative to the image size, so the order changes only rounding.
        cut = self.pixel_ops(clip[..., top:top + height, left:left + width])
        return F.resize(cut, [self.size, self.size], antialias=True)


def num_train_views(cfg):
    """Views a training item carries (A): ``DATA.NUM_VIEWS`` when ``TRAIN.USE_VIEW2``, else 1.

    Training reads view 2 only with TRAIN.USE_VIEW2 (training.engine.view_clips), and view 2
    costs ~15x view 1 on the CPU (docs/bench_loader.md), so it is not built when unused.
    """
    return int(cfg.DATA.NUM_VIEWS) if cfg.TRAIN.USE_VIEW2 else 1


def build_train_views(cfg):
    """The per-clip transforms of a training item, view 1 first (see :func:`num_train_views`)."""
    size = cfg.DATA.INPUT_SIZE
    views = [CenterView(size), AugmentedView(size, cfg.AUG.COLOR_JITTER, cfg.AUG.GRAY_SCALE)]
    return views[:num_train_views(cfg)]


def build_test_view(cfg):
    """The test transform: centre view, or three crops when ``TEST.NUM_CROP`` is 3."""
    size = cfg.DATA.INPUT_SIZE
    return ThreeCropView(size) if cfg.TEST.NUM_CROP == 3 else CenterView(size)
