"""Frame readers: start-index detection, batched decoding, video files, bad inputs."""
import numpy as np
import pytest
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

from datasets.frames import FrameFolderReader, detect_start_index, open_video
from utils.errors import DataError

TMPL = "img_{:08}.jpg"


def _random_frames(n, seed=0, h=32, w=40):
    gen = torch.Generator().manual_seed(seed)
    # smooth-ish content so JPEG keeps it recognisable: low-res noise upsampled
    small = torch.randint(0, 256, (n, 3, h // 8, w // 8), generator=gen, dtype=torch.uint8)
    return torch.nn.functional.interpolate(small.float(), size=(h, w), mode="bilinear").to(torch.uint8)


def write_folder(folder, frames, first=0, tmpl=TMPL):
    """Write ``frames`` uint8 [N,3,H,W] as JPEGs numbered from ``first``; return decoded frames."""
    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for i, frame in enumerate(frames):
        data = encode_jpeg(frame, quality=95)
        (folder / tmpl.format(first + i)).write_bytes(data.numpy().tobytes())
        decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB))
    return torch.stack(decoded)


@pytest.mark.parametrize("first", [0, 1])
def test_start_index_detected_from_folder(tmp_path, first):
    frames = _random_frames(6)
    expected = write_folder(tmp_path / "v", frames, first=first)
    assert detect_start_index(tmp_path / "v", TMPL) == first
    reader = open_video(tmp_path / "v", 6, TMPL)
    assert isinstance(reader, FrameFolderReader)
    out = reader.read([0, 5, 2])
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 32, 40)
    assert torch.equal(out, expected[[0, 5, 2]])


@pytest.mark.parametrize("first", [0, 1])
def test_start_index_from_list_start_column(tmp_path, first):
    frames = _random_frames(10)
    expected = write_folder(tmp_path / "v", frames, first=first)
    # 4-column train line "<dir> 3 8 <label>": the video is frames 3..7 of the folder
    assert detect_start_index(tmp_path / "v", TMPL, list_start=3) == 3 + first
    reader = open_video(tmp_path / "v", 5, TMPL, list_start=3)
    assert torch.equal(reader.read([0, 4]), expected[[3, 7]])


def test_repeated_indices_keep_order(tmp_path):
    expected = write_folder(tmp_path / "v", _random_frames(4))
    out = open_video(tmp_path / "v", 4, TMPL).read(np.array([[3, 3], [0, 1]]))
    assert torch.equal(out, expected[[3, 3, 0, 1]])


def test_other_template_and_png(tmp_path):
    from torchvision.io import encode_png

    folder = tmp_path / "v"
    folder.mkdir()
    frames = _random_frames(3)
    for i, f in enumerate(frames):
        (folder / f"{i + 1:05d}.png").write_bytes(encode_png(f).numpy().tobytes())
    out = open_video(folder, 3, "{:05d}.png").read([0, 1, 2])
    assert torch.equal(out, frames)  # PNG is lossless


def _write_mp4(path, frames):
    """Lossless H.264 (libx264rgb, crf 0, RGB planes): decoded pixels equal the input exactly."""
    av = pytest.importorskip("av")
    n, _, h, w = frames.shape
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"crf": "0", "preset": "ultrafast"}
        for frame in frames:
            image = av.VideoFrame.from_ndarray(frame.permute(1, 2, 0).numpy(), format="rgb24")
            for packet in stream.encode(image):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_file_matches_frame_folder(tmp_path):
    pytest.importorskip("decord")
    decoded = write_folder(tmp_path / "folder", _random_frames(8, seed=3))
    # the video holds the decoded JPEG pixels, losslessly: both readers must agree exactly
    _write_mp4(tmp_path / "clip.mp4", decoded)
    inds = [0, 2, 7, 7, 5]
    from_folder = open_video(tmp_path / "folder", 8, TMPL).read(inds)
    from_video = open_video(tmp_path / "clip.mp4", 8, TMPL).read(inds)
    assert from_video.dtype == torch.uint8 and from_video.shape == from_folder.shape
    assert torch.equal(from_video, from_folder)


def test_folder_named_like_a_video_is_read_as_folder(tmp_path):
    expected = write_folder(tmp_path / "01_Accident_006.mp4", _random_frames(3))
    assert torch.equal(open_video(tmp_path / "01_Accident_006.mp4", 3, TMPL).read([1]), expected[[1]])


