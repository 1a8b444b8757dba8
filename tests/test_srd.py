"""Spatiotemporal Region Distortion: bookkeeping, exactness, motion, randomness, saliency."""
import logging
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from yacs.config import CfgNode

from datasets import srd
from utils.errors import ConfigError, DataError


def _clips(k=6, t=4, h=64, w=80, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((k, t, 3, h, w), generator=g)
    return (x * 255).round().to(torch.uint8) if dtype == torch.uint8 else x.to(dtype)


def _box_mask(boxes, shape):
    """Boolean [K, T, 3, H, W]: True inside each frame's box."""
    k, t, c, h, w = shape
    mask = torch.zeros(shape, dtype=torch.bool)
    for ki in range(k):
        for ti in range(t):
            x0, y0, x1, y1 = boxes[ki, ti].tolist()
            mask[ki, ti, :, y0:y1, x0:x1] = True
    return mask


@pytest.fixture(autouse=True)
def _fresh_warnings():
    srd._warned.clear()
    yield
    srd._warned.clear()


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def srd_warnings():
    """Warnings logged by datasets.srd, whatever handlers/propagation the project logger has."""
    handler = _Collect()
    log = logging.getLogger("FrameShield.srd")
    log.addHandler(handler)
    yield handler.messages
    log.removeHandler(handler)


@pytest.mark.parametrize("seed", range(8))
def test_only_the_contiguous_run_is_labelled_and_changed(seed):
    clips = _clips(k=8)
    out, pa, boxes = srd.apply_srd(clips, torch.Generator().manual_seed(seed), force=True)
    assert pa.dtype == torch.long and pa.shape == (8,)
    assert boxes.dtype == torch.long and boxes.shape == (8, 4, 4)
    ones = torch.nonzero(pa).flatten().tolist()
    assert ones and ones == list(range(ones[0], ones[-1] + 1))  # one contiguous run
    for k in range(8):
        if pa[k]:
            assert not torch.equal(out[k], clips[k])
            assert (boxes[k, :, 2] > boxes[k, :, 0]).all() and (boxes[k, :, 3] > boxes[k, :, 1]).all()
        else:
            assert torch.equal(out[k], clips[k])
            assert (boxes[k] == 0).all()


def test_run_start_and_length_cover_the_clip_axis():
    starts, lengths = set(), set()
    g = torch.Generator().manual_seed(3)
    for _ in range(300):
        plan = srd.plan_srd((5, 2, 3, 32, 32), g)
        assert 0 <= plan.start < 5 and 1 <= plan.length <= 5 - plan.start
        starts.add(plan.start)
        lengths.add(plan.length)
    assert starts == set(range(5)) and lengths == set(range(1, 6))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(4))
def test_pixels_outside_boxes_are_unchanged_bit_for_bit(dtype, seed):
    clips = _clips(k=5, t=3, h=48, w=72, dtype=dtype, seed=seed)
    before = clips.clone()
    severity = srd.SEVERITIES[seed % 3]
    out, pa, boxes = srd.apply_srd(clips, torch.Generator().manual_seed(seed), force=True,
                                   severity=severity)
    assert torch.equal(clips, before)  # the input is not modified (inplace=False)
    assert out.dtype == dtype
    inside = _box_mask(boxes, clips.shape)
    assert torch.equal(out[~inside], clips[~inside])
    assert inside.any() and not torch.equal(out[inside], clips[inside])
    if dtype.is_floating_point:
        assert out.min() >= 0 and out.max() <= 1


def test_inplace_writes_into_the_input():
    clips = _clips()
    out, pa, _ = srd.apply_srd(clips, torch.Generator().manual_seed(1), force=True, inplace=True)
    assert out is clips and pa.any()


def test_inplace_on_a_non_contiguous_tensor_pastes_at_the_boxes():
    base = _clips(k=3, t=4, h=40, w=56, dtype=torch.uint8)
    clips = base.permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)  # [K,T,...] view, T-major
    assert not clips.is_contiguous()
    expected, pa, boxes = srd.apply_srd(base, torch.Generator().manual_seed(2), force=True)
    out, pa2, boxes2 = srd.apply_srd(clips, torch.Generator().manual_seed(2), force=True, inplace=True)
    assert out is clips and torch.equal(pa, pa2) and torch.equal(boxes, boxes2)
    assert torch.equal(clips, expected)


