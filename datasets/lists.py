"""Dataset list files, the labels CSV, frame-level ground truth and safe path resolution.

List file formats (whitespace-separated; paths relative to DATA.ROOT, without spaces):

========  =========================================================  =====================
columns   layout                                                     kind
========  =========================================================  =====================
3         ``<dir> <num_frames> <label>``                             train
4         ``<dir> <start> <end> <label>`` (frames = end - start)     train
5 (train) ``<dir> <num_frames> <label> <x> <x>`` (x ignored)         train
5 (test)  ``<dir> <num_frames> <label> <start> <end>``               test
7         ``<dir> <num_frames> <class> <s1> <e1> <s2> <e2>``         test (UCF; -1 = none)
========  =========================================================  =====================

Test lines may carry any number of ``<start> <end>`` pairs (3 + 2k columns); a pair of
``-1 -1`` means "no interval". Intervals are end-exclusive frame ranges. Blank lines,
lines starting with ``#`` and trailing whitespace (including Windows line ends) are skipped.

A 5-column line is ambiguous; ``parse_list_file(path, kind="auto")`` decides per file:
a file holding any 3- or 4-column line is a train list (its 5-column lines are train
lines, last two columns ignored); otherwise (5-, 7-, 9-... column lines only) it is a
test list. A file mixing 3/4-column lines with 7+-column lines is an error. Pass
``kind="train"`` or ``kind="test"`` to say it explicitly.

The label column is a class id; a video is anomalous when it is > 0.
"""
import csv
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.errors import DataError, ListFileError

_INT_RE = re.compile(r"-?\d+", re.ASCII)
_KINDS = ("auto", "train", "test")
# Far above any real video (about 40 days at 30 fps); larger counts are typos or corrupt lines.
MAX_FRAMES = 10**8
LINE_FORMATS = ("train lines: <dir> <start> <end> <label> or <dir> <num_frames> <label>; "
                "test lines: <dir> <num_frames> <label> <start> <end> ...")


@dataclass
class VideoRecord:
    """One line of a list file.

    ``path``: as written (relative to DATA.ROOT); ``num_frames``: frames the entry covers;
    ``label``: class id (anomalous when > 0); ``intervals``: end-exclusive (start, end)
    frame ranges (test lists; empty for train lists); ``line``: 1-based line number;
    ``start_frame``: first frame index from a 4-column train line, else 0.
    """

    path: str
    num_frames: int
    label: int
    intervals: list = field(default_factory=list)
    line: int = 0
    start_frame: int = 0
    kind: str = ""  # "train" or "test": how parse_list_file read the line

    @property
    def is_anomalous(self) -> bool:
        return self.label > 0


# ---------------------------------------------------------------- list files
def _read_text(path, what):
    path = Path(path)
    if str(path) in ("", "."):
        raise ListFileError(f"no {what} given (set DATA.TRAIN_FILE / DATA.VAL_FILE in the config)")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ListFileError(
            f"{what} not found: {path} (check DATA.TRAIN_FILE / DATA.VAL_FILE / DATA.LABEL_LIST; "
            "relative paths are taken from the folder you run in)"
        ) from None
    except IsADirectoryError:
        raise ListFileError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise ListFileError(f"cannot read {what} {path}: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        raise ListFileError(
            f"{what} {path} is not UTF-8 text (byte {exc.start})"
            + ("; it is UTF-16 (as some Windows editors save): save it again as UTF-8" if utf16
               else ": is it a list file? Save it as UTF-8 text")) from None


def _int(token, name, where):
    if not _INT_RE.fullmatch(token):
        raise ListFileError(f"{where}: {name} must be an integer, got {token!r}")
    return int(token)


def _split_lines(text):
    """Yield (1-based line number, columns) for non-blank, non-comment lines."""
    for number, raw in enumerate(text.split("\n"), start=1):
        columns = raw.split()
        if not columns or columns[0].startswith("#"):
            continue
        yield number, columns


def _infer_kind(lines, path):
    counts = {len(cols) for _, cols in lines}
    train_only = counts & {3, 4}
    test_only = {c for c in counts if c >= 7}
    if train_only and test_only:
        first_test = next(n for n, cols in lines if len(cols) >= 7)
        raise ListFileError(
            f"{path}:{first_test}: the file mixes train lines (3 or 4 columns) with test lines "
            f"({len(dict(lines)[first_test])} columns); split it or fix the line"
        )
    return "train" if train_only else "test"


