"""Grad-CAM saliency and the mask-writing command (tiny model, tiny frame folders)."""
import numpy as np
import pytest
import torch
from PIL import Image

from datasets import srd
from datasets.sampling import video_segments
from models import xclip
from apps import gradcam

T, SIZE = 2, 64
VIDEOS = [("frames/normal_a", 9, 0), ("frames/group/normal_b", 6, 0), ("frames/abnormal_c", 7, 1)]


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, name="tiny", T=T)
    return model


def _tokens():
    from clip import tokenize

    return tokenize(["normal", "abnormal"])


def test_saliency_shape_range_and_no_side_effects(tiny_model):
    video = torch.rand((2, T, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(0))
    tiny_model.train()
    before = [p.detach().clone() for p in tiny_model.parameters()]
    sal = gradcam.gradcam_saliency(tiny_model, video, _tokens())
    assert sal.shape == (2, T, SIZE, SIZE) and sal.dtype == torch.float32
    assert sal.min() >= 0 and sal.max() <= 1
    assert tiny_model.training  # mode restored
    assert all(p.grad is None for p in tiny_model.parameters())
    assert all(torch.equal(a, p) for a, p in zip(before, tiny_model.parameters()))
    for frame in sal.view(-1, SIZE, SIZE):  # each frame normalised to peak 1 (or all zero)
        assert frame.max() == 1 or frame.max() == 0
    again = gradcam.gradcam_saliency(tiny_model, video, _tokens())
    assert torch.allclose(sal, again)
    assert not torch.allclose(sal, gradcam.gradcam_saliency(tiny_model, video.flip(-1), _tokens()))


def test_saliency_is_of_the_chosen_logit(tiny_model):
    video = torch.rand((1, T, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(1))
    sal = gradcam.gradcam_saliency(tiny_model, video, _tokens(), class_index=1)
    other = gradcam.gradcam_saliency(tiny_model, video, _tokens(), class_index=0)
    assert sal.sum() > 0 and not torch.allclose(sal, other)


def test_write_masks_png_round_trip(tmp_path):
    maps = torch.stack([torch.linspace(0, 1, SIZE * SIZE).view(SIZE, SIZE), torch.zeros(SIZE, SIZE)])
    assert gradcam.write_masks(tmp_path, "v/one", [4, 4], maps) == 1
    assert gradcam.write_masks(tmp_path, "v/one", [4, 9], maps) == 2
    with Image.open(tmp_path / "v" / "one" / "4.png") as im:
        assert im.mode == "L" and im.size == (SIZE, SIZE)
        pixels = np.asarray(im)
    assert pixels[0, 0] == 0 and pixels[-1, -1] == 255
    loaded = srd.load_saliency(tmp_path, "v/one", torch.tensor([[4, 5], [9, 10]]))
    assert loaded.shape == (2, SIZE, SIZE) and loaded[1].max() == 0


def _write_dataset(root):
    rng = np.random.default_rng(0)
    lines = []
    for rel, frames, label in VIDEOS:
        folder = root / rel
        folder.mkdir(parents=True)
        for i in range(frames):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:08}.jpg", quality=90)
        lines.append(f"{rel} 0 {frames} {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    test_lines = [f"{rel} {n} {lab} {1 if lab else 0} {n}" for rel, n, lab in VIDEOS]
    (root / "test.txt").write_text("\n".join(test_lines) + "\n")
    (root / "labels.csv").write_text("id,name\n0,normal\n1,abnormal\n")
    config = root / "gradcam.yaml"
    config.write_text(
        "DATA:\n"
        f"  ROOT: '{root}'\n  TRAIN_FILE: '{root / 'train.txt'}'\n  VAL_FILE: '{root / 'test.txt'}'\n"
        f"  LABEL_LIST: '{root / 'labels.csv'}'\n  INPUT_SIZE: {SIZE}\n  NUM_CLIPS: 2\n  NUM_FRAMES: {T}\n"
        "  FRAME_INTERVAL: 2\n  NUM_WORKERS: 0\n"
        "MODEL:\n  ARCH: tiny\n"
        "TEST:\n  BATCH_SIZE: 2\n")
    return config


def test_command_writes_one_mask_per_sampled_frame_of_normal_videos(tmp_path, tiny_model):
    import gradcam as gradcam_cli
    from models.checkpoint_io import save_safetensors

    config = _write_dataset(tmp_path / "data")
    ckpt = tmp_path / "tiny.safetensors"
    save_safetensors(tiny_model.state_dict(), ckpt)
    out = tmp_path / "masks"
    code = gradcam_cli.main(["-cfg", str(config), "--pretrained", str(ckpt), "--output", str(out)])
    assert code == 0
    for rel, frames, label in VIDEOS:
        folder = out / rel
        if label:
            assert not folder.exists()
            continue
        expected = {i for seg in video_segments(frames, T, 2) for i in seg.frame_inds}
        written = sorted(folder.glob("*.png"))
        assert {int(p.stem) for p in written} == expected
        for path in written:
            with Image.open(path) as im:
                assert im.mode == "L" and im.size == (SIZE, SIZE)
    # SRD's reader finds them
    assert srd.load_saliency(out, "frames/normal_a", torch.tensor([[0, 2], [4, 6]])).shape == (2, SIZE, SIZE)


def test_command_requires_a_checkpoint(tmp_path):
    import gradcam as gradcam_cli
    from utils.errors import ConfigError

    config = _write_dataset(tmp_path / "data")
    with pytest.raises(ConfigError, match="pretrained"):
        gradcam_cli.main(["-cfg", str(config), "--output", str(tmp_path / "masks")])
