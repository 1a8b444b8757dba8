"""Reading frames of one video from disk: a folder of numbered images or a video file.

Both readers return ``uint8 [N, 3, H, W]`` for a list of frame indices (0-based positions
in the video as the list file counts them) and raise ``DataError`` naming the video and the
frame when something is missing or unreadable. With ``replace_bad=True`` an unreadable
frame is replaced by its nearest readable neighbour instead, and counted in ``replaced``
(and logged), never by a silent zero tensor.

Which reader is used is decided by what is on disk, not by the name in the list: a TAD
entry ``frames/abnormal/01_Accident_006.mp4`` may be a folder of frames.

Frame files are decoded by their content (magic bytes), not by their suffix:

- JPEG: torchvision's ``decode_jpeg`` (the fast path; the frames of one read are decoded as
  one batch), converted to RGB by libjpeg (grayscale and CMYK included).
- PNG: torchvision's ``decode_image`` in RGB mode: libpng expands grayscale and palette
  images to RGB and drops an alpha channel; 16-bit PNGs keep their 16 bits here and are
  scaled below.
- TIFF, BMP, GIF, WebP, PPM/PGM: Pillow (torchvision cannot read TIFF or BMP). Grayscale
  and bilevel frames are repeated to 3 channels, palettes are expanded, alpha is dropped,
  CMYK/YCbCr are converted to RGB, 16-bit grayscale (``I;16``) is scaled below. Pillow
  itself reduces 16-bit *colour* TIFFs to 8 bits by their high byte (``v >> 8``, within one
  level of the rounding below). 32-bit integer or float frames (no fixed maximum to scale
  by), signed 16-bit frames and files holding several images (animated GIF, multi-page
  TIFF) raise ``DataError``: convert such frames to 8-bit images first.

16-bit frames are scaled by their own maximum, ``round(v * 255 / 65535)`` (65535 -> 255,
32896 -> 128), so that a 16-bit frame and its 8-bit version read the same.
UCSD-Ped2's frames are 360x240 8-bit grayscale TIFFs (FILENAME_TMPL ``'{:03}.tif'``).
"""
import abc
import io
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from utils.errors import DataError

LOGGER = logging.getLogger("FrameShield")

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"}
JPEG_MAGIC = b"\xff\xd8"  # start-of-image marker
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Formats Pillow may open (others, e.g. EPS, which runs Ghostscript, are never tried).
PIL_FORMATS = ("TIFF", "BMP", "GIF", "WEBP", "PPM")
# What Pillow raises for a damaged or unsupported file (UnidentifiedImageError is an OSError).
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_PIL_TO_RGB = {"P", "PA", "CMYK", "YCbCr", "1"}  # modes Pillow converts to RGB itself
_PIL_UINT16 = {"I;16", "I;16L", "I;16B", "I;16N"}
FORMATS_HINT = ("readable frame formats: JPEG, PNG (8/16-bit), TIFF (8/16-bit), BMP, GIF, WebP, "
                "PPM/PGM")


def uint16_to_uint8(values):
    """Scale 16-bit pixels by their maximum: ``round(v * 255 / 65535)`` = ``(v + 128) // 257``.

    ``values``: a torch uint16 tensor or a numpy uint16 array of any shape; returns the same
    kind, uint8. (65535 = 255 * 257, so ``v * 255 / 65535`` is ``v / 257``; it never ends in
    exactly .5, so the rounding direction of ties does not matter.)
    """
    if isinstance(values, torch.Tensor):
        return torch.div(values.to(torch.int32) + 128, 257, rounding_mode="floor").to(torch.uint8)
    return ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)