def _parse_train(columns, where):
    n = len(columns)
    if n == 4:
        start = _int(columns[1], "start frame (column 2)", where)
        end = _int(columns[2], "end frame (column 3)", where)
        label = _int(columns[3], "label (column 4)", where)
        if start < 0:
            raise ListFileError(f"{where}: start frame must be >= 0, got {start}")
        if end < start:
            raise ListFileError(f"{where}: end frame {end} is before start frame {start}")
        num_frames = end - start
    elif n in (3, 5):
        num_frames = _int(columns[1], "number of frames (column 2)", where)
        label = _int(columns[2], "label (column 3)", where)
        if n == 5:
            _int(columns[3], "column 4", where)
            _int(columns[4], "column 5", where)
        start = 0
    else:
        raise ListFileError(
            f"{where}: a train line has 3, 4 or 5 columns (<dir> <start> <end> <label>, "
            f"<dir> <num_frames> <label> [x x]), got {n}: {' '.join(columns)!r}"
        )
    _check_counts(num_frames, label, where)
    return VideoRecord(columns[0], num_frames, label, [], 0, start)


def _parse_test(columns, where):
    n = len(columns)
    if n < 5 or n % 2 == 0:
        raise ListFileError(
            f"{where}: a test line has 5 or 7 columns (<dir> <num_frames> <label> <start> <end> "
            f"[<start2> <end2>]), got {n}: {' '.join(columns)!r}"
        )
    num_frames = _int(columns[1], "number of frames (column 2)", where)
    label = _int(columns[2], "label (column 3)", where)
    _check_counts(num_frames, label, where)
    intervals = []
    for i in range(3, n, 2):
        start = _int(columns[i], f"interval start (column {i + 1})", where)
        end = _int(columns[i + 1], f"interval end (column {i + 2})", where)
        if start == -1 and end == -1:
            continue
        if start < 0 or end < 0:
            raise ListFileError(
                f"{where}: interval ({start}, {end}) in columns {i + 1}-{i + 2} is negative; "
                "use -1 -1 for 'no interval'"
            )
        if end < start:
            raise ListFileError(f"{where}: interval end {end} is before its start {start} (columns {i + 1}-{i + 2})")
        intervals.append((start, end))
    return VideoRecord(columns[0], num_frames, label, intervals, 0, 0)


def _check_path_column(text, where):
    """A control character (a NUL byte from a binary or damaged file) cannot name a file: the
    operating system would refuse the path with a raw ValueError later."""
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise ListFileError(f"{where}: the path column holds the control character {bad!r} "
                            f"({text[:40]!r}); is the file damaged?")


def _check_counts(num_frames, label, where):
    if num_frames <= 0:
        raise ListFileError(f"{where}: the number of frames must be positive, got {num_frames}")
    if num_frames > MAX_FRAMES:
        raise ListFileError(
            f"{where}: {num_frames} frames is implausibly many (limit {MAX_FRAMES}); is the line corrupt?"
        )
    if label < 0:
        raise ListFileError(f"{where}: the label (class id) must be >= 0, got {label}")


