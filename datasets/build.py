"""DataLoaders for training, testing and train-as-test (pseudo labels).

Samplers: with a process group (``torch.distributed`` initialised, or ``dist_info`` saying
so) the train loader shards with ``DistributedSampler`` (shuffled, seeded by SEED, padded to
equal shares as DDP needs); the test loaders shard by ``rank::world_size`` without padding,
so every segment is scored exactly once over all ranks. Without a process group the train
order is a permutation drawn from (SEED, epoch) and the test order is the list order.

Every sampler yields ``(index, epoch)`` keys: the epoch reaches the dataset inside the key,
so persistent workers and prefetched batches always see the right epoch. Call
``set_loader_epoch(loader, epoch)`` at the start of every epoch.

Workers: ``DATA.NUM_WORKERS``; pin_memory only when CUDA is available and DATA.PIN_MEMORY;
persistent workers and prefetch factor only with workers. Each worker runs one thread and
seeds torch/numpy/random from (SEED, rank, worker id, epoch) at start; item randomness is
seeded per item (see datasets.video_dataset).

Embedded synthetic data: with ``DATA.SYNTHETIC_PRESET`` set (the synthetic configs set it)
and a list file missing, every loader builder first makes the synthetic dataset of that
preset (seed 0, as the demo makes it) at ``DATA.ROOT`` (rank 0 writes, the other ranks wait),
so ``configs/synthetic/*.yaml`` run as shipped on a fresh clone.
"""
import logging
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from datasets.lists import anomalous_without_frames, parse_list_file
from datasets.video_dataset import (_TAG_WORKER, SegmentDataset, TrainVideoDataset, derive_seed,
                                    seed_global_rngs)
from utils import dist
from utils.errors import ConfigError, ListFileError


class EpochKeySampler(Sampler):
    """Wraps an index sampler and yields ``(index, epoch)``; ``set_epoch`` reaches both."""

    def __init__(self, base):
        self.base = base
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(self.epoch)

    def __iter__(self):
        epoch = self.epoch
        for index in self.base:
            yield (int(index), epoch)

    def __len__(self):
        return len(self.base)


class SeededShuffleSampler(Sampler):
    """A permutation of ``range(n)`` drawn from (seed, epoch): reproducible per epoch."""

    def __init__(self, n, seed):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __iter__(self):
        gen = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self):
        return self.n


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` in order: no padding, no shuffling (evaluation)."""

    def __init__(self, n, rank=0, world_size=1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))


def _process_group(dist_info=None):
    """(distributed, rank, world_size) from ``dist_info`` or the initialised process group."""
    if dist_info is not None:
        distributed = bool(getattr(dist_info, "distributed", dist_info.world_size > 1))
        return distributed, int(dist_info.rank), int(dist_info.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return True, torch.distributed.get_rank(), torch.distributed.get_world_size()
    return False, 0, 1


class WorkerInit:
    """``worker_init_fn``: one thread per worker; seed its RNGs from (SEED, rank, worker, epoch)."""

    def __init__(self, seed, rank, sampler):
        self.seed, self.rank, self.sampler = seed, rank, sampler

    def __call__(self, worker_id):
        torch.set_num_threads(1)
        epoch = getattr(self.sampler, "epoch", 0)  # the epoch when the workers were started
        seed_global_rngs(derive_seed(self.seed, self.rank, worker_id, epoch, _TAG_WORKER))


def _loader(cfg, dataset, sampler, batch_size, rank):
    workers = int(cfg.DATA.NUM_WORKERS)
    extra = {}
    if workers > 0:
        extra = dict(persistent_workers=bool(cfg.DATA.PERSISTENT_WORKERS),
                     prefetch_factor=int(cfg.DATA.PREFETCH_FACTOR),
                     worker_init_fn=WorkerInit(int(cfg.SEED), rank, sampler))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=bool(cfg.DATA.PIN_MEMORY) and torch.cuda.is_available(),
                      drop_last=False, **extra)


SYNTHETIC_SEED = 0  # the seed the demo makes its datasets with


def synthetic_command(root, preset):
    return f"python -m datasets.synthetic --out {root} --preset {preset}"


def ensure_synthetic_data(cfg, dist_info=None, needed=None):
    """Make the embedded synthetic dataset at DATA.ROOT when DATA.SYNTHETIC_PRESET is set and
    DATA.TRAIN_FILE or DATA.VAL_FILE is missing (rank 0; every rank then meets at a barrier).
    Without the key, a missing list file is a ListFileError that says where lists come from
    (in a folder named ``synthetic*``: the command that makes it)."""
    preset, root = cfg.DATA.SYNTHETIC_PRESET, cfg.DATA.ROOT
    needed = (cfg.DATA.TRAIN_FILE, cfg.DATA.VAL_FILE) if needed is None else needed
    missing = [f for f in needed if f and not Path(f).is_file()]
    if not preset:
        name = Path(root).name if root else ""
        if missing and name.startswith("synthetic"):
            guess = name.split("_", 1)[1] if "_" in name else "default"
            raise ListFileError(
                f"list file not found: {missing[0]}; {root} is meant for the embedded synthetic dataset: make it "
                f"with `{synthetic_command(root, guess)}` (or set DATA.SYNTHETIC_PRESET {guess} and the stages "
                "make it themselves)")
        if missing:
            raise ListFileError(
                f"list file not found: {missing[0]} (DATA.TRAIN_FILE / DATA.VAL_FILE; relative paths start from the "
                "folder you run in). The benchmark list files are not shipped: take the published ones (README "
                "'Datasets' says where, per benchmark) or make them from your frames with `python -m "
                "datasets.make_lists --root DATA.ROOT --videos ... --gt ... --out-train ... --out-test ...`")
        return
    _, rank, _ = _process_group(dist_info)
    if missing and rank == 0:
        from datasets.synthetic import make_synthetic_dataset

        if not root:
            raise ConfigError(f"DATA.SYNTHETIC_PRESET {preset}: set DATA.ROOT to the folder to make the dataset in")
        logging.getLogger("FrameShield").info(
            f"{missing[0]} is missing: making the embedded synthetic dataset (DATA.SYNTHETIC_PRESET {preset}, "
            f"seed {SYNTHETIC_SEED}) in {root}, as `{synthetic_command(root, preset)}` does")
        make_synthetic_dataset(root, preset=preset, seed=SYNTHETIC_SEED)
    dist.barrier()