def _pil_to_rgb(image):
    """A loaded single-image Pillow ``image`` -> ``uint8 [3, H, W]``; ValueError if unsupported."""
    mode = image.mode
    if mode in _PIL_UINT16:
        array = uint16_to_uint8(np.asarray(image, dtype=np.uint16))
    elif mode in _PIL_TO_RGB:
        array = np.asarray(image.convert("RGB"))
    elif mode in ("L", "LA", "RGB", "RGBA", "RGBX"):
        array = np.asarray(image)
    else:
        raise ValueError(f"pixel mode {mode!r} is not supported (32-bit integer, float or signed "
                         "pixels have no fixed range to scale to 8 bits); convert the frames to "
                         "8-bit or 16-bit images")
    if array.ndim == 2:
        array = array[:, :, None]
    # grayscale (+alpha) -> repeat the gray channel; colour + alpha -> drop the alpha
    array = np.repeat(array[:, :, :1], 3, axis=2) if array.shape[2] < 3 else array[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def decode_frame(data):
    """Encoded bytes of one frame file (``uint8 [L]`` tensor) -> ``uint8 [3, H, W]`` RGB.

    Raises RuntimeError (torchvision) or ValueError/OSError (Pillow and the checks here)
    when the data cannot be decoded; the reader turns that into a DataError naming the file.
    """
    head = bytes(data[:8].tolist())
    if head.startswith(JPEG_MAGIC):
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    if head.startswith(PNG_MAGIC):
        image = decode_image(data, mode=ImageReadMode.RGB)
        return uint16_to_uint8(image) if image.dtype == torch.uint16 else image
    try:
        opened = Image.open(io.BytesIO(data.numpy().tobytes()), formats=PIL_FORMATS)
    except UnidentifiedImageError as err:
        raise ValueError(f"not an image of a known format (starts with bytes {head!r})") from err
    with opened as image:
        frames = getattr(image, "n_frames", 1)
        if frames != 1:
            raise ValueError(f"the file holds {frames} images ({image.format}); a frame file must "
                             "hold exactly one")
        image.load()
        return _pil_to_rgb(image)


def detect_start_index(folder, filename_tmpl, list_start=0):
    """Return the file number of the video's first frame in ``folder``.

    Frame ``i`` of the video is the file ``filename_tmpl.format(first + i)`` with
    ``first = origin + list_start``: ``origin`` is 0 when the folder holds file number 0,
    1 when it starts at file number 1 (folders numbered 1..N), and ``list_start`` is the
    start column of a 4-column train list (0 otherwise). A folder holding neither file 0
    nor file 1 (a trimmed excerpt) is taken as numbered from 0.
    """
    folder = Path(folder)
    origin = 0
    if not (folder / filename_tmpl.format(0)).is_file() and (folder / filename_tmpl.format(1)).is_file():
        origin = 1
    first = origin + list_start
    if (folder / filename_tmpl.format(first)).is_file():
        return first
    sample = sorted(p.name for p in folder.iterdir())[:3] if folder.is_dir() else []
    if folder.is_dir() and not sample:
        raise DataError(f"video {folder}: the frame folder is empty (zero frames); extract the video's "
                        "frames into it, or remove it from the list file")
    raise DataError(
        f"video {folder}: its first frame {filename_tmpl.format(first)} does not exist (folder "
        f"starts with {sample}); check DATA.FILENAME_TMPL and the list's start column")


def _is_video_file(path):
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def open_video(path, num_frames, filename_tmpl="img_{:08}.jpg", list_start=0,
               replace_bad=False):
    """Open the video at ``path`` (folder of frames or video file) as a reader.

    ``num_frames`` is the length the list file claims; a video shorter than that on disk
    raises ``DataError`` here, before any training step uses it.
    """
    path = Path(path)
    if path.is_dir():
        return FrameFolderReader(path, num_frames, filename_tmpl, list_start, replace_bad)
    if _is_video_file(path):
        return VideoFileReader(path, num_frames, replace_bad)
    if path.exists():
        raise DataError(f"video {path}: neither a folder of frames nor a video file with one of "
                        f"the suffixes {sorted(VIDEO_SUFFIXES)}")
    raise DataError(f"video {path}: no such folder or file; check DATA.ROOT and the list file")


class _Reader(abc.ABC):
    """Shared part of the readers: index checks and nearest-readable replacement."""

    def __init__(self, path, num_frames, replace_bad):
        self.path = Path(path)
        self.num_frames = int(num_frames)
        self.replace_bad = replace_bad
        self.replaced = 0  # frames replaced by a neighbour so far (with replace_bad)
        self.frame_size = None  # (3, H, W) of the frames read so far: every read must match it
        if self.num_frames <= 0:
            raise DataError(f"video {self.path}: the list gives {self.num_frames} frames")

    def read(self, indices):
        """Frames at ``indices`` (ints in [0, num_frames)) as ``uint8 [N, 3, H, W]``."""
        frames, inverse = self.read_unique(indices)
        return torch.stack([frames[k] for k in inverse.tolist()])

    def read_unique(self, indices):
        """Each distinct frame of ``indices`` decoded once: ``(U frames uint8 [3, H, W], inverse
        [N])``, frame j of ``indices`` being ``frames[inverse[j]]``. A list, not one stacked
        tensor: stacking full-size frames is a copy that costs as much as decoding them (an
        856x480 item: 70 MB), and the views only need the frames one at a time; clips of a
        short video overlap, so each distinct frame is also resized once."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise DataError(f"video {self.path}: frame index {i} outside [0, {self.num_frames})")
        unique = sorted(set(indices))
        frames = self._decode_many(unique)
        sizes = {tuple(f.shape) for f in frames.values()}
        if self.frame_size is not None:
            sizes.add(self.frame_size)  # a size change between two reads (infer's chunks, segments)
        if len(sizes) > 1:
            raise DataError(f"video {self.path}: frames differ in size {sorted(sizes)}; "
                            "all frames of a video must have the same size: resize them to one size")
        self.frame_size = next(iter(sizes))
        position = {i: k for k, i in enumerate(unique)}
        inverse = torch.tensor([position[i] for i in indices], dtype=torch.long)
        return [frames[i] for i in unique], inverse

    def _decode_many(self, indices):
        """Map index -> ``uint8 [3,H,W]``; errors become DataError or replacements."""
        try:
            return self._decode_batch(indices)
        except DataError:
            pass  # find which frames fail, one by one
        out = {}
        for i in indices:
            try:
                out[i] = self._decode_batch([i])[i]
            except DataError as err:
                if not self.replace_bad:
                    raise DataError(f"{err}. Restore or re-extract the frame, or set "
                                    "DATA.REPLACE_BAD_FRAMES True to use its nearest readable "
                                    "neighbour instead") from err
                out[i] = self._nearest_readable(i, err)
        return out

    def _nearest_readable(self, index, err):
        for dist in range(1, self.num_frames):
            for j in (index - dist, index + dist):
                if 0 <= j < self.num_frames:
                    try:
                        frame = self._decode_batch([j])[j]
                    except DataError:
                        continue
                    self.replaced += 1
                    LOGGER.warning("%s; replaced by frame %d (DATA.REPLACE_BAD_FRAMES)", err, j)
                    return frame
        raise DataError(f"video {self.path}: no readable frame at all ({err})")

    @abc.abstractmethod
    def _decode_batch(self, indices):
        """{frame index: uint8 [3, H, W]} for ``indices``; DataError naming the frame on failure."""


class FrameFolderReader(_Reader):
    """A folder of numbered images; frame i is ``filename_tmpl.format(first + i)``."""

    def __init__(self, folder, num_frames, filename_tmpl="img_{:08}.jpg", list_start=0,
                 replace_bad=False):
        super().__init__(folder, num_frames, replace_bad)
        self.filename_tmpl = filename_tmpl
        self.first = detect_start_index(self.path, filename_tmpl, list_start)
        last = self.frame_path(self.num_frames - 1)
        if not last.is_file():
            on_disk = sum(1 for _ in self.path.iterdir())
            raise DataError(
                f"video {self.path}: the list gives {self.num_frames} frames but frame "
                f"{last.name} (frame {self.num_frames - 1}) is missing; the folder holds "
                f"{on_disk} files. Fix the frame count in the list file")

    def frame_path(self, index):
        return self.path / self.filename_tmpl.format(self.first + index)

    def _read_bytes(self, index):
        file = self.frame_path(index)
        if not file.is_file():
            raise DataError(f"video {self.path}: frame {index} ({file.name}) is missing")
        try:
            data = bytearray(file.read_bytes())
        except OSError as err:
            raise DataError(f"video {self.path}: cannot read frame {index} ({file.name}): {err}") from err
        if not data:
            raise DataError(f"video {self.path}: frame {index} ({file.name}) is an empty file")
        return torch.frombuffer(data, dtype=torch.uint8)

    def _decode_batch(self, indices):
        data = [self._read_bytes(i) for i in indices]
        jpeg = [k for k, d in enumerate(data) if bytes(d[:2].tolist()) == JPEG_MAGIC]
        images = [None] * len(indices)
        try:
            if jpeg:  # the fast path: all JPEG frames of this read in one call
                for k, image in zip(jpeg, decode_jpeg([data[k] for k in jpeg], mode=ImageReadMode.RGB)):
                    images[k] = image
            for k, d in enumerate(data):
                if images[k] is None:
                    images[k] = decode_frame(d)
        except (RuntimeError, *_PIL_ERRORS) as err:
            names = ", ".join(self.frame_path(i).name for i in indices[:4])
            which = f"frame {indices[0]} ({names})" if len(indices) == 1 else f"one of frames {names}..."
            raise DataError(f"video {self.path}: cannot decode {which}: {err} ({FORMATS_HINT})") from err
        return dict(zip(indices, images))


FIX_VIDEO_FILE = " (re-download or re-encode it, or remove it from the list file)"


class VideoFileReader(_Reader):
    """A video file read through decord (frame-accurate seeking, RGB)."""

    def __init__(self, path, num_frames, replace_bad=False):
        super().__init__(path, num_frames, replace_bad)
        import decord  # imported here: only lists that name video files need it

        if self.path.stat().st_size == 0:
            raise DataError(f"video {self.path}: the video file is empty (0 bytes); frame 0 cannot be read"
                            + FIX_VIDEO_FILE)
        try:
            self._video = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except (decord.DECORDError, RuntimeError) as err:
            raise DataError(f"video {self.path}: cannot open the video file ({err})"
                            + FIX_VIDEO_FILE) from err
        self._decord_error = decord.DECORDError
        on_disk = self.frames_on_disk = len(self._video)
        if on_disk == 0:
            raise DataError(f"video {self.path}: the video file holds no frames; frame 0 cannot be read"
                            + FIX_VIDEO_FILE)
        if on_disk < self.num_frames:
            raise DataError(
                f"video {self.path}: the list gives {self.num_frames} frames but the file holds "
                f"only {on_disk} (frame {on_disk} is the first one missing). Fix the frame count "
                "in the list file")

    def _decode_batch(self, indices):
        try:
            array = self._video.get_batch(list(indices)).asnumpy()
        except self._decord_error as err:
            raise DataError(f"video {self.path}: cannot decode frames {list(indices)[:4]}: {err}") from err
        return {i: torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous()
                for i, a in zip(indices, array)}
