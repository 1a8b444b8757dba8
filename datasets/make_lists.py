"""Write FrameShield list files for a real dataset from the videos on disk plus its ground truth.

The benchmark list files are not shipped, so this tool rebuilds them::

    python -m datasets.make_lists --root data/shanghaitech --videos training/frames testing/frames \\
        --gt data/shanghaitech/test_frame_mask --out-train data/shanghaitech/train.txt \\
        --out-test data/shanghaitech/test.txt

Videos: every folder under ``ROOT/SUBDIR`` (searched recursively) that directly holds image
files (.jpg/.jpeg/.png/.bmp) is one frame-folder video (frames counted on disk); every
video file (.mp4/.avi/.mkv/.mov/.webm/.mpg/.mpeg/.m4v) is one video (frames counted by
decord). A video's *name* is its path under SUBDIR without a video-file extension
(``01_0014``, ``Abuse/Abuse001``; also for a frame folder named like a video file).

Ground truth (``--gt``), either
- a CSV with header ``video,label`` and optional columns ``split`` (``train``/``test``) and
  ``intervals`` (``start-end`` pairs, end exclusive, separated by ``;``; empty = none).
  ``video`` is the video's name (an extension, if written, is ignored). Without a
  ``split`` column every video goes into every list asked for.
- or a folder of ShanghaiTech-style frame masks ``<name>.npy`` (1-D, one 0/1 value per
  frame). A video with a mask is a test video (label 1 when any frame is 1, intervals =
  the runs of 1s); a video without one is a normal training video (label 0).

Output: the train list has 4 columns ``<path> 0 <num_frames> <label>``; the test list has 5
columns ``<path> <num_frames> <label> <start> <end>`` (``0 N`` for a video without an
interval, as in the public ShanghaiTech list) or, when some video has several intervals,
3 + 2k columns padded with ``-1 -1`` (the UCF layout). Paths are relative to ROOT. Files are
written atomically; an existing list is replaced only with ``--overwrite``.
"""
import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import DataError, FrameShieldError, ListFileError
from utils.io import atomic_write_text

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v"}
_INTERVAL_RE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*", re.ASCII)


@dataclass
class VideoEntry:
    """One video found on disk: ``path`` relative to ROOT (posix), ``name`` used to match GT."""

    path: str
    name: str
    num_frames: int


@dataclass
class Truth:
    """Ground truth of one video: class id, end-exclusive intervals, split (None = any list)."""

    label: int
    intervals: list = field(default_factory=list)
    split: str | None = None


# ---------------------------------------------------------------- videos on disk
def count_video_frames(path):
    """Frames in a video file, by decord; DataError when it cannot be read or is empty."""
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=1)
        count = len(reader)
    except (decord.DECORDError, RuntimeError) as exc:
        raise DataError(f"cannot read video {path}: {exc}") from None
    if count <= 0:
        raise DataError(f"video {path} has no frames")
    return count


def scan_videos(root, subdir):
    """All videos under ``root/subdir`` (sorted by path) with their frame counts."""
    root = Path(root)
    base = root / subdir
    if not base.is_dir():
        raise DataError(f"videos folder not found: {base} (check --root and --videos)")
    entries = []
    for folder in sorted([base, *[p for p in base.rglob("*") if p.is_dir()]]):
        files = [p for p in folder.iterdir() if p.is_file()]
        frames = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        if frames and folder != base:
            entries.append(_entry(root, base, folder, _frame_count(folder, frames)))
        for video in sorted(p for p in files if p.suffix.lower() in VIDEO_SUFFIXES):
            entries.append(_entry(root, base, video, count_video_frames(video)))
    # a frame folder's own sub-folders are not videos of their own
    frame_dirs = {e.path for e in entries}
    entries = [e for e in entries if not any(e.path.startswith(d + "/") for d in frame_dirs if d != e.path)]
    return sorted(entries, key=lambda e: e.path)


def _frame_count(folder, frames):
    """Number of frames of a frame folder, refusing what the loaders could not read as one
    numbered run: two image suffixes, or a gap in the numbers (the count written would then
    not be the frames the loader finds, and it would stop on the first missing one)."""
    suffixes = sorted({p.suffix.lower() for p in frames})
    if len(suffixes) > 1:
        counts = ", ".join(f"{sum(p.suffix.lower() == s for p in frames)} {s}" for s in suffixes)
        raise DataError(f"frame folder {folder} mixes image suffixes ({counts}); the loaders read one "
                        "DATA.FILENAME_TMPL, so convert or rename the frames to one suffix first")
    numbers = [re.search(r"(\d+)$", p.stem) for p in frames]
    if all(numbers):
        values = sorted(int(m.group(1)) for m in numbers)
        expected = range(values[0], values[0] + len(values))
        if values != list(expected):
            missing = next(n for n, v in zip(expected, values) if n != v)
            raise DataError(f"frame folder {folder}: frame number {missing} is missing (frames {values[0]}.."
                            f"{values[-1]} hold {len(values)} files); restore the missing frames or renumber "
                            "them consecutively before making lists")
    return len(frames)