def test_not_applied_returns_input_and_zero_labels():
    clips = _clips()
    out, pa, boxes = srd.apply_srd(clips, torch.Generator().manual_seed(0), p=0.0)
    assert out is clips and not pa.any() and not boxes.any()


def test_probability_p_is_respected():
    g = torch.Generator().manual_seed(0)
    clips = _clips(k=2, t=2, h=32, w=32)
    hits = sum(bool(srd.apply_srd(clips, g, p=0.3)[1].any()) for _ in range(300))
    assert 60 <= hits <= 120


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [(224, 224), (64, 96), (112, 112)])
def test_patch_moves_along_a_line_at_the_drawn_speed_and_stays_in_frame(seed, size):
    h, w = size
    clips = _clips(k=4, t=5, h=h, w=w, seed=seed)
    out, pa, boxes, plan = srd.apply_srd_with_plan(clips, torch.Generator().manual_seed(seed), force=True)
    scale = min(h, w) / 224
    speed = float(np.hypot(*plan.velocity))
    assert 20 * scale <= speed <= 35 * scale
    x0, y0, pw, ph = plan.box
    run = boxes[plan.start:plan.start + plan.length].reshape(-1, 4)
    assert (run[:, 0] >= 0).all() and (run[:, 1] >= 0).all()
    assert (run[:, 2] <= w).all() and (run[:, 3] <= h).all()
    assert ((run[:, 2] - run[:, 0]) == pw).all() and ((run[:, 3] - run[:, 1]) == ph).all()
    assert run[0, :2].tolist() == [x0, y0]
    for i, (bx, by, _, _) in enumerate(run.tolist()):
        ex, ey = x0 + plan.velocity[0] * i, y0 + plan.velocity[1] * i
        # on the line (rounded), unless the frame edge stopped it
        assert bx == min(max(round(ex), 0), w - pw) or abs(bx - ex) <= 0.5 + 1e-6
        assert by == min(max(round(ey), 0), h - ph) or abs(by - ey) <= 0.5 + 1e-6
    if plan.length * 5 > 1 and 0 < run[1, 0] < w - pw and 0 < run[1, 1] < h - ph:
        step = float(np.hypot(*(run[1, :2] - run[0, :2]).tolist()))
        assert abs(step - speed) <= 1.5
    # the same patch sits in every frame of the run
    ki, ti = plan.start, 0
    first = out[ki, ti, :, y0:y0 + ph, x0:x0 + pw]
    for k in range(plan.start, plan.start + plan.length):
        for t in range(5):
            bx0, by0, bx1, by1 = boxes[k, t].tolist()
            assert torch.equal(out[k, t, :, by0:by1, bx0:bx1], first)


def test_patch_really_moves_between_frames():
    moved = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        _, _, boxes, plan = srd.apply_srd_with_plan(_clips(k=4, t=5, h=224, w=224), g, force=True)
        run = boxes[plan.start:plan.start + plan.length].reshape(-1, 4)
        if len(run) > 1:
            moved += int((run[1:, :2] != run[:-1, :2]).any())
    assert moved >= 5


@pytest.mark.parametrize("name", srd.DISTORTION_NAMES)
@pytest.mark.parametrize("severity", srd.SEVERITIES)
def test_each_distortion_changes_the_patch_and_stays_in_range(name, severity):
    patch = torch.rand((3, 40, 30), generator=torch.Generator().manual_seed(5)) * 0.8 + 0.1
    out = srd.DISTORTIONS[name](patch, torch.Generator().manual_seed(1), srd.LEVELS[severity], 1.0)
    assert out.shape == patch.shape and out.dtype == patch.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert (out - patch).abs().max() > 0.05


def test_distortions_handle_tiny_patches():
    for name in srd.DISTORTION_NAMES:
        for shape in [(3, 1, 1), (3, 2, 7), (3, 6, 3)]:
            g = torch.Generator().manual_seed(0)
            out = srd.DISTORTIONS[name](torch.rand(shape), g, srd.LEVELS["heavy"], 0.3)
            assert out.shape == shape and torch.isfinite(out).all()


