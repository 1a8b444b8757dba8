"""SRD in the coordinates of what the model sees (issue 13).

Real frame sizes (856x480 JPEG, 320x240 and 360x240 PNG), the 224 px input, both training
views, both DATA.RESIZE modes, center and gradcam modes: every clip labelled 1 differs from
the same item without SRD in every view, every clip labelled 0 is identical, and the box and
speed follow the published ranges relative to the 224 crop. Before the fix SRD drew on the
full frame, so on 320x240 some labelled clips were unchanged after the centre crop.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.io import encode_jpeg, encode_png

from datasets import srd
from datasets.lists import parse_list_file
from datasets.transforms import CenterView, MultiScaleCrop
from datasets.video_dataset import TrainVideoDataset
from tests.cfg_helpers import apply_overrides
from utils.config import get_default_config

K, T, SIZE = 4, 2, 224
FRAME_SIZES = [(480, 856, "jpg"), (240, 320, "png"), (240, 360, "png")]


def _textured_frames(n, h, w, seed=0):
    """``uint8 [n, 3, h, w]``: smooth random texture plus fine noise, shifted per frame."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 3, h // 16 + 2, w // 16 + 2), generator=g)
    base = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    frames = []
    for i in range(n):
        noise = torch.rand((3, h, w), generator=g) * 0.25
        frames.append(torch.roll(base, shifts=(2 * i, 3 * i), dims=(1, 2)) * 0.75 + noise)
    return (torch.stack(frames) * 255).round().clamp(0, 255).to(torch.uint8)


def _write_video(root, h, w, ext, num_frames=16):
    folder = root / "frames" / "normal"
    folder.mkdir(parents=True)
    for i, frame in enumerate(_textured_frames(num_frames, h, w)):
        data = encode_jpeg(frame, quality=95) if ext == "jpg" else encode_png(frame)
        (folder / f"img_{i:08}.{ext}").write_bytes(data.numpy().tobytes())
    (root / "train.txt").write_text(f"frames/normal 0 {num_frames} 0\n")


def _dataset(root, ext, **overrides):
    cfg = get_default_config()
    cfg.DATA.ROOT = str(root)
    cfg.DATA.TRAIN_FILE = str(root / "train.txt")
    cfg.DATA.FILENAME_TMPL = "img_{:08}." + ext
    cfg.DATA.INPUT_SIZE = SIZE
    cfg.DATA.NUM_CLIPS, cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL = K, T, 2
    cfg.DATA.NUM_WORKERS = 0
    cfg.TRAIN.USE_VIEW2 = True
    cfg.ADV_TRAIN.SRD_PROB = 1.0
    apply_overrides(cfg, overrides)
    return TrainVideoDataset(parse_list_file(cfg.DATA.TRAIN_FILE), cfg, cfg.DATA.TRAIN_FILE)


def _check_visibility(with_srd, without, epochs):
    for epoch in range(epochs):
        item, plain = with_srd[(0, epoch)], without[(0, epoch)]
        labels = item["pa_labels"]
        assert labels.any() and torch.equal(item["frame_inds"], plain["frame_inds"])
        assert item["imgs"].shape == (2, K, T, 3, SIZE, SIZE)
        for view in range(2):
            for clip in range(K):
                same = torch.equal(item["imgs"][view, clip], plain["imgs"][view, clip])
                assert same == (labels[clip] == 0), (epoch, view, clip, labels.tolist())


@pytest.mark.parametrize("resize", ["published", "antialias"])
@pytest.mark.parametrize("h,w,ext", FRAME_SIZES)
def test_labelled_clips_change_in_both_views_and_others_do_not(tmp_path, h, w, ext, resize):
    _write_video(tmp_path, h, w, ext)
    options = {"DATA.RESIZE": resize}
    with_srd = _dataset(tmp_path, ext, **options, **{"ADV_TRAIN.PSEUDO_ANOMALY": True})
    without = _dataset(tmp_path, ext, **options)
    _check_visibility(with_srd, without, epochs=12)  # before the fix every size failed in 12


def test_box_and_speed_are_relative_to_the_224_crop(tmp_path, monkeypatch):
    items = []
    real = srd.ItemSRD

    def keep(*args, **kwargs):
        items.append(real(*args, **kwargs))
        return items[-1]

    monkeypatch.setattr(srd, "ItemSRD", keep)
    _write_video(tmp_path, 480, 856, "jpg")
    dataset = _dataset(tmp_path, "jpg", **{"ADV_TRAIN.PSEUDO_ANOMALY": True})
    for epoch in range(12):
        dataset[(0, epoch)]
    plans = [plan for item in items for plan in item.plans]
    assert len(plans) == 24  # one per view
    for item in items:  # both views distort the same clips
        assert item.plans[0].start == item.plans[1].start == item.run[0]
        assert item.plans[0].length == item.plans[1].length == item.run[1]
    widths = [p.box[2] for p in plans]
    assert min(widths) >= int(0.1 * SIZE) and max(widths) <= int(0.5 * SIZE)
    assert max(widths) > 0.35 * SIZE  # the range is used, not just its bottom
    for p in plans:
        x0, y0, pw, ph = p.box
        assert 0 <= x0 <= SIZE - pw and 0 <= y0 <= SIZE - ph
        assert 20.0 - 1e-6 <= float(np.hypot(*p.velocity)) <= 35.0 + 1e-6  # published px/frame at 224


