"""Frame files of every format the benchmarks and users have, at the benchmarks' sizes.

Each test writes frames in the test (Pillow, torchvision, or a few lines of PNG/TIFF
writing for the 16-bit colour cases Pillow cannot write) and asserts the exact uint8
[N, 3, H, W] pixels the reader returns. The last tests read UCSD-Ped2's configuration
(360x240 grayscale TIFFs, '{:03}.tif') end to end through the train and test loaders.
"""
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from datasets.build import build_test_loader, build_train_loader
from datasets.frames import open_video, uint16_to_uint8
from tests.cfg_helpers import apply_overrides
from utils.config import load_config_file
from utils.errors import DataError

REPO = Path(__file__).resolve().parents[1]
# 16-bit values and what they must read as: round(v * 255 / 65535). 200 -> 1 and 65407 -> 255
# tell this rounding apart from taking the high byte (v >> 8 gives 0 and 254), and 65535 -> 255
# from dividing by 255 (which would not even fit a byte).
U16 = np.array([0, 128, 129, 200, 257, 32767, 32896, 65279, 65407, 65535], dtype=np.uint16)
U8 = np.array([0, 0, 1, 1, 1, 127, 128, 254, 255, 255], dtype=np.uint8)


def _rng_image(h, w, channels, seed=0):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(folder, index, image, fmt, tmpl, **kwargs):
    folder.mkdir(parents=True, exist_ok=True)
    image.save(folder / tmpl.format(index), format=fmt, **kwargs)


def _chw(array):
    """HxW (gray) or HxWxC uint8 array -> the uint8 [3, H, W] RGB tensor the reader returns."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(array[:, :, :3].transpose(2, 0, 1)))


def _png16(array, color_type):
    """A 16-bit PNG (2 = RGB, 4 = gray+alpha, 6 = RGBA, 0 = gray) of ``array`` uint16."""
    h, w = array.shape[:2]
    rows = array.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 per row

    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


def _values_frame(h, w, channels=1):
    """uint16 frame whose pixels cycle through U16 (so every test value appears)."""
    flat = np.resize(U16, h * w * channels)
    return flat.reshape((h, w) if channels == 1 else (h, w, channels))


def _expected_from_values(frame16):
    return _chw(np.resize(U8, frame16.size).reshape(frame16.shape))


def test_uint16_scaling_table():
    assert np.array_equal(uint16_to_uint8(U16), U8)
    assert torch.equal(uint16_to_uint8(torch.from_numpy(U16.astype(np.int32)).to(torch.uint16)),
                       torch.from_numpy(U8))
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(uint16_to_uint8(every), np.round(every.astype(np.float64) * 255 / 65535))


def test_jpeg_856x480_fast_path(tmp_path):
    """UCF/TAD/MSAD-sized JPEGs: the pixels torchvision's JPEG decoder gives, in RGB."""
    frames = torch.from_numpy(_rng_image(480 // 8, 856 // 8, 3).transpose(2, 0, 1).copy())
    frames = torch.nn.functional.interpolate(frames[None].float(), size=(480, 856), mode="bilinear")
    frames = frames[0].round().to(torch.uint8)
    data = encode_jpeg(frames, quality=90)
    folder = tmp_path / "v"
    folder.mkdir()
    for i in range(3):
        (folder / f"img_{i:08}.jpg").write_bytes(data.numpy().tobytes())
    out = open_video(folder, 3, "img_{:08}.jpg").read([0, 2])
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 480, 856)
    assert torch.equal(out[0], decode_jpeg(data, mode=ImageReadMode.RGB))
    assert (out[0].int() - frames.int()).abs().float().mean() < 6  # the image written (noise: ~85)


def test_grayscale_jpeg_to_three_channels(tmp_path):
    gray = Image.fromarray(np.full((48, 64), 77, np.uint8), mode="L")
    _save(tmp_path / "v", 0, gray, "JPEG", "{:05}.jpg", quality=95)
    out = open_video(tmp_path / "v", 1, "{:05}.jpg").read([0])
    assert out.shape == (1, 3, 48, 64) and torch.equal(out, torch.full_like(out, 77))


def test_png_320x240(tmp_path):
    """ShanghaiTech-sized PNGs: lossless, exact."""
    arrays = [_rng_image(240, 320, 3, seed=s) for s in range(2)]
    for i, a in enumerate(arrays):
        _save(tmp_path / "v", i, Image.fromarray(a), "PNG", "{:04}.png")
    out = open_video(tmp_path / "v", 2, "{:04}.png").read([1, 0])
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 240, 320)
    assert torch.equal(out, torch.stack([_chw(arrays[1]), _chw(arrays[0])]))