def build_train_loader(cfg, dist_info=None):
    """Training loader over ``DATA.TRAIN_FILE``: batches of ``TrainVideoDataset`` items.

    Batch keys: imgs [B, A, K, T, 3, S, S] float in [0, 1] (A = DATA.NUM_VIEWS with
    TRAIN.USE_VIEW2, else 1), label [B], vid [B], path,
    frame_inds [B, K, T], pa_labels [B, K], srd_applied [B], replaced_frames [B].
    """
    ensure_synthetic_data(cfg, dist_info, needed=(cfg.DATA.TRAIN_FILE,))
    distributed, rank, world = _process_group(dist_info)
    records = parse_list_file(cfg.DATA.TRAIN_FILE, kind="train")
    dataset = TrainVideoDataset(records, cfg, list_file=cfg.DATA.TRAIN_FILE, rank=rank)
    if distributed:
        base = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True,
                                  seed=int(cfg.SEED) % (1 << 32), drop_last=False)
    else:
        base = SeededShuffleSampler(len(dataset), int(cfg.SEED))
    return _loader(cfg, dataset, EpochKeySampler(base), int(cfg.TRAIN.BATCH_SIZE), rank)


def _segment_loader(cfg, list_file, kind, dist_info):
    ensure_synthetic_data(cfg, dist_info, needed=(list_file,))
    distributed, rank, world = _process_group(dist_info)
    records = parse_list_file(list_file, kind=kind)
    dataset = SegmentDataset(records, cfg, list_file=list_file, rank=rank)
    if records[0].kind == "test":  # the README promises every run logs this (frame labels are test-list only)
        anomalous_without_frames(records, bool(cfg.DATA.COUNT_START_ZERO))
    base = ShardSampler(len(dataset), rank, world) if distributed else ShardSampler(len(dataset))
    return _loader(cfg, dataset, EpochKeySampler(base), int(cfg.TEST.BATCH_SIZE), rank)


def build_test_loader(cfg, list_file=None, dist_info=None):
    """Test loader over ``list_file`` (default ``DATA.VAL_FILE``), one segment per item.

    Batch keys: imgs [B, T, 3, S, S] (or [B, 3, T, 3, S, S] with TEST.NUM_CROP 3), vid [B],
    path, seg_start [B], seg_len [B], frame_inds [B, T], replaced_frames [B].
    """
    if list_file is None:
        return _segment_loader(cfg, cfg.DATA.VAL_FILE, "test", dist_info)
    return _segment_loader(cfg, list_file, "auto", dist_info)


def build_val_loader(cfg, dist_info=None):
    """Loader over DATA.VAL_SPLIT_FILE (held-back training videos in test-list format, for
    TRAIN.SELECT 'val'), or None when the key is empty."""
    if not cfg.DATA.VAL_SPLIT_FILE:
        return None
    return _segment_loader(cfg, cfg.DATA.VAL_SPLIT_FILE, "test", dist_info)


def build_train_as_test_loader(cfg, dist_info=None):
    """Deterministic loader over ``DATA.TRAIN_FILE`` segmented like the test loader."""
    return _segment_loader(cfg, cfg.DATA.TRAIN_FILE, "train", dist_info)


def set_loader_epoch(loader, epoch):
    """Tell the loader's sampler (and so the items' seeds) which epoch is starting."""
    sampler = loader.sampler
    if not hasattr(sampler, "set_epoch"):
        raise TypeError(f"the loader's sampler {type(sampler).__name__} has no set_epoch")
    sampler.set_epoch(epoch)

