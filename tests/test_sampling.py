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


def _segments(num_frames, K):
    bounds = np.ceil(np.arange(K + 1) * num_frames / K).astype(int)
    lo, hi = bounds[:-1], bounds[1:]
    lo = np.where(hi > lo, lo, np.arange(K) * num_frames // K)
    return lo, np.maximum(hi, lo + 1)


@pytest.mark.parametrize("num_frames", [5, 7, 20, 24, 25, 26, 40, 100, 299, 300, 401, 5000])
@pytest.mark.parametrize("random", [True, False])
def test_train_clips_rise_inside_video_one_per_segment(num_frames, random):
    """Never wrapped: each clip's frames rise or repeat the last frame; clips in time order."""
    K, T, step = 16, 5, 6
    span = (T - 1) * step + 1
    lo, hi = _segments(num_frames, K)
    rng = np.random.default_rng(num_frames)
    for _ in range(30 if random else 1):
        inds = train_clip_indices(num_frames, K, T, step, rng if random else None)
        assert inds.shape == (K, T) and inds.dtype == np.int64
        assert inds.min() >= 0 and inds.max() < num_frames
        assert np.all(np.diff(inds, axis=1) >= 0)  # rise (or stay on the last frame)
        starts = inds[:, 0]
        assert np.all(np.diff(starts) >= 0)  # clips in time order
        assert np.all((lo <= starts) & (starts < hi))  # each clip starts in its own segment
        # frames every `step`, clamped at the last frame; clamped only where unavoidable
        assert np.array_equal(inds, np.minimum(starts[:, None] + np.arange(T) * step, num_frames - 1))
        clamped = inds[:, -1] != starts + (T - 1) * step
        assert np.array_equal(clamped, starts > num_frames - span)
        assert np.all(starts[clamped] == lo[clamped])  # the start that repeats the fewest frames
        if num_frames >= K * span:  # long video: every clip inside its own segment
            assert np.all(inds[:, -1] < hi) and not clamped.any()


def test_train_clip_past_its_segment_instead_of_wrapping():
    """The issue's case: 300 frames, 16 clips x 5 frames every 6th (the old last clip was
    [290, 296, 2, 8, 14])."""
    inds = train_clip_indices(300, 16, 5, 6)
    assert inds[15].tolist() == [282, 288, 294, 299, 299]  # segment [282, 300): clamped at 299
    assert inds[14].tolist() == [269, 275, 281, 287, 293]  # segment [263, 282): runs past its end
    assert inds[0].tolist() == [9, 15, 21, 27, 33]  # segment [0, 19), shorter than a span: start in [0, 18]
    rng = np.random.default_rng(0)
    draws = np.stack([train_clip_indices(300, 16, 5, 6, rng) for _ in range(300)])
    assert np.all(draws[:, 15] == [282, 288, 294, 299, 299])
    assert draws[:, 14, 0].min() == 263 and draws[:, 14, 0].max() == 275  # ends at most on frame 299


def test_train_video_shorter_than_a_clip():
    inds = train_clip_indices(20, 4, 5, 6, np.random.default_rng(3))
    # segments start at 0, 5, 10, 15; each clip starts there and stops rising at frame 19
    assert inds.tolist() == [[0, 6, 12, 18, 19], [5, 11, 17, 19, 19], [10, 16, 19, 19, 19],
                             [15, 19, 19, 19, 19]]


def test_train_long_video_unchanged_by_the_short_video_rule():
    """N >= K * span: the draws are those of a clip uniformly placed inside its segment."""
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
    lo, hi = _segments(5000, 16)
    for _ in range(5):
        inds = train_clip_indices(5000, 16, 5, 6, rng_a)
        expected = lo + np.floor(rng_b.random(16) * (hi - 25 - lo + 1)).astype(np.int64)
        assert np.array_equal(inds[:, 0], expected)


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