def test_grayscale_tiff_360x240(tmp_path):
    """UCSD-Ped2's frames: 8-bit grayscale TIFF, numbered from 001 -> gray in all 3 channels."""
    arrays = [_rng_image(240, 360, 1, seed=s) for s in range(3)]
    for i, a in enumerate(arrays):
        _save(tmp_path / "Test001", i + 1, Image.fromarray(a, mode="L"), "TIFF", "{:03}.tif")
    out = open_video(tmp_path / "Test001", 3, "{:03}.tif").read([0, 2])
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 240, 360)
    assert torch.equal(out, torch.stack([_chw(arrays[0]), _chw(arrays[2])]))


@pytest.mark.parametrize("compression", [None, "tiff_lzw", "tiff_adobe_deflate"])
def test_rgb_tiff_compressions(tmp_path, compression):
    a = _rng_image(24, 36, 3)
    _save(tmp_path / "v", 0, Image.fromarray(a), "TIFF", "{:03}.tif", compression=compression)
    assert torch.equal(open_video(tmp_path / "v", 1, "{:03}.tif").read([0])[0], _chw(a))


def test_16bit_gray_png(tmp_path):
    frame = _values_frame(240, 320)
    _save(tmp_path / "v", 0, Image.fromarray(frame), "PNG", "{:03}.png")
    assert Image.open(tmp_path / "v" / "000.png").mode == "I;16"
    out = open_video(tmp_path / "v", 1, "{:03}.png").read([0])
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 240, 320)
    assert torch.equal(out[0], _expected_from_values(frame))
    assert out[0, :, 0, 9].tolist() == [255, 255, 255] and out[0, :, 0, 6].tolist() == [128, 128, 128]


@pytest.mark.parametrize("color_type,channels", [(2, 3), (6, 4), (4, 2), (0, 1)])
def test_16bit_colour_png(tmp_path, color_type, channels):
    frame = _values_frame(12, 20, channels)
    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "000.png").write_bytes(_png16(frame, color_type))
    out = open_video(folder, 1, "{:03}.png").read([0])[0]
    scaled = np.resize(U8, frame.size).reshape(frame.shape)
    expected = _chw(scaled[:, :, 0] if channels == 2 else scaled)  # gray+alpha: the gray, 3 times
    assert out.dtype == torch.uint8 and torch.equal(out, expected)


def test_16bit_gray_tiff(tmp_path):
    frame = _values_frame(240, 360)
    _save(tmp_path / "v", 1, Image.fromarray(frame), "TIFF", "{:03}.tif")
    assert Image.open(tmp_path / "v" / "001.tif").mode == "I;16"
    out = open_video(tmp_path / "v", 1, "{:03}.tif").read([0])
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 240, 360)
    assert torch.equal(out[0], _expected_from_values(frame))
    assert out.max() == 255 and out[0, 0, 0, 6] == 128  # 65535 -> 255, 32896 -> 128 (not ~250, not 32896)


def test_bmp_rgb_and_gray(tmp_path):
    rgb, gray = _rng_image(240, 320, 3, seed=1), _rng_image(240, 320, 1, seed=2)
    _save(tmp_path / "v", 0, Image.fromarray(rgb), "BMP", "{:02}.bmp")
    _save(tmp_path / "v", 1, Image.fromarray(gray, mode="L"), "BMP", "{:02}.bmp")
    out = open_video(tmp_path / "v", 2, "{:02}.bmp").read([0, 1])
    assert out.shape == (2, 3, 240, 320)
    assert torch.equal(out, torch.stack([_chw(rgb), _chw(gray)]))


def _palette_image(h, w):
    palette = np.random.default_rng(5).integers(0, 256, (256, 3), dtype=np.uint8)
    index = _rng_image(h, w, 1, seed=6)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.reshape(-1).tolist())
    return image, palette[index]


@pytest.mark.parametrize("fmt,tmpl", [("PNG", "{:03}.png"), ("BMP", "{:03}.bmp"), ("GIF", "{:03}.gif"),
                                      ("TIFF", "{:03}.tif")])
