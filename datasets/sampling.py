"""Which frames of a video make up its clips.

Training: K clips of T frames spaced ``interval`` apart, one clip per equal segment of the
video so that the clips cover the whole video; the clip's start is random within its
segment when a random generator is given, centred in it otherwise. A video too short for a
clip inside its segment wraps around (frame indices taken modulo the video length).

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
    """Frame indices ``int64 [num_clips, clip_len]`` in ``[0, num_frames)``.

    ``rng``: a ``numpy.random.Generator`` for a random offset in each segment; ``None``
    centres each clip in its segment (deterministic).
    """
    if num_frames <= 0:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    span = clip_span(clip_len, interval)
    # segment k holds the frames f with k*n/K <= f < (k+1)*n/K: [lo_k, hi_k)
    bounds = np.ceil(np.arange(num_clips + 1) * num_frames / num_clips).astype(np.int64)
    lo, hi = bounds[:-1], bounds[1:]
    # a video with fewer frames than clips has empty segments: use the frame under them
    lo = np.where(hi > lo, lo, np.arange(num_clips) * num_frames // num_clips)
    fits = hi - lo >= span
    # last start that keeps the clip inside its segment; a short segment lets the clip
    # start anywhere in it and wrap past the video's end
    last = np.where(fits, hi - span, np.maximum(hi - 1, lo))
    if rng is not None:
        starts = lo + np.floor(rng.random(num_clips) * (last - lo + 1)).astype(np.int64)
    else:
        starts = (lo + last) // 2
    steps = np.arange(clip_len, dtype=np.int64) * interval
    return (starts[:, None] + steps[None, :]) % num_frames


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
