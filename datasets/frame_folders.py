"""What a frame folder holds, checked before any frame is decoded: gaps, mixed suffixes, links.

Why this exists: a frame folder is read by formatting ``DATA.FILENAME_TMPL`` with frame
numbers, so a folder with a gap (frames 1..10, 12..20) or with frames saved under two
suffixes (``.jpg`` and ``.png``) used to be read as if it ended before the gap: infer.py
scored the first 10 frames without a word, and a list line counting 20 frames failed only
when training reached frame 11 (or, with a count of 99,999,999, hung while building
segments). These checks run once per video, with one directory listing and no decoding:

- :func:`contiguous_frame_count` (infer.py): the video's length from the disk; a gap or a
  second suffix is a ``DataError`` naming the folder and the first missing frame, unless
  ``allow_gaps`` (DATA.REPLACE_BAD_FRAMES), which spans the gap and lets the reader fill each
  missing frame with its nearest neighbour, as the loaders do.
- :func:`check_frame_folder` (the list loaders): the frames a list line claims are all on
  disk (the last one by a single stat first, so an absurd count fails at once), and no frame
  file is a symbolic link leading outside DATA.ROOT.
"""
import logging
import os
import re
import string
from pathlib import Path

from datasets.frames import detect_start_index, open_video
from utils.errors import ConfigError, DataError

LOGGER = logging.getLogger("FrameShield")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
REPLACE_HINT = ("restore the missing frames (or re-extract the video), or set "
                "DATA.REPLACE_BAD_FRAMES True to fill each missing frame with its nearest readable neighbour")


def template_regex(filename_tmpl: str) -> re.Pattern:
    """A regex for the template's file names with any suffix: group 1 the number, 2 the suffix.

    ``img_{:08}.jpg`` -> ``img_(\\d+)(\\.[^.]+)`` (so ``img_00000011.png`` is recognised as
    frame 11 saved with another suffix). ConfigError for a template without exactly one field.
    """
    try:
        parts = list(string.Formatter().parse(filename_tmpl))
    except ValueError as err:
        raise ConfigError(f"DATA.FILENAME_TMPL {filename_tmpl!r} is not a format string ({err}); "
                          "write it like 'img_{{:08}}.jpg'") from None
    fields = [p for p in parts if p[1] is not None]
    if len(fields) != 1:
        raise ConfigError(f"DATA.FILENAME_TMPL {filename_tmpl!r} must hold exactly one {{}} field for "
                          f"the frame number, it holds {len(fields)}; write it like 'img_{{:08}}.jpg'")
    head = "".join(p[0] for p in parts[:parts.index(fields[0]) + 1])
    tail = "".join(p[0] for p in parts[parts.index(fields[0]) + 1:])
    dot = tail.rfind(".")
    stem_tail = tail[:dot] if dot >= 0 else tail  # Path(".jpg").suffix is "" (a dot file)
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(stem_tail) + r"(\.[^.]+)?", re.ASCII)


def _other_suffix_frames(names, filename_tmpl):
    """{suffix: sorted frame numbers} of image files numbered like the template but with
    another suffix than the template's (frames 11..20 saved as .png next to .jpg ones)."""
    pattern = template_regex(filename_tmpl)
    own = Path(filename_tmpl.format(0)).suffix.lower()
    others = {}
    for name in names:
        match = pattern.fullmatch(name)
        suffix = (match.group(2) or "").lower() if match else ""
        if match and suffix != own and suffix in IMAGE_SUFFIXES:
            others.setdefault(suffix, []).append(int(match.group(1)))
    return {s: sorted(n) for s, n in others.items()}


def _mixed_suffix_error(folder, filename_tmpl, others, own_count):
    suffix, numbers = next(iter(sorted(others.items(), key=lambda kv: -len(kv[1]))))
    return DataError(
        f"video {folder}: the frames have mixed suffixes: {own_count} match DATA.FILENAME_TMPL "
        f"{filename_tmpl!r} but {sum(map(len, others.values()))} are saved as "
        f"{', '.join(sorted(others))} (e.g. frame number {numbers[0]}, suffix {suffix}), so they would be "
        "skipped. Give every frame the template's name (frames are decoded by their content, so renaming "
        "a .png to .jpg is enough) or convert them to one format")