def test_blur_matches_torchvision_gaussian_blur():
    import torchvision.transforms.functional as TF

    patch = torch.rand((3, 20, 17), generator=torch.Generator().manual_seed(0))
    ours = srd.gaussian_blur(patch, None, srd.LEVELS["medium"], 1.0)
    sigma = 0.3 * ((5 - 1) * 0.5 - 1) + 0.8
    assert torch.allclose(ours, TF.gaussian_blur(patch, [5, 5], [sigma, sigma]), atol=1e-5)


def test_deterministic_with_a_fixed_generator_and_different_across_seeds_and_calls():
    clips = _clips()
    a = srd.apply_srd(clips, torch.Generator().manual_seed(7), force=True)
    b = srd.apply_srd(clips, torch.Generator().manual_seed(7), force=True)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = srd.apply_srd(clips, torch.Generator().manual_seed(8), force=True)
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(7)
    first, second = srd.apply_srd(clips, g, force=True), srd.apply_srd(clips, g, force=True)
    assert not torch.equal(first[0], second[0])


def test_elastic_field_is_fresh_on_every_call():
    g = torch.Generator().manual_seed(0)
    patch = torch.rand((3, 32, 32), generator=torch.Generator().manual_seed(1))
    one = srd.elastic(patch, g, srd.LEVELS["medium"], 1.0)
    two = srd.elastic(patch, g, srd.LEVELS["medium"], 1.0)
    assert not torch.equal(one, two)


def test_global_random_states_are_untouched():
    torch_state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    g = torch.Generator().manual_seed(0)
    saliency = torch.zeros(32, 32)
    saliency[4:20, 10:30] = 1.0
    for severity in srd.SEVERITIES:
        srd.apply_srd(_clips(k=3, t=2, h=32, w=32), g, force=True, severity=severity)
        srd.apply_srd(_clips(k=3, t=2, h=32, w=32, dtype=torch.uint8), g, p=0.5)
        srd.apply_srd(_clips(k=3, t=2, h=32, w=32), g, force=True, mode="gradcam", saliency=saliency)
    assert torch.equal(torch.get_rng_state(), torch_state)
    new_np = np.random.get_state()
    assert new_np[0] == np_state[0] and np.array_equal(new_np[1], np_state[1]) and new_np[2:] == np_state[2:]
    assert random.getstate() == py_state