def _write_masks(mask_dir, frame_hw, num_frames=16):
    """Masks as gradcam.py writes them (test view's centre crop, SIZE x SIZE): the frame's
    left-centre area (frame columns 30-45 % of the width, rows 30-70 %) is salient."""
    h, w = frame_hw
    top, left, height, width = CenterView(SIZE, "published").crop_box(h, w)
    ys = top + (torch.arange(SIZE) + 0.5) * height / SIZE
    xs = left + (torch.arange(SIZE) + 0.5) * width / SIZE
    salient = ((ys[:, None] > 0.3 * h) & (ys[:, None] < 0.7 * h)
               & (xs[None, :] > 0.3 * w) & (xs[None, :] < 0.45 * w))
    folder = mask_dir / "frames" / "normal"
    folder.mkdir(parents=True)
    pixels = (salient.to(torch.uint8) * 255).numpy()
    for i in range(num_frames):
        Image.fromarray(pixels).save(folder / f"{i}.png")
    return salient


@pytest.mark.parametrize("h,w,ext", [(480, 856, "jpg"), (240, 360, "png")])
def test_gradcam_mode_is_visible_and_follows_the_mask_into_each_crop(tmp_path, monkeypatch, h, w, ext):
    items = []
    real = srd.ItemSRD

    def keep(*args, **kwargs):
        items.append(real(*args, **kwargs))
        return items[-1]

    monkeypatch.setattr(srd, "ItemSRD", keep)
    _write_video(tmp_path, h, w, ext)
    _write_masks(tmp_path / "cam", (h, w))
    options = {"DATA.RESIZE": "published"}
    with_srd = _dataset(tmp_path, ext, **options, **{
        "ADV_TRAIN.PSEUDO_ANOMALY": True, "ADV_TRAIN.SRD_MODE": "gradcam",
        "ADV_TRAIN.GRADCAM_DIR": str(tmp_path / "cam")})
    without = _dataset(tmp_path, ext, **options)
    _check_visibility(with_srd, without, epochs=4)
    view1 = CenterView(SIZE, "published")
    for item in items:
        plan = item.plans[0]  # view 1 = the test view: the box sits on the salient area
        assert plan.region == "gradcam"
        top, left, height, width = view1.crop_box(h, w)
        x0, y0, pw, ph = plan.box
        centre_x = left + (x0 + pw / 2) * width / SIZE
        centre_y = top + (y0 + ph / 2) * height / SIZE
        assert 0.3 * w <= centre_x <= 0.45 * w and 0.3 * h <= centre_y <= 0.7 * h
        assert item.plans[1].region in ("gradcam", "center-fallback")


def test_saliency_in_crop_maps_between_frame_regions():
    # mask of frame region rows 100-200, cols 200-400 at 50 x 100; salient: its left half
    mask = torch.zeros(50, 100)
    mask[:, :50] = 1.0
    mask_box = (100.0, 200.0, 100.0, 200.0)
    same = srd.saliency_in_crop(mask, mask_box, mask_box, 50)
    assert same.shape == (50, 50)
    # a crop covering frame rows 100-200, cols 250-350: salient where x < 300 (left half)
    out = srd.saliency_in_crop(mask, mask_box, (100.0, 250.0, 100.0, 100.0), 40)
    assert out[:, :19].min() > 0.99 and out[:, 21:].max() < 0.01
    # a crop reaching outside the mask's region reads as not salient there
    out = srd.saliency_in_crop(mask, mask_box, (0.0, 0.0, 400.0, 400.0), 40)
    assert out[:9].max() == 0 and out[:, :19].max() == 0 and out[12:18, 21:29].min() > 0.99
    # identity when the boxes agree and the mask has the crop's size
    square = torch.rand(32, 32)
    assert torch.allclose(srd.saliency_in_crop(square, (0, 0, 64, 64), (0, 0, 64, 64), 32), square, atol=1e-5)


def test_view2_frame_box_matches_its_crop():
    # published MultiScaleCrop: a frame whose columns encode their index -> the crop's
    # columns must be the frame columns the reported box names
    h, w = 240, 360
    cols = torch.arange(w, dtype=torch.float32).mul(255 / (w - 1)).round().to(torch.uint8)
    clip = cols.view(1, 1, 1, w).expand(1, 3, h, w).contiguous()
    crop = MultiScaleCrop(SIZE, resize="published")
    torch.manual_seed(0)
    for _ in range(20):
        params = crop.params(h, w)
        top, left, height, width = crop.frame_box(h, w, params)
        out = crop.crop(clip, params).float()
        first = float(out[0, 0, SIZE // 2, 0]) * (w - 1) / 255
        last = float(out[0, 0, SIZE // 2, -1]) * (w - 1) / 255
        assert abs(first - left) < 3 and abs(last - (left + width)) < 3