def contiguous_frame_count(folder, filename_tmpl: str, allow_gaps: bool = False) -> int:
    """Frames of ``folder`` read as ``filename_tmpl.format(first + i)`` (first 0 or 1).

    DataError when frames follow a gap (naming the first missing frame and the next present
    one) or when frames of the same numbering carry another image suffix. With
    ``allow_gaps`` a gap is spanned (count = last frame - first + 1) and logged as a warning;
    the reader then replaces every missing frame by its nearest readable neighbour.
    """
    folder = Path(folder)
    names = set(os.listdir(folder))
    if not names:
        raise DataError(f"video {folder}: the frame folder is empty (zero frames)")
    if not any(Path(n).suffix.lower() in IMAGE_SUFFIXES for n in names):
        raise DataError(f"video {folder}: the folder holds no image files (zero frames); "
                        f"frames are read as {filename_tmpl!r} (DATA.FILENAME_TMPL)")
    first = detect_start_index(folder, filename_tmpl)
    pattern = template_regex(filename_tmpl)
    numbers = sorted({int(m.group(1)) for m in map(pattern.fullmatch, names)
                      if m and int(m.group(1)) >= first and filename_tmpl.format(int(m.group(1))) in names})
    count = 0
    while filename_tmpl.format(first + count) in names:
        count += 1
    others = _other_suffix_frames(names, filename_tmpl)
    if others:
        raise _mixed_suffix_error(folder, filename_tmpl, others, len(numbers))
    last = numbers[-1] if numbers else first
    if last < first + count:
        return count
    missing = first + count
    following = min(n for n in numbers if n > missing)
    absent = last - first + 1 - len(numbers)
    message = (f"video {folder}: frame number {missing} ({filename_tmpl.format(missing)}) is missing but "
               f"frames {following}..{last} follow it ({absent} missing in all)")
    if not allow_gaps:
        raise DataError(f"{message}; only the {count} frames before the gap could be scored. Restore the "
                        f"missing frames, or set DATA.REPLACE_BAD_FRAMES True (--opts DATA.REPLACE_BAD_FRAMES "
                        "True) to score all frames with each missing one filled by its nearest neighbour")
    LOGGER.warning("%s; DATA.REPLACE_BAD_FRAMES: scoring all %d, each missing frame filled by its nearest "
                   "readable neighbour", message, last - first + 1)
    return last - first + 1


def _inside(path, root_real):
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def check_frame_folder(folder, num_frames: int, filename_tmpl: str, list_start: int = 0,
                       allow_gaps: bool = False, root=None) -> bool:
    """Check that the ``num_frames`` frames a list line claims are on disk, before reading.

    The last frame is looked up first (one stat), so a count far beyond the folder fails at
    once; then one listing finds the first missing frame of the range (DataError, naming it,
    unless ``allow_gaps``: then a warning) and, when ``root`` is given (DATA.ROOT, unless
    DATA.ALLOW_OUTSIDE_ROOT), refuses a frame file that is a symbolic link leading outside it.
    Returns whether the folder holds a frame after the claimed ones (the list undercounts).
    """
    folder = Path(folder)
    first = detect_start_index(folder, filename_tmpl, list_start)
    last = folder / filename_tmpl.format(first + num_frames - 1)
    if not last.is_file():
        names = os.listdir(folder)
        others = _other_suffix_frames(names, filename_tmpl)
        if others:
            own = sum(1 for n in names if Path(n).suffix.lower() == Path(last.name).suffix.lower())
            raise _mixed_suffix_error(folder, filename_tmpl, others, own)
        on_disk = len(names)
        raise DataError(
            f"video {folder}: the list gives {num_frames} frames but frame {last.name} (frame "
            f"{num_frames - 1}) is missing; the folder holds {on_disk} files. Fix the frame count in the "
            "list file")
    entries, links = set(), []
    with os.scandir(folder) as listing:  # one pass: names, and links from the entry type (no stat)
        for entry in listing:
            entries.add(entry.name)
            if root is not None and entry.is_symlink():
                links.append(entry)
    _refuse_outside_links(folder, links, root)
    longer = filename_tmpl.format(first + num_frames) in entries
    name_of = filename_tmpl.format
    if entries.issuperset(map(name_of, range(first, first + num_frames))):  # the common case
        return longer
    missing = [i for i in range(num_frames) if name_of(first + i) not in entries]
    name = filename_tmpl.format(first + missing[0])
    others = _other_suffix_frames(entries, filename_tmpl)
    also = (f" (frames saved with another suffix are here: {', '.join(sorted(others))}; give every frame "
            "the template's name)") if others else ""
    message = (f"video {folder}: {len(missing)} of the {num_frames} frames the list gives are missing, the "
               f"first is frame {missing[0]} ({name}){also}")
    if not allow_gaps or others:
        raise DataError(f"{message}; {REPLACE_HINT}")
    LOGGER.warning("%s; DATA.REPLACE_BAD_FRAMES: each is filled by its nearest readable neighbour", message)
    return longer


def _refuse_outside_links(folder, links, root):
    """DataError for the first of ``links`` (os.DirEntry) whose real path is outside ``root``."""
    if not links:
        return
    root_real = os.path.realpath(root)
    for entry in links:
        target = os.path.realpath(entry.path)
        if not _inside(target, root_real):
            raise DataError(
                f"video {folder}: frame file {entry.name} is a symbolic link to {target}, outside DATA.ROOT "
                f"({root}); data must stay inside the root: copy the file in, or set "
                "DATA.ALLOW_OUTSIDE_ROOT True if the link is meant")


def check_video_on_disk(path, num_frames: int, filename_tmpl: str, list_start: int = 0,
                        replace_bad: bool = False, root=None) -> bool:
    """Before any segment or label array is built for a list line: a frame folder must hold
    the claimed frames (:func:`check_frame_folder`), a video file must open and be at least
    that long (decord reads its header only), anything else is a DataError. Returns whether
    the video is longer on disk than the line says (its last frames would not be scored)."""
    path = Path(path)
    if path.is_dir():
        return check_frame_folder(path, num_frames, filename_tmpl, list_start, replace_bad, root)
    reader = open_video(path, num_frames, filename_tmpl, list_start, replace_bad)
    return reader.frames_on_disk > num_frames
