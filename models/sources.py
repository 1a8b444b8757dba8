"""Where the published weights come from, for the README and for the message of a missing file.

Links verified against the X-CLIP model zoo (microsoft/VideoX, X-CLIP/README.md) and the
FrameShield README (rohban-lab/FrameShield). The robust FrameShield models are Google Drive
files whose file names the published README does not give.
"""
from pathlib import Path

XCLIP_ZOO = "https://github.com/nbl97/X-CLIP_Model_Zoo/releases/download/v1.0/"
FRAMESHIELD_BACKBONE_DRIVE = "https://drive.google.com/file/d/1zIqA5gLqv0vjlYYcM6MyvHoYEKD93u6x/view?usp=sharing"

# file name -> (what it is, where to download it, what to use it for)
PUBLISHED_WEIGHTS = {
    "k400_16_8.pth": ("X-CLIP ViT-B/16, 8 frames, trained on Kinetics-400 (the backbone FrameShield starts from)",
                      f"{XCLIP_ZOO}k400_16_8.pth (X-CLIP model zoo; the FrameShield README links the Kinetics-400 "
                      f"backbone at {FRAMESHIELD_BACKBONE_DRIVE})",
                      "--pretrained of stage 1 (main.py, runners/train.sh)"),
    "k400_32_8.pth": ("X-CLIP ViT-B/32, 8 frames, trained on Kinetics-400",
                      f"{XCLIP_ZOO}k400_32_8.pth (X-CLIP model zoo)",
                      "--pretrained of stage 1 (a smaller backbone than the published one)"),
}
# the adversarially robust models of the FrameShield README: (benchmark, link)
FRAMESHIELD_MODELS = (
    ("ShanghaiTech", "https://drive.google.com/file/d/1vRCEabFo_jPe6CTt0sPaZ8KwE64i7l0C/view?usp=sharing"),
    ("TAD", "https://drive.google.com/file/d/1QHwmEcBaWHza5ohA6AYXXTe_ZaDYNFtW/view?usp=sharing"),
)


def missing_weights_hint(path) -> str:
    """What to do about a weights file that is not there: where a published file comes from,
    or which stage writes a FrameShield checkpoint."""
    path = Path(path)
    if path.name in PUBLISHED_WEIGHTS:
        what, where, use = PUBLISHED_WEIGHTS[path.name]
        return f"{path.name} is {what}; download it from {where} to {path} ({use})"
    if path.parent.name == "checkpoints":
        return (f"it is written by the training stage run with --output {path.parent.parent} (runners/train.sh "
                "for stage 1, runners/advtrain.sh for stage 2); train that first, or use a published model "
                "(README 'Pretrained weights')")
    return "check the path; the published weights and where they come from are in the README, 'Pretrained weights'"
