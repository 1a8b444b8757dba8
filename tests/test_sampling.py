"""Clip sampling for training and segmenting for testing."""
import numpy as np
import pytest

from datasets.sampling import clip_span, train_clip_indices, video_segments


@pytest.mark.parametrize("num_frames", [400, 481, 1000])
def test_train_clips_one_per_segment_cover_video(num_frames):
    K, T, step = 16, 5, 6
    rng = np.random.default_rng(0)
    for _ in range(20):
        inds = train_clip_indices(num_frames, K, T, step, rng)
        assert inds.shape == (K, T) and inds.dtype == np.int64
        assert inds.min() >= 0 and inds.max() < num_frames
        seg = num_frames / K
        for k in range(K):
            # every clip lies inside its own segment, frames spaced `step`
            assert k * seg - 1 < inds[k, 0] and inds[k, -1] < (k + 1) * seg
            assert np.all(np.diff(inds[k]) == step)


def test_train_random_offsets_reach_both_ends_of_segment():
    rng = np.random.default_rng(1)
    starts = np.stack([train_clip_indices(640, 16, 5, 6, rng)[:, 0] for _ in range(400)])
    # segment 0 is frames [0, 40); a clip spans 25 frames -> starts 0..15
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 15
    assert starts[:, 15].max() == 615  # the last clip can end on the last frame (639)


def test_train_centered_is_deterministic():
    a = train_clip_indices(500, 8, 5, 6)
    b = train_clip_indices(500, 8, 5, 6)
    assert np.array_equal(a, b)
    seg = 500 / 8
    centers = (a[:, 0] + a[:, -1]) / 2
    assert np.all(np.abs(centers - (np.arange(8) + 0.5) * seg) <= 1)


@pytest.mark.parametrize("num_frames", [7, 30, 60])
def test_short_video_wraps(num_frames):
    inds = train_clip_indices(num_frames, 16, 5, 6, np.random.default_rng(2))
    assert inds.min() >= 0 and inds.max() < num_frames
    unwrapped = inds[:, :1] + np.arange(5) * 6
    assert np.array_equal(inds, unwrapped % num_frames)
    # each clip still starts inside its own segment, so the starts spread over the video
    seg = num_frames / 16
    assert np.all((inds[:, 0] >= np.floor(np.arange(16) * seg)) & (inds[:, 0] < (np.arange(16) + 1) * seg))


def test_segments_cover_video_exactly():
    T, step = 5, 6
    for num_frames in [5, 29, 30, 31, 34, 35, 433, 765]:
        segs = video_segments(num_frames, T, step)
        covered = np.zeros(num_frames, int)
        for s in segs:
            covered[s.start:s.start + s.length] += 1
            assert len(s.frame_inds) == T
            assert all(s.start <= i < s.start + s.length for i in s.frame_inds)
        tail = num_frames % (T * step)
        dropped = tail if 0 < tail < T else 0
        assert np.all(covered[:num_frames - dropped] == 1) and np.all(covered[num_frames - dropped:] == 0)
        assert segs == video_segments(num_frames, T, step)  # deterministic


def test_segment_frame_mapping():
    segs = video_segments(70, 5, 6)
    assert [(s.start, s.length) for s in segs] == [(0, 30), (30, 30), (60, 10)]
    assert segs[0].frame_inds == (0, 6, 12, 18, 24)
    assert segs[1].frame_inds == (30, 36, 42, 48, 54)
    assert segs[2].frame_inds == (60, 62, 64, 66, 68)  # short tail: spread evenly
    assert video_segments(63, 5, 6)[-1].start == 30  # 3-frame tail dropped
    assert video_segments(4, 5, 6) == []


def test_clip_span():
    assert clip_span(5, 6) == 25 and clip_span(1, 6) == 1