def test_palette_frames_expand_to_rgb(tmp_path, fmt, tmpl):
    image, expected = _palette_image(240, 320)
    _save(tmp_path / "v", 0, image, fmt, tmpl)
    assert Image.open(tmp_path / "v" / tmpl.format(0)).mode == "P"
    assert torch.equal(open_video(tmp_path / "v", 1, tmpl).read([0])[0], _chw(expected))


def test_palette_png_with_transparency(tmp_path):
    image, expected = _palette_image(24, 32)
    _save(tmp_path / "v", 0, image, "PNG", "{:03}.png", transparency=0)
    assert torch.equal(open_video(tmp_path / "v", 1, "{:03}.png").read([0])[0], _chw(expected))


@pytest.mark.parametrize("fmt,tmpl", [("PNG", "{:03}.png"), ("TIFF", "{:03}.tif"), ("WEBP", "{:03}.webp")])
def test_rgba_drops_alpha(tmp_path, fmt, tmpl):
    """Alpha is dropped, not composited: a fully transparent pixel keeps its colour."""
    rgba = _rng_image(240, 320, 4, seed=3)
    rgba[::2, :, 3] = 0
    kwargs = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    _save(tmp_path / "v", 0, Image.fromarray(rgba, mode="RGBA"), fmt, tmpl, **kwargs)
    out = open_video(tmp_path / "v", 1, tmpl).read([0])
    assert out.shape == (1, 3, 240, 320) and torch.equal(out[0], _chw(rgba[:, :, :3]))


def test_gray_alpha_and_bilevel(tmp_path):
    la = np.stack([_rng_image(20, 30, 1, seed=7), np.zeros((20, 30), np.uint8)], axis=2)
    _save(tmp_path / "v", 0, Image.fromarray(la, mode="LA"), "PNG", "{:03}.png")
    bits = _rng_image(20, 30, 1, seed=8) > 127
    _save(tmp_path / "v", 1, Image.fromarray(bits).convert("1"), "TIFF", "{:03}.png")  # TIFF named .png
    out = open_video(tmp_path / "v", 2, "{:03}.png").read([0, 1])
    assert torch.equal(out[0], _chw(la[:, :, 0]))
    assert torch.equal(out[1], _chw(np.where(bits, 255, 0).astype(np.uint8)))


def test_format_is_read_from_content_not_suffix(tmp_path):
    """A PNG named .jpg (common in re-exported datasets) is read as the PNG it is."""
    a = _rng_image(16, 24, 3)
    _save(tmp_path / "v", 0, Image.fromarray(a), "PNG", "img_{:08}.jpg")
    jpeg = Image.fromarray(np.full((16, 24, 3), 90, np.uint8))
    _save(tmp_path / "v", 1, jpeg, "JPEG", "img_{:08}.jpg", quality=95)
    out = open_video(tmp_path / "v", 2, "img_{:08}.jpg").read([0, 1, 0])
    assert torch.equal(out[0], _chw(a)) and torch.equal(out[2], _chw(a))
    assert (out[1].int() - 90).abs().max() <= 1


# ---- what cannot be read: DataError naming the frame file ------------------------------

def test_float_tiff_refused_naming_file(tmp_path):
    _save(tmp_path / "v", 0, Image.fromarray(np.ones((8, 8), np.float32)), "TIFF", "{:03}.tif")
    with pytest.raises(DataError, match=r"v: cannot decode frame 0 \(000.tif\): pixel mode 'F'.*8-bit"):
        open_video(tmp_path / "v", 1, "{:03}.tif").read([0])


def test_animated_gif_refused(tmp_path):
    frames = [Image.new("RGB", (8, 8), (50 * c, 0, 0)) for c in (1, 2, 3)]
    (tmp_path / "v").mkdir()
    frames[0].save(tmp_path / "v" / "000.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"000.gif\): the file holds 3 images"):
        open_video(tmp_path / "v", 1, "{:03}.gif").read([0])


def test_unknown_bytes_named(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "000.tif").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n" + b"0" * 100)  # EPS is never opened
    with pytest.raises(DataError, match=r"frame 0 \(000.tif\): not an image of a known format.*TIFF"):
        open_video(tmp_path / "v", 1, "{:03}.tif").read([0])