# ---- bad inputs: every error names the video and the frame -------------------------------

def test_missing_video(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        open_video(tmp_path / "nowhere", 5, TMPL)


def test_missing_frame_in_the_middle(tmp_path):
    write_folder(tmp_path / "v", _random_frames(6))
    (tmp_path / "v" / TMPL.format(3)).unlink()
    reader = open_video(tmp_path / "v", 6, TMPL)
    with pytest.raises(DataError, match=r"v.*frame 3 \(img_00000003.jpg\) is missing.*REPLACE_BAD_FRAMES"):
        reader.read([0, 3, 5])


def test_corrupt_jpeg_named(tmp_path):
    write_folder(tmp_path / "v", _random_frames(6))
    bad = tmp_path / "v" / TMPL.format(4)
    data = bytearray(bad.read_bytes())
    data[20:200] = b"\x07" * 180
    bad.write_bytes(bytes(data))
    reader = open_video(tmp_path / "v", 6, TMPL)
    with pytest.raises(DataError, match=r"v: cannot decode frame 4 \(img_00000004.jpg\)"):
        reader.read([0, 1, 4, 5])


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_truncated_or_empty_jpeg_named(tmp_path, damage):
    write_folder(tmp_path / "v", _random_frames(3))
    bad = tmp_path / "v" / TMPL.format(1)
    bad.write_bytes(bad.read_bytes()[:100] if damage == "truncate" else b"")
    with pytest.raises(DataError, match=r"frame 1 \(img_00000001.jpg\)"):
        open_video(tmp_path / "v", 3, TMPL).read([1])


def test_replace_bad_frames_uses_nearest_readable(tmp_path):
    expected = write_folder(tmp_path / "v", _random_frames(6))
    (tmp_path / "v" / TMPL.format(2)).write_bytes(b"not a jpeg")
    (tmp_path / "v" / TMPL.format(1)).write_bytes(b"")
    reader = open_video(tmp_path / "v", 6, TMPL, replace_bad=True)
    out = reader.read([2, 1, 4])
    # frame 2: neighbours 1 (bad) then 3 -> 3; frame 1: neighbour 0
    assert torch.equal(out, expected[[3, 0, 4]])
    assert reader.replaced == 2


def test_list_longer_than_folder(tmp_path):
    write_folder(tmp_path / "v", _random_frames(4))
    with pytest.raises(DataError, match=r"v: the list gives 9 frames but frame img_00000008.jpg"):
        open_video(tmp_path / "v", 9, TMPL)


def test_wrong_template_named(tmp_path):
    write_folder(tmp_path / "v", _random_frames(2))
    with pytest.raises(DataError, match="FILENAME_TMPL"):
        open_video(tmp_path / "v", 2, "frame_{:04d}.jpg")


def test_zero_length_video_file(tmp_path):
    pytest.importorskip("decord")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="empty.mp4"):
        open_video(tmp_path / "empty.mp4", 5, TMPL)


def test_video_file_without_frames(tmp_path):
    pytest.importorskip("decord")
    av = pytest.importorskip("av")
    with av.open(str(tmp_path / "none.mp4"), "w") as container:
        stream = container.add_stream("libx264rgb", rate=25)
        stream.width, stream.height, stream.pix_fmt = 40, 32, "rgb24"
    with pytest.raises(DataError, match="none.mp4"):
        open_video(tmp_path / "none.mp4", 5, TMPL)


def test_video_file_shorter_than_list(tmp_path):
    pytest.importorskip("decord")
    _write_mp4(tmp_path / "short.mp4", _random_frames(4))
    with pytest.raises(DataError, match=r"short.mp4: the list gives 10 frames but the file holds only 4"):
        open_video(tmp_path / "short.mp4", 10, TMPL)


def test_frames_of_different_size(tmp_path):
    write_folder(tmp_path / "v", _random_frames(2))
    write_folder(tmp_path / "w", _random_frames(1, h=16, w=16))
    (tmp_path / "w" / TMPL.format(0)).replace(tmp_path / "v" / TMPL.format(1))
    with pytest.raises(DataError, match="differ in size"):
        open_video(tmp_path / "v", 2, TMPL).read([0, 1])