def _entry(root, base, path, num_frames):
    rel = path.relative_to(root).as_posix()
    if any(c.isspace() for c in rel):
        raise DataError(f"video path {rel!r} contains whitespace, which list files cannot hold; rename it")
    # A TAD-style frame folder may be named like a video file (01_Accident_006.mp4): its
    # name loses the suffix too, so ground truth written either way matches it.
    return VideoEntry(rel, _strip_video_suffix(path.relative_to(base).as_posix()), num_frames)


# ---------------------------------------------------------------- ground truth
def read_gt_csv(path):
    """``{name: Truth}`` from a ground-truth CSV (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ListFileError(f"cannot read ground-truth CSV {path}: {exc}") from None
    reader = csv.reader(io.StringIO(text))
    try:
        rows = [(n, row) for n, row in enumerate(reader, start=1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise ListFileError(f"ground-truth CSV {path} cannot be read as CSV: {exc}") from None
    if not rows:
        raise ListFileError(f"ground-truth CSV {path} is empty; it needs a header 'video,label[,split][,intervals]'")
    header = [c.strip().lower() for c in rows[0][1]]
    allowed = {"video", "label", "split", "intervals"}
    if "video" not in header or "label" not in header or not set(header) <= allowed or len(set(header)) != len(header):
        raise ListFileError(
            f"{path}:{rows[0][0]}: header must name the columns video,label and optionally split,intervals; "
            f"got {','.join(rows[0][1])!r}"
        )
    truth = {}
    for number, row in rows[1:]:
        where = f"{path}:{number}"
        if len(row) != len(header):
            raise ListFileError(f"{where}: expected {len(header)} columns ({','.join(header)}), got {len(row)}")
        cells = {key: value.strip() for key, value in zip(header, row)}
        name = _strip_video_suffix(cells["video"])
        if not name:
            raise ListFileError(f"{where}: empty video name")
        if name in truth:
            raise ListFileError(f"{where}: video {name!r} appears twice")
        if not re.fullmatch(r"\d+", cells["label"], re.ASCII):
            raise ListFileError(f"{where}: label must be a class id >= 0, got {cells['label']!r}")
        split = cells.get("split") or None
        if split not in (None, "train", "test"):
            raise ListFileError(f"{where}: split must be 'train' or 'test', got {split!r}")
        truth[name] = Truth(int(cells["label"]), _parse_intervals(cells.get("intervals", ""), where), split)
    return truth


def _strip_video_suffix(name):
    path = Path(name.replace("\\", "/"))
    if path.suffix.lower() in VIDEO_SUFFIXES:
        path = path.with_suffix("")
    return path.as_posix() if name else ""


def _parse_intervals(text, where):
    intervals = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        match = _INTERVAL_RE.fullmatch(part)
        if not match:
            raise ListFileError(f"{where}: interval {part!r} is not 'start-end' (non-negative integers)")
        start, end = int(match.group(1)), int(match.group(2))
        if end <= start:
            raise ListFileError(f"{where}: interval {part!r} ends before it starts (end is exclusive)")
        intervals.append((start, end))
    return sorted(intervals)


def read_gt_masks(folder):
    """``{name: 1-D uint8 mask}`` from ``<name>.npy`` files (searched recursively)."""
    folder = Path(folder)
    masks = {}
    for path in sorted(folder.rglob("*.npy")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        try:
            mask = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read frame mask {path}: {exc}") from None
        if mask.ndim != 1 or mask.size == 0:
            raise DataError(f"frame mask {path} must be a non-empty 1-D array (one 0/1 value per frame), got shape "
                            f"{mask.shape}; save it as one row, or remove it")
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"frame mask {path} must hold only 0 and 1 (it holds e.g. "
                            f"{mask[~np.isin(mask, (0, 1))][:3].tolist()}); fix or regenerate the mask")
        masks[name] = mask.astype(np.uint8)
    if not masks:
        raise DataError(f"no <video>.npy frame masks found in {folder}")
    return masks


def mask_intervals(mask):
    """End-exclusive (start, end) runs of 1s in a 1-D 0/1 mask."""
    padded = np.concatenate([[0], np.asarray(mask, dtype=np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(edges[0::2], edges[1::2])]


def _truth_from_masks(videos, masks):
    names = {v.name for v in videos}
    extra = sorted(set(masks) - names)
    if extra:
        raise DataError(f"frame masks without a video on disk: {', '.join(extra[:5])}")
    truth = {}
    for video in videos:
        mask = masks.get(video.name)
        if mask is None:
            truth[video.name] = Truth(0, [], "train")
            continue
        if mask.size != video.num_frames:
            raise DataError(
                f"frame mask of {video.name} has {mask.size} values but the video has {video.num_frames} frames "
                "on disk; re-extract the missing frames, or fix the mask (one value per frame)"
            )
        intervals = mask_intervals(mask)
        truth[video.name] = Truth(1 if intervals else 0, intervals, "test")
    return truth


# ---------------------------------------------------------------- list lines
def train_line(video, truth):
    return f"{video.path} 0 {video.num_frames} {truth.label}"


def test_lines(pairs):
    """Lines of a test list for ``[(VideoEntry, Truth)]``: 5 columns, or 3 + 2k when needed."""
    most = max((len(t.intervals) for _, t in pairs), default=0)
    lines = []
    for video, truth in pairs:
        for start, end in truth.intervals:
            if end > video.num_frames:
                raise DataError(
                    f"interval {start}-{end} of {video.name} ends after its {video.num_frames} frames on disk; fix the "
                    "interval in the ground truth (the end is exclusive) or re-extract the frames"
                )
        if most <= 1:
            interval = truth.intervals[0] if truth.intervals else (0, video.num_frames)
            if not truth.intervals and truth.label > 0:
                interval = (-1, -1)  # labelled anomalous but no interval known
            columns = [*interval]
        else:
            columns = [v for pair in truth.intervals for v in pair]
            columns += [-1, -1] * (most - len(truth.intervals))
        lines.append(" ".join([video.path, str(video.num_frames), str(truth.label), *map(str, columns)]))
    return lines


def make_lists(root, video_dirs, gt, out_train=None, out_test=None, skip_unlabelled=False, overwrite=False):
    """Scan the videos, match the ground truth, write the lists; returns ``{"train": n, "test": n}``."""
    if not out_train and not out_test:
        raise DataError("nothing to write: give --out-train and/or --out-test")
    for out in (out_train, out_test):
        if out and Path(out).exists() and not overwrite:
            raise DataError(f"{out} exists; pass --overwrite to replace it")
    videos = [v for d in video_dirs for v in scan_videos(root, d)]
    if not videos:
        raise DataError(f"no videos (frame folders or video files) found under {root} in {list(video_dirs)}")
    seen = {}
    for video in videos:
        if video.name in seen:
            raise DataError(f"two videos share the name {video.name!r}: {seen[video.name]} and {video.path}")
        seen[video.name] = video.path
    gt = Path(gt)
    if gt.is_dir():
        truth = _truth_from_masks(videos, read_gt_masks(gt))
    elif gt.is_file():
        truth = read_gt_csv(gt)
        missing_videos = sorted(set(truth) - set(seen))
        if missing_videos:
            raise DataError(f"{gt} names videos not found on disk: {', '.join(missing_videos[:5])}")
    else:
        raise DataError(f"ground truth not found: {gt} (a CSV file or a folder of .npy masks)")
    unlabelled = [v.name for v in videos if v.name not in truth]
    if unlabelled and not skip_unlabelled:
        raise DataError(
            f"{len(unlabelled)} videos have no ground truth in {gt} (e.g. {', '.join(unlabelled[:5])}); "
            "add them or pass --skip-unlabelled"
        )
    pairs = [(v, truth[v.name]) for v in videos if v.name in truth]
    counts = {}
    if out_train:
        chosen = [(v, t) for v, t in pairs if t.split in (None, "train")]
        atomic_write_text(out_train, "".join(train_line(v, t) + "\n" for v, t in chosen))
        counts["train"] = len(chosen)
    if out_test:
        chosen = [(v, t) for v, t in pairs if t.split in (None, "test")]
        atomic_write_text(out_test, "".join(line + "\n" for line in test_lines(chosen)))
        counts["test"] = len(chosen)
    return counts


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m datasets.make_lists",
        description="Write FrameShield train/test list files from videos on disk plus ground truth.",
    )
    parser.add_argument("--root", required=True, help="dataset root (DATA.ROOT); list paths are relative to it")
    parser.add_argument("--videos", nargs="+", required=True, metavar="SUBDIR",
                        help="folder(s) under ROOT holding frame folders and/or video files")
    parser.add_argument("--gt", required=True,
                        help="ground-truth CSV (video,label[,split][,intervals]) or folder of <video>.npy masks")
    parser.add_argument("--out-train", default=None, help="train list to write (4 columns)")
    parser.add_argument("--out-test", default=None, help="test list to write (5 or 3+2k columns)")
    parser.add_argument("--skip-unlabelled", action="store_true", help="leave out videos missing from the CSV")
    parser.add_argument("--overwrite", action="store_true", help="replace existing list files")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        counts = make_lists(args.root, args.videos, args.gt, args.out_train, args.out_test,
                            args.skip_unlabelled, args.overwrite)
    except FrameShieldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for kind, count in counts.items():
        print(f"wrote {count} videos to {args.out_train if kind == 'train' else args.out_test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
