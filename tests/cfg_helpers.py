"""A frozen config of the tiny model on a synthetic dataset, for the tests."""
from utils.config import get_default_config


def tiny_synthetic_cfg(paths, **overrides):
    """Config over ``make_synthetic_dataset``'s ``paths`` (2-frame clips, 64 px, no workers).

    overrides: ``{"SECTION.KEY": value}`` applied last.
    """
    cfg = get_default_config()
    cfg.defrost()
    cfg.DATA.ROOT = str(paths["root"])
    cfg.DATA.TRAIN_FILE = str(paths["train_list"])
    cfg.DATA.VAL_FILE = str(paths["test_list"])
    cfg.DATA.INPUT_SIZE = 64
    cfg.DATA.NUM_FRAMES = 2
    cfg.DATA.FRAME_INTERVAL = 4
    cfg.DATA.NUM_WORKERS = 0
    cfg.TEST.BATCH_SIZE = 64
    cfg.MODEL.ARCH = "tiny"
    cfg.ATTACK.BATCH_SIZE = 64
    apply_overrides(cfg, overrides)
    cfg.freeze()
    return cfg


def apply_overrides(cfg, overrides):
    """Set ``{"SECTION.KEY": value}`` (any depth; "PRINT_FREQ" too) on an unfrozen config."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return cfg
