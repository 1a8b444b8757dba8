"""Per-clip transforms: shapes, value range, one random draw per clip."""
import pytest
import torch

from datasets.transforms import (AugmentedView, CenterView, MultiScaleCrop, ThreeCropView,
                                 resize_short_side)


def _clip_of_identical_frames(t=4, h=48, w=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    return frame.expand(t, 3, h, w).contiguous()


def test_center_view_shape_range_and_crop():
    clip = torch.zeros(2, 3, 60, 80, dtype=torch.uint8)
    clip[..., :, 40:] = 255  # right half white
    out = CenterView(28)(clip)
    assert out.shape == (2, 3, 28, 28) and out.dtype == torch.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # centre crop of a half-white frame: left half dark, right half bright
    assert out[..., :, :10].max() < 0.05 and out[..., :, -10:].min() > 0.95
    assert resize_short_side(224) == 256


def test_center_view_keeps_the_middle():
    # short side 56 -> resized to 64, crop 56 of it: the crop covers 56/64 of the frame
    clip = torch.zeros(1, 3, 56, 56, dtype=torch.uint8)
    clip[..., :3, :] = 255  # top 3 rows white: outside a 56/64 centre crop (border 3.5 px)
    out = CenterView(56)(clip)
    assert out.max() < 0.2


def test_three_crop_view_along_long_side():
    clip = torch.zeros(3, 3, 40, 120, dtype=torch.uint8)
    clip[..., :, :40] = 50
    clip[..., :, 40:80] = 150
    clip[..., :, 80:] = 250
    out = ThreeCropView(20)(clip)
    assert out.shape == (3, 3, 3, 20, 20)
    means = out.mean(dim=(1, 2, 3, 4)) * 255
    assert torch.allclose(means, torch.tensor([50.0, 150.0, 250.0]), atol=2)


@pytest.mark.parametrize("size", [32, 96])  # crops downsampled / upsampled (pixel ops before resize)
def test_augmented_view_same_params_for_all_frames_of_a_clip(size):
    view = AugmentedView(size, color_jitter=1.0, gray_scale=0.5)
    clip = _clip_of_identical_frames()
    torch.manual_seed(0)
    outputs = [view(clip) for _ in range(12)]
    for out in outputs:
        assert out.shape == (4, 3, size, size) and out.dtype == torch.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
        # identical input frames stay identical: crop, jitter, grayscale and RandAugment
        # were drawn once for the clip
        assert torch.equal(out, out[:1].expand_as(out))
    # ... while separate calls (separate clips) draw different parameters
    assert len({tuple(o[0].flatten()[:200].tolist()) for o in outputs}) > 6


def test_augmented_view_follows_global_seed():
    view = AugmentedView(32)
    clip = _clip_of_identical_frames(seed=1)
    torch.manual_seed(5)
    a = view(clip)
    torch.manual_seed(5)
    b = view(clip)
    assert torch.equal(a, b)


def test_multiscale_crop_sizes_and_positions():
    crop = MultiScaleCrop(224)
    torch.manual_seed(0)
    h, w = 240, 320  # short side already 256 * 240/256; crops relative to it
    seen_sizes, seen_pos = set(), set()
    scales = (1.0, 0.875, 0.75, 0.66)
    for _ in range(300):
        top, left, ch, cw = crop.params(h, w)
        assert 0 <= top and top + ch <= h + 1e-6 and 0 <= left and left + cw <= w + 1e-6
        ratio_h, ratio_w = ch / min(h, w), cw / min(h, w)
        i = min(range(4), key=lambda k: abs(scales[k] - ratio_h))
        j = min(range(4), key=lambda k: abs(scales[k] - ratio_w))
        assert abs(i - j) <= 1  # width and height at most one scale apart
        seen_sizes.add((i, j))
        seen_pos.add((round(top / max(h - ch, 1e-9) * 4) if h > ch else 0,
                      round(left / max(w - cw, 1e-9) * 4) if w > cw else 0))
    assert len(seen_sizes) == 10  # every allowed (w, h) scale pair occurs
    assert {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2)} <= seen_pos
    out = crop(torch.zeros(2, 3, h, w, dtype=torch.uint8))
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.uint8


@pytest.mark.parametrize("shape,box", [((3, 240, 320), (15, 55, 210, 210)), ((2, 3, 480, 856), (30, 218, 420, 420)),
                                       ((4, 3, 64, 48), (3, 1, 40, 37)), ((3, 36, 44), (0, 0, 36, 44))])
def test_channels_last_crop_resize_equals_torchvision_resized_crop(shape, box):
    from torchvision.transforms.v2 import functional as TVF

    from datasets.transforms import _crop_resize

    clip = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    out = _crop_resize(clip, *box, 224)
    assert out.shape == (*shape[:-2], 224, 224)
    assert torch.equal(out, TVF.resized_crop(clip, *box, [224, 224], antialias=True))


@pytest.mark.parametrize("box", [(0, 0, 224, 224), (5, 7, 223, 150), (2, 3, 101, 219), (0, 0, 230, 200),
                                 (1, 2, 200, 250)])
def test_crop_resize_enlarging_without_antialias_equals_antialiased(box):
    """A box no larger than the output takes plain bilinear (faster): the pixels must be those
    of torchvision's antialiased resized_crop; a box larger on one side keeps antialiasing.
    The frame has a decoded JPEG's HWC memory layout, as the readers deliver it."""
    from torchvision.transforms.v2 import functional as TVF

    from datasets.transforms import _crop_resize

    gen = torch.Generator().manual_seed(1)
    frame = torch.randint(0, 256, (260, 300, 3), generator=gen, dtype=torch.uint8).permute(2, 0, 1)
    assert torch.equal(_crop_resize(frame, *box, 224), TVF.resized_crop(frame, *box, [224, 224], antialias=True))


@pytest.mark.parametrize("resize", ["antialias", "published"])
@pytest.mark.parametrize("hw", [(240, 320), (480, 856), (64, 64)])
def test_center_view_frames_equal_frame_by_frame(resize, hw):
    view = CenterView(224, resize=resize)
    gen = torch.Generator().manual_seed(2)
    frames = [torch.randint(0, 256, (*hw, 3), generator=gen, dtype=torch.uint8).permute(2, 0, 1) for _ in range(3)]
    expected = torch.stack([view.apply_uint8(f) for f in frames])
    assert torch.equal(view.apply_uint8_frames(frames), expected)
    out = torch.zeros(3, 3, 224, 224, dtype=torch.uint8)
    assert view.apply_uint8_frames(frames, out=out) is out and torch.equal(out, expected)