def parse_list_file(path, kind="auto"):
    """Read a list file into VideoRecords; ListFileError names file, line and what is wrong.

    ``kind``: "train", "test" or "auto" (see the module docstring for the rule).
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    text = _read_text(path, "list file")
    lines = list(_split_lines(text))
    if not lines:
        raise ListFileError(f"list file {path} holds no entries")
    if kind == "auto":
        kind = _infer_kind(lines, path)
    parse = _parse_train if kind == "train" else _parse_test
    records = []
    for number, columns in lines:
        try:
            _check_path_column(columns[0], f"{path}:{number}")
            record = parse(columns, f"{path}:{number}")
        except ListFileError as err:  # every line error says what to do, once
            raise ListFileError(f"{err}; fix or delete the line ({LINE_FORMATS})") from None
        record.line = number
        record.kind = kind
        records.append(record)
    _check_duplicates(records, path)
    if kind == "test":
        _check_interval_ends(records, path)
    return records


def _check_duplicates(records, path):
    """Refuse a video listed twice where that changes results; warn where it only weighs more.

    Test lists: scores and ground truth are keyed by the video's path, so a second line would
    count the video's frames twice in the AUC (or contradict the first): ListFileError. Train
    lists: the same (path, start, frame count) twice with different labels contradicts itself
    (error); twice with the same label samples it twice per epoch (warning). Different ranges
    of one folder (4-column lines) are different training entries.
    """
    seen, repeated = {}, []
    for record in records:
        key = record.path if record.kind == "test" else (record.path, record.start_frame, record.num_frames)
        earlier = seen.setdefault(key, record)
        if earlier is record:
            continue
        where = f"{path}:{record.line}"
        if record.kind == "test" or earlier.label != record.label:
            same = (earlier.label, earlier.num_frames, earlier.intervals) == (record.label, record.num_frames,
                                                                               record.intervals)
            what = "again" if same else (f"again with other values (label {record.label} vs {earlier.label}, "
                                         f"{record.num_frames} vs {earlier.num_frames} frames, intervals "
                                         f"{record.intervals} vs {earlier.intervals})")
            raise ListFileError(
                f"{where}: video {record.path!r} is listed {what} (first on line {earlier.line}); a video "
                "may appear once, or its frames would count twice: delete one of the two lines")
        repeated.append(f"{record.line} (= line {earlier.line}: {record.path})")
    _warn_lines(path, "line(s) repeat an earlier training entry, so those videos are sampled twice per epoch: "
                "lines", repeated, "delete the repeats unless that is meant")


def _check_interval_ends(records, path):
    """Intervals past the video's end: starting there is an error (it marks no frame: the
    interval or the frame count is wrong); ending there is cut at the end and warned about."""
    cut = []
    for record in records:
        for start, end in record.intervals:
            if start >= record.num_frames:
                raise ListFileError(
                    f"{path}:{record.line}: interval {start}-{end} of {record.path} starts at or after the "
                    f"video's end ({record.num_frames} frames), so it marks no frame; fix the interval or the "
                    f"frame count ({LINE_FORMATS})")
            if end > record.num_frames:
                cut.append(f"{record.line} ({record.path}: {start}-{end}, {record.num_frames} frames)")
    _warn_lines(path, "interval(s) end after their video's last frame and are cut there: line", cut,
                "check the frame counts and intervals of these lines")


def _warn_lines(path, what: str, lines: list, todo: str) -> None:
    """One warning for all ``lines`` of a list file (the first five shown), when there are any."""
    if lines:
        logging.getLogger("FrameShield").warning("%s: %d %s %s%s; %s", path, len(lines), what, ", ".join(lines[:5]),
                                                 " ..." if len(lines) > 5 else "", todo)


# ---------------------------------------------------------------- labels CSV
def read_label_csv(path):
    """Class names in id order from a CSV with header ``id,name`` (ids 0..C-1, each once)."""
    text = _read_text(path, "labels CSV")
    try:
        rows = [(n, row) for n, row in enumerate(csv.reader(io.StringIO(text)), start=1) if any(c.strip() for c in row)]
    except csv.Error as exc:
        raise ListFileError(f"labels CSV {path} cannot be read as CSV: {exc}") from None
    if not rows:
        raise ListFileError(f"labels CSV {path} is empty; it needs a header 'id,name' and one row per class")
    header_line, header = rows[0]
    if [c.strip().lower() for c in header] != ["id", "name"]:
        raise ListFileError(
            f"{path}:{header_line}: the labels CSV header must be 'id,name', got {','.join(header)!r}"
        )
    names = {}
    for number, row in rows[1:]:
        where = f"{path}:{number}"
        if len(row) != 2:
            raise ListFileError(f"{where}: a labels CSV row has 2 columns (id,name), got {len(row)}: {row}")
        class_id = _int(row[0].strip(), "class id", where)
        name = row[1].strip()
        if not name:
            raise ListFileError(f"{where}: class {class_id} has an empty name")
        if class_id in names:
            raise ListFileError(f"{where}: class id {class_id} appears twice")
        names[class_id] = name
    if not names:
        raise ListFileError(f"labels CSV {path} has a header but no classes")
    if sorted(names) != list(range(len(names))):
        raise ListFileError(f"labels CSV {path}: class ids must be 0..{len(names) - 1}, got {sorted(names)}")
    return [names[i] for i in range(len(names))]


# ---------------------------------------------------------------- ground truth
def frame_labels(record, count_start_zero=False):
    """Per-frame ground truth ``uint8 [num_frames]`` (1 = anomalous) of one test record.

    Published protocol: an interval counts only when start > 0, so the whole-video
    ``0 N`` entries of normal videos are ignored, and so are real anomalies that begin
    at frame 0. ``count_start_zero`` also counts intervals with start == 0 and
    end < num_frames. Intervals reaching past the video are cut at num_frames.
    """
    labels = np.zeros(record.num_frames, dtype=np.uint8)
    for start, end in record.intervals:
        end = min(end, record.num_frames)
        if start > 0 or (count_start_zero and start == 0 and end < record.num_frames):
            labels[start:end] = 1
    return labels


def ground_truth(records, count_start_zero=False, logger=None):
    """``{path: frame_labels}`` for all records, logging videos left without anomalous frames."""
    truth = {r.path: frame_labels(r, count_start_zero) for r in records}
    anomalous_without_frames(records, count_start_zero, logger)
    return truth


def _marks_frames(record, count_start_zero=False):
    """Whether frame_labels(record) has a 1, without allocating one label per frame."""
    for start, end in record.intervals:
        end = min(end, record.num_frames)
        if end > start and (start > 0 or (count_start_zero and start == 0 and end < record.num_frames)):
            return True
    return False


def anomalous_without_frames(records, count_start_zero=False, logger=None):
    """Paths of labelled-anomalous videos (label > 0) whose frame labels are all 0; logged.

    Under the published rule these are the anomalies starting at frame 0 (6 of 44 in the
    ShanghaiTech test list); set DATA.COUNT_START_ZERO to count them.
    """
    missing = [r.path for r in records if r.is_anomalous and not _marks_frames(r, count_start_zero)]
    log = logger or logging.getLogger("FrameShield")
    total = sum(r.is_anomalous for r in records)
    if missing:
        log.warning(
            "%d of %d labelled-anomalous videos have no anomalous frame under the %s rule "
            "(DATA.COUNT_START_ZERO=%s): %s",
            len(missing), total, "start >= 0" if count_start_zero else "published start > 0",
            count_start_zero, ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""),
        )
    else:
        log.info("all %d labelled-anomalous videos have anomalous frames", total)
    return missing


# ---------------------------------------------------------------- paths
def resolve_video_path(root, rel_path, allow_outside_root=False, must_exist=False, source=None):
    """``root / rel_path``, refusing entries that leave ``root`` (``..``, absolute paths, links).

    The entry is checked twice: lexically (``..`` and absolute paths), then by its real path,
    so a symbolic link inside the root that leads outside it (a folder link, or a link on the
    way) is refused like a ``..`` path; links that stay inside the root are fine, and so is a
    DATA.ROOT that is itself a link. ``source`` (e.g. "test.txt:12") is named in the error.
    Raises ListFileError for an escaping path and DataError when ``must_exist`` and nothing
    is there.
    """
    root = Path(root) if str(root) else Path(".")
    where = f"{source}: " if source else ""
    candidate = Path(rel_path)
    joined = Path(os.path.normpath(root / candidate))
    if not allow_outside_root:
        root_norm = Path(os.path.normpath(root.absolute()))
        full = Path(os.path.normpath(joined.absolute()))
        if full != root_norm and root_norm not in full.parents:
            raise ListFileError(
                f"{where}path {rel_path!r} leads outside DATA.ROOT ({root}); list paths must stay "
                "inside the root (set DATA.ALLOW_OUTSIDE_ROOT True to allow it)"
            )
        root_real, real = Path(os.path.realpath(root)), Path(os.path.realpath(joined))
        if real != root_real and root_real not in real.parents:
            raise ListFileError(
                f"{where}path {rel_path!r} is a symbolic link (or passes through one) to {real}, outside "
                f"DATA.ROOT ({root}); list paths must stay inside the root: move or copy the data in, point "
                "DATA.ROOT at the real folder, or set DATA.ALLOW_OUTSIDE_ROOT True if the link is meant"
            )
    if must_exist and not joined.exists():
        raise DataError(
            f"{where}video {rel_path!r} not found at {joined} (check DATA.ROOT and the list file)"
        )
    return joined