@pytest.mark.parametrize("fmt,tmpl", [("TIFF", "{:03}.tif"), ("BMP", "{:03}.bmp"), ("PNG", "{:03}.png")])
def test_truncated_frame_named_and_replaceable(tmp_path, fmt, tmpl):
    arrays = [_rng_image(40, 60, 1, seed=s) for s in range(3)]
    for i, a in enumerate(arrays):
        _save(tmp_path / "v", i + 1, Image.fromarray(a, mode="L"), fmt, tmpl)
    bad = tmp_path / "v" / tmpl.format(2)
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"cannot decode frame 1 \({tmpl.format(2)}\).*REPLACE_BAD_FRAMES"):
        open_video(tmp_path / "v", 3, tmpl).read([0, 1, 2])
    reader = open_video(tmp_path / "v", 3, tmpl, replace_bad=True)
    out = reader.read([1, 2])
    assert torch.equal(out, torch.stack([_chw(arrays[0]), _chw(arrays[2])])) and reader.replaced == 1


# ---- UCSD-Ped2 end to end ------------------------------------------------------------------

PED2_H, PED2_W = 240, 360


def _ped2_level(video, index):
    """Gray level of frame ``index`` of video ``video`` (flat frames, 4 levels apart)."""
    return (4 * index + 40 * video + 2) % 256


def _write_ped2(root, lengths):
    """Folders Train00v/Test00v of flat 360x240 grayscale TIFFs 001.tif..; the two lists."""
    train, test = [], []
    for v, n in enumerate(lengths):
        for split, lines in (("Train", train), ("Test", test)):
            folder = root / f"{split}{v + 1:03}"
            folder.mkdir(parents=True)
            for i in range(n):
                frame = np.full((PED2_H, PED2_W), _ped2_level(v, i), np.uint8)
                Image.fromarray(frame, mode="L").save(folder / f"{i + 1:03}.tif")
            lines.append(f"{split}{v + 1:03} {n} 0" if split == "Train" else f"{split}{v + 1:03} {n} 1 10 40")
    (root / "train.txt").write_text("\n".join(train) + "\n")
    (root / "test.txt").write_text("\n".join(test) + "\n")


@pytest.fixture(scope="module")
def ped2(tmp_path_factory):
    root = tmp_path_factory.mktemp("PED2")
    _write_ped2(root, lengths=(60, 45))
    cfg = load_config_file(REPO / "configs/ped2/ped2_server.yaml")
    assert cfg.DATA.FILENAME_TMPL == "{:03}.tif" and cfg.DATA.INPUT_SIZE == 224
    cfg.defrost()
    apply_overrides(cfg, {"DATA.ROOT": str(root), "DATA.TRAIN_FILE": str(root / "train.txt"),
                          "DATA.VAL_FILE": str(root / "test.txt"), "DATA.NUM_WORKERS": 0,
                          "TEST.BATCH_SIZE": 2, "TRAIN.BATCH_SIZE": 2})
    cfg.freeze()
    return cfg


def test_ped2_test_loader_reads_tiff_folders(ped2):
    batch = next(iter(build_test_loader(ped2)))
    T, S = ped2.DATA.NUM_FRAMES, ped2.DATA.INPUT_SIZE
    imgs = batch["imgs"]
    assert imgs.shape == (2, T, 3, S, S) and imgs.dtype == torch.uint8
    assert torch.equal(imgs[:, :, 0], imgs[:, :, 1]) and torch.equal(imgs[:, :, 0], imgs[:, :, 2])  # gray
    # every frame is the frame the segment asked for: its flat gray level
    for b in range(2):
        vid = int(batch["vid"][b])
        for t, index in enumerate(batch["frame_inds"][b].tolist()):
            assert torch.allclose(imgs[b, t], torch.full_like(imgs[b, t], _ped2_level(vid, index)))


def test_ped2_train_loader_reads_tiff_folders(ped2):
    batch = next(iter(build_train_loader(ped2)))
    K, T, S = ped2.DATA.NUM_CLIPS, ped2.DATA.NUM_FRAMES, ped2.DATA.INPUT_SIZE
    assert batch["imgs"].shape == (2, 1, K, T, 3, S, S) and batch["imgs"].dtype == torch.uint8
    inds = batch["frame_inds"]
    assert inds.shape == (2, K, T) and (inds[..., 1:] >= inds[..., :-1]).all()  # never wrapped
    lengths = torch.tensor([60, 45])[batch["vid"]]
    assert (inds.amax(dim=(1, 2)) < lengths).all() and (inds >= 0).all()
