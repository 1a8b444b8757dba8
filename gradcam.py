"""Write Grad-CAM masks of the anomaly logit for SRD's gradcam mode.

    python gradcam.py -cfg CONFIG --pretrained CKPT --output DIR [--opts KEY VALUE ...]

Runs the trained model over the *normal* videos of ``DATA.TRAIN_FILE``, segmented like the
test loader (``datasets.build.build_train_as_test_loader``), and writes one 8-bit grayscale
PNG per sampled frame: ``DIR/<video path from the list>/<frame index>.png`` (input size,
255 = most salient; see apps/gradcam.py). Point ``ADV_TRAIN.GRADCAM_DIR`` at DIR and set
``ADV_TRAIN.SRD_MODE gradcam`` to use them. DIR also receives config.yaml and the log.
Under torchrun each rank writes the masks of its share of the segments.
"""
from torch.utils.data import DataLoader, Subset

from utils.config import build_arg_parser
from utils.errors import ConfigError


def normal_videos_loader(loader):
    """The train-as-test loader restricted to the segments of normal videos (same settings)."""
    from apps.gradcam import normal_segment_indices

    dataset = loader.dataset
    keep = set(normal_segment_indices(dataset))
    order = [key for key in loader.sampler if (key[0] if isinstance(key, (tuple, list)) else key) in keep]
    extra = {}
    if loader.num_workers > 0:
        extra = dict(prefetch_factor=loader.prefetch_factor, worker_init_fn=loader.worker_init_fn)
    return DataLoader(Subset(dataset, order), batch_size=loader.batch_size, shuffle=False,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory, **extra)


def main(argv=None) -> int:
    args = build_arg_parser("FrameShield: Grad-CAM masks for SRD's gradcam mode", groups=()).parse_args(argv)
    from datasets.build import build_train_as_test_loader
    from utils import dist
    from utils.logger import progress
    from apps.gradcam import compute_masks
    from training.stage import build_model, setup_stage, text_tokens

    stage = setup_stage("gradcam", args)
    cfg = stage.cfg
    try:
        if not cfg.MODEL.PRETRAINED:
            raise ConfigError("gradcam.py needs a trained checkpoint: pass --pretrained CKPT "
                              "(or set MODEL.PRETRAINED)")
        if int(cfg.TEST.NUM_CROP) != 1:
            raise ConfigError(f"gradcam.py reads one crop per segment; TEST.NUM_CROP is {cfg.TEST.NUM_CROP}: "
                              "pass --opts TEST.NUM_CROP 1")
        model = build_model(stage).eval()
        for param in model.parameters():
            param.requires_grad_(False)  # only the activations need gradients
        tokens = text_tokens(stage)
        loader = normal_videos_loader(build_train_as_test_loader(cfg, dist_info=stage.dist))
        stage.logger.info(f"Grad-CAM over {len(loader.dataset)} segments of normal training videos "
                          f"-> {stage.output}")
        counts = compute_masks(model, loader, tokens, stage.output, stage.device, stage.logger,
                               progress=lambda it: progress(it, desc="gradcam", total=len(loader), rank=dist.get_rank()))
        stage.logger.info(f"to use them: --opts ADV_TRAIN.GRADCAM_DIR {stage.output} "
                          "ADV_TRAIN.SRD_MODE gradcam")
        return 0 if counts["segments"] == len(loader.dataset) else 1
    finally:
        dist.cleanup()


if __name__ == "__main__":
    from training.stage import run_main

    run_main(main)
