"""DATA.RESIZE 'published': the mmaction/X-CLIP resize and crop arithmetic, pixel for pixel.

The reference below is written from the published steps, in NumPy float64, without torch:
mmcv.rescale_size (``int(side * short / min(h, w) + 0.5)``), cv2.resize INTER_LINEAR
(half-pixel centres ``src = (dst + 0.5) * in / out - 0.5``, clamped at the borders, no
antialiasing, rounded to uint8), CenterCrop at ``(h - crop) // 2``, ThreeCrop at ``0, step,
2 * step`` (``step = (long - crop) // 2``), MultiScaleCrop (crop sides ``int(base * scale)``
snapped to the input size within 3 px, offsets at multiples of ``(side - crop) // 4``).
The code resizes with ``F.interpolate`` in float32; rounding may differ by 1/255 on pixels
whose exact value is within float error of a half.
"""
import numpy as np
import pytest
import torch

from datasets.transforms import (AugmentedView, CenterView, MultiScaleCrop, ThreeCropView,
                                 build_test_view, build_train_views, resize_bilinear)
from utils.config import get_default_config, load_config_file, merge_opts
from utils.errors import ConfigError

SIZES = [(240, 320), (240, 360), (480, 856), (1080, 1920)]
TIE = 1e-3  # |exact value - (n + 1/2)| below this: a rounding tie, decided by float error
worst = {}  # case -> (max |diff|, differing share), printed at the end (pytest -s)


# ---------------------------------------------------------------------------- reference
def ref_rescale_size(h, w, short):
    scale = min(np.inf / max(h, w), short / min(h, w))
    return int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)


def _axis(out_len, in_len):
    """Source indices and weight of each output position along one axis (cv2 INTER_LINEAR)."""
    scale = in_len / out_len
    f = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    s = np.floor(f).astype(np.int64)
    f = f - s
    low = s < 0
    f[low], s[low] = 0.0, 0
    high = s >= in_len - 1
    f[high], s[high] = 0.0, in_len - 1
    return s, np.minimum(s + 1, in_len - 1), f


class Ref:
    """A reference image: rounded ``uint8 [..., h, w]``, its exact float64 values, and which
    pixels an earlier stage's rounding tie may have changed (``tainted``)."""

    def __init__(self, pixels, exact=None, tainted=None):
        self.pixels = np.asarray(pixels)
        self.exact = self.pixels.astype(np.float64) if exact is None else exact
        self.tainted = np.zeros(self.pixels.shape, bool) if tainted is None else tainted

    def __getitem__(self, index):
        return Ref(self.pixels[index], self.exact[index], self.tainted[index])

    @property
    def shape(self):
        return self.pixels.shape

    def ties(self):
        return np.abs(self.exact - np.floor(self.exact) - 0.5) < TIE


def ref_resize(ref, new_h, new_w):
    """cv2.resize(INTER_LINEAR) of a Ref; output pixels whose sources were ties are tainted."""
    img = ref.pixels.astype(np.float64)
    y0, y1, fy = _axis(new_h, img.shape[-2])
    x0, x1, fx = _axis(new_w, img.shape[-1])
    top = img[..., y0, :] * (1 - fy)[:, None] + img[..., y1, :] * fy[:, None]
    exact = top[..., x0] * (1 - fx) + top[..., x1] * fx
    doubt = ref.tainted | ref.ties()
    rows = doubt[..., y0, :] | doubt[..., y1, :]
    tainted = rows[..., x0] | rows[..., x1]
    return Ref(np.clip(np.floor(exact + 0.5), 0, 255).astype(np.uint8), exact, tainted)


def ref_center_crop(ref, crop):
    h, w = ref.shape[-2:]
    top, left = (h - crop) // 2, (w - crop) // 2
    return ref[..., top:top + crop, left:left + crop]


def ref_three_crop(ref, crop):
    """mmaction ThreeCrop order: (start, end, middle)."""
    h, w = ref.shape[-2:]
    if crop == h:
        step = (w - crop) // 2
        return [ref[..., :, x:x + crop] for x in (0, 2 * step, step)]
    step = (h - crop) // 2
    return [ref[..., y:y + crop, :] for y in (0, 2 * step, step)]


def ref_multiscale_candidates(h, w, input_size, scales=(1, 0.875, 0.75, 0.66), gap=1):
    """Every (top, left, crop_h, crop_w) mmaction's MultiScaleCrop (fixed crops) can pick."""
    base = min(h, w)
    sides = [int(base * s) for s in scales]
    boxes = set()
    for i, ch in enumerate(sides):
        for j, cw in enumerate(sides):
            if abs(i - j) > gap:
                continue
            cw2 = input_size if abs(cw - input_size) < 3 else cw
            ch2 = input_size if abs(ch - input_size) < 3 else ch
            ws, hs = (w - cw2) // 4, (h - ch2) // 4
            for x, y in ((0, 0), (4 * ws, 0), (0, 4 * hs), (4 * ws, 4 * hs), (2 * ws, 2 * hs)):
                boxes.add((y, x, ch2, cw2))
    return boxes


