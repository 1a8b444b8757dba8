"""Tiny on-disk datasets for the data-pipeline tests (frame folders of 32x40 JPEGs).

Every frame is one flat colour that encodes its frame index (red = 8 * index + 4, so JPEG's
small errors cannot confuse neighbours), which lets a test read back which frame ended up
where after sampling, cropping and batching.
"""
import numpy as np
import torch
from torchvision.io import encode_jpeg

from utils.config import get_default_config
from tests.cfg_helpers import apply_overrides

TMPL = "img_{:08}.jpg"
H, W = 32, 40


def frame_colour(index, video=0):
    return (8 * index + 4) % 256, (40 * video + 20) % 256, 128


def write_video(folder, num_frames, video=0, first=0):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(num_frames):
        frame = torch.tensor(frame_colour(i, video), dtype=torch.uint8).view(3, 1, 1).expand(3, H, W)
        (folder / TMPL.format(first + i)).write_bytes(encode_jpeg(frame.contiguous(), quality=95).numpy().tobytes())



def make_dataset(root, lengths=(24, 30, 20, 26), labels=(0, 1, 0, 1)):
    """Write videos ``v0..`` under ``root/frames`` plus ``train.txt`` (4 columns) and
    ``test.txt`` (5 columns); return (train_list, test_list)."""
    train_lines, test_lines = [], []
    for v, (n, label) in enumerate(zip(lengths, labels)):
        write_video(root / "frames" / f"v{v}", n, video=v)
        train_lines.append(f"frames/v{v} 0 {n} {label}")
        test_lines.append(f"frames/v{v} {n} {label} " + (f"{n // 3} {n // 2}" if label else f"0 {n}"))
    (root / "train.txt").write_text("\n".join(train_lines) + "\n")
    (root / "test.txt").write_text("\n".join(test_lines) + "\n")
    return root / "train.txt", root / "test.txt"


def tiny_cfg(root, **overrides):
    """Default config pointed at ``root`` with tiny clips: K=4 clips of T=3 frames, step 2, 32 px,
    both views (TRAIN.USE_VIEW2)."""
    cfg = get_default_config()
    cfg.DATA.ROOT = str(root)
    cfg.DATA.TRAIN_FILE = str(root / "train.txt")
    cfg.DATA.VAL_FILE = str(root / "test.txt")
    cfg.DATA.INPUT_SIZE = 32
    cfg.DATA.NUM_CLIPS = 4
    cfg.DATA.NUM_FRAMES = 3
    cfg.DATA.FRAME_INTERVAL = 2
    cfg.DATA.NUM_WORKERS = 0
    cfg.TRAIN.BATCH_SIZE = 2
    cfg.TEST.BATCH_SIZE = 3
    cfg.TRAIN.USE_VIEW2 = True
    return apply_overrides(cfg, overrides)


def decoded_indices(imgs):
    """Frame index of every frame of ``imgs [..., 3, S, S]`` from its mean red value."""
    red = imgs[..., 0, :, :].float().mean(dim=(-1, -2))
    scale = 255.0 if imgs.dtype.is_floating_point else 1.0
    return np.vectorize(lambda r: int(round((r * scale - 4) / 8)))(red.numpy())
