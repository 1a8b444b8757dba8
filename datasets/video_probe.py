"""What a user's video is: a frame folder or a video file, its frame count and frame rate.

infer.py scores videos that no list file describes, so their length and rate come from
the disk: a folder's run of consecutive frame numbers (``DATA.FILENAME_TMPL``; a gap or a
second suffix is an error, see datasets.frame_folders), or decord's
count and average rate for a file. Frame folders have no rate: they use ``fps`` (default
:data:`DEFAULT_FOLDER_FPS`); an explicit ``fps`` overrides both. The opened reader is
datasets.frames', so frames are decoded exactly as training and evaluation decode them.
"""
import math
from dataclasses import dataclass
from pathlib import Path

from datasets.frame_folders import contiguous_frame_count
from datasets.frames import VIDEO_SUFFIXES, open_video
from utils.errors import ConfigError, DataError

DEFAULT_FOLDER_FPS = 30.0


@dataclass
class VideoSource:
    """An opened video: ``reader.read(indices) -> uint8 [N, 3, H, W]`` (datasets.frames)."""

    path: Path
    kind: str  # "file" or "frames"
    num_frames: int
    fps: float
    fps_source: str  # "decord", "default" or "--fps"
    reader: object

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


def count_folder_frames(folder, filename_tmpl, allow_gaps=False) -> int:
    """Frames ``filename_tmpl.format(first + i)`` in ``folder`` (first 0 or 1); a gap or a
    second image suffix is a DataError unless ``allow_gaps`` (see
    datasets.frame_folders.contiguous_frame_count)."""
    return contiguous_frame_count(folder, filename_tmpl, allow_gaps)


def open_source(path, filename_tmpl="img_{:08}.jpg", fps=None, replace_bad=False) -> VideoSource:
    """Open a video file (decord) or a frame folder; DataError when it cannot be read.

    ``fps``: None = decord's frame rate for files, :data:`DEFAULT_FOLDER_FPS` for folders.
    ``replace_bad`` (DATA.REPLACE_BAD_FRAMES): a frame folder with a gap is scored over its
    whole span, each missing or unreadable frame replaced by its nearest readable neighbour
    (as the loaders do); without it a gap is a DataError naming the first missing frame.
    """
    path = Path(path)
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise ConfigError(f"--fps must be a positive number, got {fps}")
    if path.is_dir():
        num_frames = count_folder_frames(path, filename_tmpl, replace_bad)
        rate, source = (fps, "--fps") if fps is not None else (DEFAULT_FOLDER_FPS, "default")
        return VideoSource(path, "frames", num_frames, float(rate), source,
                           open_video(path, num_frames, filename_tmpl, replace_bad=replace_bad))
    if not path.exists():
        raise DataError(f"video {path}: no such file or folder")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise DataError(f"video {path}: not a frame folder and not a video file with one of the "
                        f"suffixes {sorted(VIDEO_SUFFIXES)}")
    num_frames, file_fps = _probe_video_file(path)
    if fps is not None:
        rate, source = fps, "--fps"
    elif file_fps > 0 and math.isfinite(file_fps):
        rate, source = file_fps, "decord"
    else:
        raise DataError(f"video {path}: the file states no frame rate ({file_fps}); pass --fps")
    return VideoSource(path, "file", num_frames, float(rate), source,
                       open_video(path, num_frames, replace_bad=replace_bad))


def _probe_video_file(path):
    """(frame count, average fps) of a video file through decord."""
    import decord

    if path.stat().st_size == 0:
        raise DataError(f"video {path}: the file is empty (0 bytes, zero frames)")
    try:
        video = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        num_frames, rate = len(video), float(video.get_avg_fps())
    except (decord.DECORDError, RuntimeError) as err:
        raise DataError(f"video {path}: cannot read the video file ({err})") from err
    if num_frames == 0:
        raise DataError(f"video {path}: the video file holds zero frames")
    return num_frames, rate