# ---------------------------------------------------------------------------- helpers
def _frames(h, w, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


def _compare(case, ours, ref):
    """At most 1/255 apart, and only on rounding ties (or pixels fed by an earlier tie)."""
    ours = ours.numpy().astype(np.int16)
    assert ours.shape == ref.shape, case
    diff = np.abs(ours - ref.pixels.astype(np.int16))
    share = float((diff > 0).mean())
    worst[case] = (int(diff.max()), share)
    assert diff.max() <= 1, (case, int(diff.max()))
    unexplained = (diff > 0) & ~ref.ties() & ~ref.tainted
    assert not unexplained.any(), (case, int(unexplained.sum()))


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for case, (mx, share) in sorted(worst.items()):
        print(f"{case}: max |diff| {mx}/255, differing pixels {share:.2e}")


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("h,w", SIZES + [(480, 270), (256, 341)])
def test_bilinear_resize_matches_cv2_arithmetic(h, w):
    x = _frames(h, w, n=1)
    for new_h, new_w in (ref_rescale_size(h, w, 256), ref_rescale_size(h, w, 224), (224, 224), (2 * h, w + 7)):
        _compare(f"resize {w}x{h}->{new_w}x{new_h}", resize_bilinear(x, (new_h, new_w)),
                 ref_resize(Ref(x.numpy()), new_h, new_w))


@pytest.mark.parametrize("h,w", [(240, 320), (1080, 1920)])
def test_bilinear_resize_is_torch_interpolate_without_antialias(h, w):
    # the same arithmetic as F.interpolate(bilinear, align_corners=False, antialias=False),
    # also when only a window of the resized frame is computed
    x = _frames(h, w, n=1)
    size = ref_rescale_size(h, w, 256)
    exact = torch.nn.functional.interpolate(x.double(), size=size, mode="bilinear", align_corners=False,
                                            antialias=False)
    ref = Ref(np.floor(exact.numpy() + 0.5).astype(np.uint8), exact.numpy())
    _compare(f"interpolate {w}x{h}", resize_bilinear(x, size), ref)
    window = (10, size[1] // 3, 224, 224)
    part = resize_bilinear(x, size, window=window)
    assert torch.equal(part, resize_bilinear(x, size)[..., 10:234, size[1] // 3:size[1] // 3 + 224])


@pytest.mark.parametrize("h,w", SIZES)
def test_center_view_is_published_resize_then_floor_centre_crop(h, w):
    x = _frames(h, w)
    ref = ref_center_crop(ref_resize(Ref(x.numpy()), *ref_rescale_size(h, w, 256)), 224)
    _compare(f"centre {w}x{h}", CenterView(224, "published").apply_uint8(x), ref)


@pytest.mark.parametrize("h,w", SIZES + [(400, 300)])
def test_three_crops_are_published_offsets(h, w):
    x = _frames(h, w)
    start, end, middle = ref_three_crop(ref_resize(Ref(x.numpy()), *ref_rescale_size(h, w, 224)), 224)
    ours = ThreeCropView(224, "published").apply_uint8(x)  # order here: start, centre, end
    for index, ref in enumerate((start, middle, end)):
        _compare(f"three-crop {w}x{h} #{index}", ours[index], ref)


@pytest.mark.parametrize("h,w", SIZES)
def test_multiscale_crop_is_published_candidates_and_resize(h, w):
    x = _frames(h, w, n=1)
    resized = ref_resize(Ref(x.numpy()), *ref_rescale_size(h, w, 256))
    candidates = ref_multiscale_candidates(*resized.shape[-2:], 224)
    crop = MultiScaleCrop(224, resize="published")
    torch.manual_seed(0)
    seen = set()
    for _ in range(400):
        params = crop.params(h, w)
        assert tuple(params) in candidates
        seen.add(tuple(params))
    assert seen == candidates  # every published candidate is drawn
    for top, left, ch, cw in sorted(seen)[:: max(1, len(seen) // 6)]:
        ref = ref_resize(resized[..., top:top + ch, left:left + cw], 224, 224)
        _compare(f"multiscale {w}x{h} {cw}x{ch}@{left},{top}", crop.crop(x, (top, left, ch, cw)), ref)


def test_view2_published_runs_pixel_ops_on_the_published_crop():
    x = _frames(240, 320, n=3)
    view = AugmentedView(224, resize="published")
    view.pixel_ops = lambda clip: clip  # geometric part only
    torch.manual_seed(3)
    ours = view.apply_uint8(x)
    torch.manual_seed(3)
    expected = view.crop.crop(x, view.crop.params(240, 320))
    assert torch.equal(ours, expected)


def test_published_and_antialias_differ_beyond_the_attack_budget():
    # what the switch is for: on 1080p frames the two test inputs differ by far more than
    # the published eps 0.5/255
    x = _frames(1080, 1920, n=1)
    a = CenterView(224, "published").apply_uint8(x).float()
    b = CenterView(224, "antialias").apply_uint8(x).float()
    assert (a - b).abs().max() > 0.5


def test_configs_choose_the_resize_mode():
    for name in ("shanghai", "traffic", "ucf", "msad", "ped2"):
        for stage in ("server", "advtrain", "attack"):
            cfg = load_config_file(f"configs/{name}/{name}_{stage}.yaml")
            assert cfg.DATA.RESIZE == "published", (name, stage)
    assert load_config_file("configs/synthetic/demo_train.yaml").DATA.RESIZE == "antialias"
    assert get_default_config().DATA.RESIZE == "antialias"


def test_views_follow_data_resize_and_bad_values_name_the_key(tmp_path):
    cfg = get_default_config()
    merge_opts(cfg, ["DATA.RESIZE", "published", "TRAIN.USE_VIEW2", "True"])
    assert build_test_view(cfg).resize == "published"
    assert [v.resize for v in build_train_views(cfg)] == ["published", "published"]
    cfg.TEST.NUM_CROP = 3
    assert build_test_view(cfg).resize == "published"
    cfg.DATA.RESIZE = "bicubic"
    with pytest.raises(ConfigError, match="DATA.RESIZE must be one of"):
        build_test_view(cfg)
    (tmp_path / "bad.yaml").write_text("DATA:\n  RESIZE: nearest\n")
    with pytest.raises(ConfigError, match="DATA.RESIZE must be one of"):
        load_config_file(tmp_path / "bad.yaml")
