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

How the resampling is done is ``DATA.RESIZE``:

- ``'antialias'``: each geometric step is one antialiased resample of the original frame
  (``resized_crop``): the same mapping as resize-then-crop with one interpolation fewer, and
  crop offsets rounded to the nearest pixel. View 2 runs its pixel ops on a crop smaller
  than ``size x size`` before upsampling it (cheaper; the ops commute up to rounding).
- ``'published'``: the published (mmaction/X-CLIP) steps: the frame is resized with
  bilinear interpolation without antialiasing (half-pixel centres, as cv2's INTER_LINEAR)
  to ``round(side * scale)`` (mmcv.rescale_size) and rounded to uint8, then cropped at
  integer offsets (only the kept window of the resized frame is computed): centre crop at ``(h - size) // 2``, three crops at ``0, step, 2 * step``
  with ``step = (long - size) // 2``, view 2's multi-scale crop at quarter steps
  ``(side - crop) // 4`` (crop sides within 3 px of ``size`` snap to it) and resized to
  ``size x size`` the same way before its pixel ops.

``crop_box`` / ``frame_box`` give the region of the original frame a view's output covers
(``(top, left, height, width)`` in frame pixels, a pixel ``r`` spanning ``[r, r + 1)``), so
SRD and Grad-CAM masks can work in the coordinates of what the model sees.
"""
import torch
import torch.nn.functional as TF
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from utils.errors import ConfigError

MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)
RESIZE_MODES = ("published", "antialias")
SNAP_PX = 3  # mmaction's MultiScaleCrop: a crop side within 3 px of the input size becomes it
_CHUNK_BYTES = 4 << 20  # float working set of one resize step: cache-sized (3x faster than 64 MB)


def resize_short_side(size):
    """Short side before the centre crop, as in X-CLIP: ``int(256 / 224 * size)``."""
    return int(256 / 224 * size)


def to_unit_float(clip):
    """uint8 -> float32 in [0, 1] (the last data step)."""
    return clip.to(torch.float32).div_(255.0)


def model_input(imgs, device):
    """A batch's ``imgs`` on ``device`` as the model's float32 input in [0, 1].

    The datasets deliver uint8 (0..255; datasets.video_dataset), converted here, after the
    copy to the device, which then moves a quarter of the bytes; float input (a batch made
    by hand, already in [0, 1]) is moved unchanged. Every consumer of a batch calls this.
    """
    imgs = imgs.to(device, non_blocking=True)
    return to_unit_float(imgs) if imgs.dtype == torch.uint8 else imgs


def check_resize_mode(mode, key="DATA.RESIZE"):
    """``mode`` lower-cased if it is one of :data:`RESIZE_MODES`, else a ConfigError naming ``key``."""
    text = str(mode).strip().lower()
    if text not in RESIZE_MODES:
        raise ConfigError(f"{key} must be one of {list(RESIZE_MODES)}, got {mode!r}")
    return text


def published_resized_size(h, w, short):
    """(new_h, new_w) of mmcv.rescale_size with scale ``(inf, short)``: both sides times
    ``short / min(h, w)``, rounded half up (``int(x + 0.5)``)."""
    factor = short / min(h, w)
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _taps(out_len, in_len, first, count):
    """Bilinear taps of output positions ``first .. first+count-1`` of an ``in_len -> out_len``
    resize: (low source index, high source index, weight of the high one), as cv2's
    INTER_LINEAR: ``src = (dst + 0.5) * in / out - 0.5``, below 0 clamped to 0, from the
    last source pixel on the last pixel alone. Coordinates in float64, weights float32."""
    src = (torch.arange(first, first + count, dtype=torch.float64) + 0.5) * (in_len / out_len) - 0.5
    src = src.clamp_min_(0.0)
    low = src.floor().long().clamp_max_(in_len - 1)
    frac = torch.where(low >= in_len - 1, 0.0, src - low)
    return low, (low + 1).clamp_max_(in_len - 1), frac.float()


def resize_bilinear(frames, size, window=None):
    """``uint8 [..., 3, h, w]`` resized to ``size`` (new_h, new_w) -> new ``uint8`` tensor.

    Bilinear with half-pixel centres and no antialiasing (the arithmetic of cv2.resize with
    INTER_LINEAR and of ``F.interpolate(mode='bilinear', align_corners=False,
    antialias=False)``), rounded half up to uint8. ``window`` ``(top, left, height, width)``
    computes only that part of the resized image (``[..., 3, height, width]``): a crop of
    the resized frame costs what the crop costs, not what the whole frame costs (the
    published pipeline resizes the whole 1080p frame and then keeps 224 x 224 of it).
    Rows then columns, in float32, a few frames at a time (cache-sized chunks).
    """
    *lead, c, h, w = frames.shape
    top, left, out_h, out_w = window if window is not None else (0, 0, *size)
    y0, y1, fy = _taps(size[0], h, top, out_h)
    x0, x1, fx = _taps(size[1], w, left, out_w)
    fy = fy[:, None]
    flat = frames.reshape(-1, c, h, w)
    out = torch.empty((flat.shape[0], c, out_h, out_w), dtype=torch.uint8)
    chunk = max(1, _CHUNK_BYTES // (c * out_h * w * 4 * 3))
    for i in range(0, flat.shape[0], chunk):
        part = flat[i:i + chunk]
        rows = torch.lerp(part.index_select(-2, y0).to(torch.float32),
                          part.index_select(-2, y1).to(torch.float32), fy)
        value = torch.lerp(rows.index_select(-1, x0), rows.index_select(-1, x1), fx)
        out[i:i + chunk] = value.add_(0.5).floor_().clamp_(0, 255)  # half up, as cv2
    return out.view(*lead, c, out_h, out_w)


def _crop_resize(clip, top, left, height, width, size):
    """The box ``(top, left, height, width)`` of ``uint8 [..., 3, H, W]`` resized to ``size x
    size``, bilinear with antialiasing (torchvision's ``resized_crop``). Inside the frame the
    box is resized channels-last, which takes torch's vectorised uint8 path: the same pixels,
    ~1.3x faster (docs/bench_loader.md), returned with channels-last strides (decoded JPEG
    frames have them too; the copy into the item's buffer makes them contiguous)."""
    top, left, height, width = int(top), int(left), max(1, int(height)), max(1, int(width))
    if not _inside(clip, top, left, height, width):
        return F.resized_crop(clip, top, left, height, width, [size, size], antialias=True)
    box = clip[..., top:top + height, left:left + width]
    flat = box.reshape(-1, box.shape[-3], height, width).contiguous(memory_format=torch.channels_last)
    out = _resample(flat, size)
    return out.unflatten(0, clip.shape[:-3]) if clip.dim() > 3 else out[0]


def _inside(clip, top, left, height, width):
    h, w = clip.shape[-2:]
    return clip.dtype == torch.uint8 and top >= 0 and left >= 0 and top + height <= h and left + width <= w


def _resample(boxes, size):
    """``uint8 [N, 3, h, w]`` (channels-last) -> ``[N, 3, size, size]``, bilinear with
    antialiasing. Antialiasing only changes a shrink: on an enlargement torch's antialiased and
    plain bilinear kernels give the same pixels (tests/test_transforms.py), and the plain one is
    ~1.3x faster (box copy included; docs/bench_loader.md), so a box no larger than the output
    takes it."""
    antialias = boxes.shape[-2] > size or boxes.shape[-1] > size
    return TF.interpolate(boxes, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


def _published_crop(clip, resized_hw, top, left, height, width, size):
    """Integer crop ``(top, left, height, width)`` of the clip resized to ``resized_hw``,
    resized to ``size x size`` when it is not (two roundings, as the published pipeline)."""
    cut = resize_bilinear(clip, resized_hw, window=(top, left, height, width))
    if (height, width) == (size, size):
        return cut
    return resize_bilinear(cut, (size, size))


def _frame_box(h, w, new_h, new_w, top, left, height, width):
    """A box on the frame resized to (new_h, new_w), in original frame pixels."""
    sy, sx = h / new_h, w / new_w
    return (top * sy, left * sx, height * sy, width * sx)


class CenterView:
    """View 1 and test: short side to ``int(256/224*size)``, centre crop ``size``."""

    random = False  # same output for any clip batch: may be applied to many clips at once

    def __init__(self, size, resize="antialias"):
        self.size = size
        self.short = resize_short_side(size)
        self.resize = check_resize_mode(resize)

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def _published_offsets(self, h, w):
        new_h, new_w = published_resized_size(h, w, self.short)
        return new_h, new_w, (new_h - self.size) // 2, (new_w - self.size) // 2

    def _antialias_box(self, h, w):
        scale = min(h, w) / self.short  # original pixels per resized pixel
        crop = self.size * scale
        return round((h - crop) / 2), round((w - crop) / 2), round(crop), round(crop)

    def crop_box(self, h, w):
        """``(top, left, height, width)`` of the frame region the output covers, frame pixels."""
        if self.resize == "published":
            new_h, new_w, top, left = self._published_offsets(h, w)
            return _frame_box(h, w, new_h, new_w, top, left, self.size, self.size)
        return tuple(float(v) for v in self._antialias_box(h, w))

    def apply_uint8(self, clip):
        """``uint8 [..., 3, H, W]`` -> a new ``uint8 [..., 3, size, size]``."""
        h, w = clip.shape[-2:]
        if self.resize == "published":
            new_h, new_w, top, left = self._published_offsets(h, w)
            return resize_bilinear(clip, (new_h, new_w), window=(top, left, self.size, self.size))
        return _crop_resize(clip, *self._antialias_box(h, w), self.size)

    def apply_uint8_frames(self, frames, out=None):
        """U frames (``uint8 [3, H, W]`` each, one size) -> ``uint8 [U, 3, size, size]``
        (into ``out`` when given): :meth:`apply_uint8` of each, stacked. Frame by frame, each
        result copied into its slot at once, so that the box, its resample and the transposing
        copy stay in the cache: about 2x faster (12 vs 24 ms for 80 320x240 frames) than
        resampling all boxes in one call and transposing the batch (docs/bench_loader.md)."""
        if out is None:
            out = torch.empty((len(frames), 3, self.size, self.size), dtype=torch.uint8)
        for slot, frame in zip(out, frames):
            slot.copy_(self.apply_uint8(frame))
        return out


class ThreeCropView:
    """TEST.NUM_CROP 3: short side to ``size``; three crops along the long side.

    Returns ``float [3, T, 3, size, size]`` (crops in order start, centre, end).
    """

    def __init__(self, size, resize="antialias"):
        self.size = size
        self.resize = check_resize_mode(resize)

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def apply_uint8(self, clip):
        h, w = clip.shape[-2:]
        if self.resize == "published":
            new_h, new_w = published_resized_size(h, w, self.size)
            step = (max(new_h, new_w) - self.size) // 2
            crops = []
            for offset in (0, step, 2 * step):
                top, left = (offset, 0) if new_h > new_w else (0, offset)
                crops.append(resize_bilinear(clip, (new_h, new_w), window=(top, left, self.size, self.size)))
            return torch.stack(crops)
        side = min(h, w)
        long_side = max(h, w)
        crops = []
        for offset in (0, (long_side - side) / 2, long_side - side):
            top, left = (offset, 0) if h > w else (0, offset)
            crops.append(_crop_resize(clip, round(top), round(left), side, side, self.size))
        return torch.stack(crops)


class MultiScaleCrop:
    """X-CLIP's MultiScaleCrop followed by a resize to ``size x size`` (uint8 in, uint8 out).

    The crop is chosen on the frame resized to short side ``int(256/224*size)``. With
    ``resize='antialias'`` it is mapped back to the original frame (float box) and cut and
    resized in one resample; with ``'published'`` it is an integer box on the resized frame.
    """

    def __init__(self, size, scales=MULTI_SCALES, max_scale_gap=1, resize="antialias"):
        self.size = size
        self.short = resize_short_side(size)
        self.pairs = [(i, j) for i in range(len(scales)) for j in range(len(scales))
                      if abs(i - j) <= max_scale_gap]
        self.scales = scales
        self.resize = check_resize_mode(resize)

    def _draw(self):
        """(scale pair, position) from torch's global RNG: the same two draws in both modes."""
        i, j = self.pairs[int(torch.randint(len(self.pairs), ()))]
        positions = ((0, 0), (0, 4), (4, 0), (4, 4), (2, 2))  # (row, col) in quarter steps
        row, col = positions[int(torch.randint(len(positions), ()))]
        return i, j, row, col

    def params(self, h, w):
        """Draw a crop of an ``h x w`` frame.

        antialias: ``(top, left, height, width)`` in original pixels (floats).
        published: ``(top, left, height, width)`` integers on the resized frame.
        """
        i, j, row, col = self._draw()
        if self.resize == "published":
            new_h, new_w = published_resized_size(h, w, self.short)
            base = min(new_h, new_w)
            crop_w, crop_h = int(base * self.scales[i]), int(base * self.scales[j])
            crop_w = self.size if abs(crop_w - self.size) < SNAP_PX else crop_w
            crop_h = self.size if abs(crop_h - self.size) < SNAP_PX else crop_h
            step_w, step_h = (new_w - crop_w) // 4, (new_h - crop_h) // 4
            return row * step_h, col * step_w, crop_h, crop_w
        factor = min(h, w) / self.short
        rh, rw = h / factor, w / factor  # frame size after the short-side resize
        base = min(rh, rw)
        crop_w, crop_h = int(base * self.scales[i]), int(base * self.scales[j])
        step_w, step_h = (rw - crop_w) / 4, (rh - crop_h) / 4
        return (row * step_h * factor, col * step_w * factor, crop_h * factor, crop_w * factor)

    def frame_box(self, h, w, params):
        """The frame region (original pixels) that the crop of ``params`` covers."""
        if self.resize == "published":
            return _frame_box(h, w, *published_resized_size(h, w, self.short), *params)
        top, left, height, width = (round(v) for v in params)
        return (float(top), float(left), float(max(1, height)), float(max(1, width)))

    def crop(self, clip, params):
        """``uint8 [..., 3, H, W]`` -> new ``uint8 [..., 3, size, size]`` for drawn ``params``."""
        if self.resize == "published":
            h, w = clip.shape[-2:]
            return _published_crop(clip, published_resized_size(h, w, self.short), *params, self.size)
        top, left, height, width = (round(v) for v in params)
        return _crop_resize(clip, top, left, height, width, self.size)

    def __call__(self, clip):
        return self.crop(clip, self.params(*clip.shape[-2:]))


class AugmentedView:
    """View 2: multi-scale crop + resize, colour jitter, grayscale, RandAugment; float out."""

    random = True  # one draw per call: call it once per clip

    def __init__(self, size, color_jitter=0.8, gray_scale=0.2, randaug_ops=2, randaug_magnitude=10,
                 resize="antialias"):
        self.size = size
        self.resize = check_resize_mode(resize)
        self.crop = MultiScaleCrop(size, resize=self.resize)
        self.pixel_ops = v2.Compose([
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)],
                           p=color_jitter),
            v2.RandomGrayscale(p=gray_scale),
            v2.RandAugment(num_ops=randaug_ops, magnitude=randaug_magnitude),
        ])

    def __call__(self, clip):
        return to_unit_float(self.apply_uint8(clip))

    def apply_uint8(self, clip, paint=None):
        """``uint8 [T, 3, H, W]`` -> ``uint8 [T, 3, size, size]``.

        ``paint(out, frame_box)``, when given, receives the finished ``uint8 [T, 3, size,
        size]`` and the frame region the crop covers, and returns the output to use: SRD
        pastes its patch there, after every augmentation, as the published code pastes on
        the pipeline's output (so RandAugment's rotations and shifts cannot push the patch
        out of view). The global RNG is drawn from identically with or without ``paint``.
        """
        h, w = clip.shape[-2:]
        params = self.crop.params(h, w)
        out = None
        if self.resize == "antialias":
            top, left, height, width = (round(v) for v in params)
            height, width = max(1, height), max(1, width)
            if height * width < self.size * self.size:
                # an upsampled crop (small source frames): the pixel ops run on the crop at
                # its own resolution and the result is upsampled, ~(size^2 / crop area)
                # times cheaper. The ops are per-pixel colour maps, histogram ops and
                # geometric ops whose magnitudes are relative to the image size, so the
                # order changes only rounding.
                cut = self.pixel_ops(clip[..., top:top + height, left:left + width])
                out = F.resize(cut, [self.size, self.size], antialias=True)
        if out is None:
            out = self.pixel_ops(self.crop.crop(clip, params))
        if paint is not None:
            out = paint(out, self.crop.frame_box(h, w, params))
        return out


def num_train_views(cfg):
    """Views a training item carries (A): ``DATA.NUM_VIEWS`` when ``TRAIN.USE_VIEW2``, else 1.

    Training reads view 2 only with TRAIN.USE_VIEW2 (training.engine.view_clips), and view 2
    costs ~15x view 1 on the CPU (docs/bench_loader.md), so it is not built when unused.
    """
    return int(cfg.DATA.NUM_VIEWS) if cfg.TRAIN.USE_VIEW2 else 1


def resize_mode(cfg):
    """``DATA.RESIZE`` checked (``'antialias'`` for a config tree made before the key existed)."""
    return check_resize_mode(cfg.DATA.get("RESIZE", "antialias"))


def build_train_views(cfg):
    """The per-clip transforms of a training item, view 1 first (see :func:`num_train_views`)."""
    size, mode = cfg.DATA.INPUT_SIZE, resize_mode(cfg)
    views = [CenterView(size, mode),
             AugmentedView(size, cfg.AUG.COLOR_JITTER, cfg.AUG.GRAY_SCALE, resize=mode)]
    return views[:num_train_views(cfg)]


def build_test_view(cfg):
    """The test transform: centre view, or three crops when ``TEST.NUM_CROP`` is 3."""
    size, mode = cfg.DATA.INPUT_SIZE, resize_mode(cfg)
    return ThreeCropView(size, mode) if cfg.TEST.NUM_CROP == 3 else CenterView(size, mode)