@pytest.mark.parametrize("seed", range(6))
def test_gradcam_mode_puts_the_region_inside_the_salient_blob(seed):
    h, w = 64, 96
    saliency = torch.zeros(32, 48)  # half resolution: resized to the frame
    saliency[2:10, 30:46] = 0.9  # largest blob -> frame rows 4..20, cols 60..92
    saliency[20:24, 2:6] = 0.8  # a smaller blob that must be ignored
    g = torch.Generator().manual_seed(seed)
    _, _, boxes, plan = srd.apply_srd_with_plan(_clips(k=3, t=2, h=h, w=w), g, force=True,
                                                mode="gradcam", saliency=saliency)
    assert plan.region == "gradcam"
    x0, y0, pw, ph = plan.box
    assert 57 <= x0 and x0 + pw <= 95 and 1 <= y0 and y0 + ph <= 23
    assert pw <= w // 4 and ph <= h // 4
    assert pw >= (w // 4) // 2 - 1 and ph >= min(16, h // 4) // 2 - 1


def test_gradcam_mode_uses_the_first_selected_clips_map():
    saliency = torch.zeros(4, 32, 32)
    saliency[:, 0:8, 0:8] = 1.0  # default: top-left
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        plan = srd.plan_srd((4, 2, 3, 32, 32), g, mode="gradcam", saliency=saliency)
        assert plan.box[0] + plan.box[2] <= 9 and plan.box[1] + plan.box[3] <= 9


def test_gradcam_mode_without_a_mask_falls_back_to_center_with_a_warning(srd_warnings):
    out, pa, boxes, plan = srd.apply_srd_with_plan(_clips(), torch.Generator().manual_seed(0),
                                                   force=True, mode="gradcam", saliency=None)
    assert plan.region == "center-fallback" and pa.any()
    assert any("center region" in m for m in srd_warnings)
    centered = srd.apply_srd_with_plan(_clips(), torch.Generator().manual_seed(0), force=True)[3]
    assert centered.box == plan.box  # same draws as center mode


def test_gradcam_mode_with_an_empty_mask_falls_back(srd_warnings):
    plan = srd.plan_srd((3, 2, 3, 32, 32), torch.Generator().manual_seed(0), mode="gradcam",
                        saliency=torch.zeros(16, 16, dtype=torch.uint8))
    assert plan.region == "center-fallback" and srd_warnings


def test_load_saliency_reads_png_masks_with_nearest_frame(tmp_path, srd_warnings):
    folder = tmp_path / "Normal" / "vid_001"
    folder.mkdir(parents=True)
    for idx, value in [(0, 10), (12, 120), (24, 250)]:
        Image.fromarray(np.full((8, 10), value, dtype=np.uint8)).save(folder / f"{idx}.png")
    assert srd.mask_path(tmp_path, "Normal/vid_001", 12) == folder / "12.png"
    frame_inds = torch.tensor([[0, 6], [12, 18], [23, 29]])
    sal = srd.load_saliency(tmp_path, "Normal/vid_001", frame_inds)
    assert sal.shape == (3, 8, 10) and sal.dtype == torch.float32
    assert torch.allclose(sal[:, 0, 0], torch.tensor([10, 120, 250]) / 255.0)
    assert srd.load_saliency(tmp_path, "Normal/missing", frame_inds) is None
    assert any("Normal/missing" in m for m in srd_warnings)
    with pytest.raises(DataError):
        srd.mask_path(tmp_path, "../escape", 0)


def _cfg(**adv):
    base = dict(SRD_PROB=0.5, SRD_SEVERITY="medium", SRD_MODE="center", GRADCAM_DIR="")
    base.update(adv)
    return CfgNode({"ADV_TRAIN": CfgNode(base)})


def test_options_from_config():
    assert srd.srd_options_from_config(_cfg()) == dict(p=0.5, severity="medium", mode="center")
    opts = srd.srd_options_from_config(_cfg(SRD_PROB=1.0, SRD_SEVERITY="heavy", SRD_MODE="gradcam",
                                            GRADCAM_DIR="/masks"))
    assert opts == dict(p=1.0, severity="heavy", mode="gradcam")
    for bad in [dict(SRD_PROB=1.5), dict(SRD_SEVERITY="extreme"), dict(SRD_MODE="random"),
                dict(SRD_MODE="gradcam", GRADCAM_DIR="")]:
        with pytest.raises(ConfigError):
            srd.srd_options_from_config(_cfg(**bad))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError):
        srd.apply_srd(torch.rand(2, 3, 32, 32), torch.Generator(), force=True)
    with pytest.raises(ValueError):
        srd.apply_srd(_clips(), torch.Generator(), force=True, severity="extreme")


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 5), t=st.integers(1, 4), h=st.integers(4, 48), w=st.integers(4, 48),
       uint8=st.booleans(), severity=st.sampled_from(srd.SEVERITIES), seed=st.integers(0, 2**31))
def test_any_shape_keeps_outside_pixels_and_frame_bounds(k, t, h, w, uint8, severity, seed):
    clips = _clips(k=k, t=t, h=h, w=w, dtype=torch.uint8 if uint8 else torch.float32, seed=seed % 97)
    out, pa, boxes = srd.apply_srd(clips, torch.Generator().manual_seed(seed), force=True, severity=severity)
    assert out.dtype == clips.dtype and out.shape == clips.shape
    ones = torch.nonzero(pa).flatten().tolist()
    assert ones == list(range(ones[0], ones[-1] + 1))
    run = boxes[pa.bool()].reshape(-1, 4)
    assert (run[:, :2] >= 0).all() and (run[:, 2] <= w).all() and (run[:, 3] <= h).all()
    assert (run[:, 2] > run[:, 0]).all() and (run[:, 3] > run[:, 1]).all()
    assert not boxes[~pa.bool()].any()
    inside = _box_mask(boxes, clips.shape)
    assert torch.equal(out[~inside], clips[~inside])
    if not uint8:
        assert out.min() >= 0 and out.max() <= 1
