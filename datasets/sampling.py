"""Which frames of a video make up its clips.

Training: K clips of T frames spaced ``interval`` apart, one clip per equal segment of the
video (segment k holds frames ``[ceil(k*N/K), ceil((k+1)*N/K))``), so the clips cover the
whole video in time order. The clip's start is random within its segment when a random
generator is given, centred in the range of allowed starts otherwise. Frame indices never
wrap around the video's end: every clip's indices rise (or stay equal) and lie in
``[0, N)``, as mmaction2's ``SampleFrames`` gives with a non-wrapping out-of-bound rule:

- a segment at least one clip span long (``span = (T - 1) * interval + 1``) holds its clip:
  the start is drawn from ``[seg_start, seg_end - span]`` (long videos: N >= K * span);
- a shorter segment lets its clip run past the segment's end: the start is drawn from
  ``[seg_start, min(seg_end - 1, N - span)]``, so that the clip still ends inside the video
  when it can without starting before its segment (as ``SampleFrames`` keeps clips of a
  video longer than a clip inside the video);
- a segment that starts less than a span before the video's end (``seg_start > N - span``,
  e.g. the last segment of a 300-frame video with 16 clips of 5 frames every 6th, or every
  segment of a video shorter than a span) starts its clip at ``seg_start``, the start that
  needs the fewest repeats, and the frames past the last one are clamped to frame ``N - 1``
  (mmaction2's ``out_of_bound_opt='repeat_last'`` repeats the clip's last in-range frame the
  same way; its default ``'loop'`` wraps modulo N, which this sampler does not do: a wrapped
  clip jumps from the video's end back to its start).

Testing: the video is cut into consecutive segments of ``T * interval`` frames; each segment
gives one clip of T frames spread evenly over it (exactly every ``interval``-th frame for a
full segment). A last segment with fewer than T frames is dropped. Deterministic.
"""
from dataclasses import dataclass

import numpy as np


def clip_span(clip_len, interval):
    """Frames from the first to the last frame of one clip, inclusive."""
    return (clip_len - 1) * interval + 1


def train_clip_indices(num_frames, num_clips, clip_len, interval, rng=None):
    """Frame indices ``int64 [num_clips, clip_len]`` in ``[0, num_frames)``, rising along each row.

    ``rng``: a ``numpy.random.Generator`` for a random offset in each segment; ``None``
    centres each clip in its range of starts (deterministic). See the module docstring for
    short segments and short videos.
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    span = clip_span(clip_len, interval)
    starts = _segment_starts(num_frames, num_clips, span, rng)
    steps = np.arange(clip_len, dtype=np.int64) * interval
    return np.minimum(starts[:, None] + steps[None, :], num_frames - 1)


def _segment_starts(num_frames, num_clips, span, rng):
    """First frame ``int64 [num_clips]`` of each clip: inside its segment, non-decreasing."""
    # segment k holds the frames f with k*n/K <= f < (k+1)*n/K: [lo_k, hi_k)
    bounds = np.ceil(np.arange(num_clips + 1) * num_frames / num_clips).astype(np.int64)
    lo, hi = bounds[:-1], bounds[1:]
    # a video with fewer frames than clips has empty segments: use the frame under them
    lo = np.where(hi > lo, lo, np.arange(num_clips) * num_frames // num_clips)
    hi = np.maximum(hi, lo + 1)
    fits = hi - lo >= span
    # last start: keep the clip inside its segment; else inside the video; else the segment start
    last = np.where(fits, hi - span, np.maximum(lo, np.minimum(hi - 1, num_frames - span)))
    if rng is not None:
        return lo + np.floor(rng.random(num_clips) * (last - lo + 1)).astype(np.int64)
    return (lo + last) // 2


@dataclass(frozen=True)
class Segment:
    """One test segment: frames ``[start, start + length)``, sampled at ``frame_inds``."""

    start: int
    length: int
    frame_inds: tuple


def video_segments(num_frames, clip_len, interval):
    """Consecutive segments of ``clip_len * interval`` frames covering the video.

    A full segment samples frames ``start, start + interval, ...``; a shorter last segment
    with at least ``clip_len`` frames samples ``clip_len`` frames spread evenly over it; one
    with fewer frames is dropped (the scores of its frames come from the segment before).
    """
    seg_len = clip_len * interval
    segments = []
    for start in range(0, num_frames, seg_len):
        length = min(seg_len, num_frames - start)
        if length < clip_len:
            continue
        inds = start + (np.arange(clip_len) * length) // clip_len
        segments.append(Segment(start, length, tuple(int(i) for i in inds)))
    return segments
