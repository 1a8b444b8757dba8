"""Map-style datasets over a list file: training items and test segments.

``TrainVideoDataset``: one item per video = K clips of T frames (datasets.sampling), each
distinct frame read once, turned into A views -> ``imgs [A, K, T, 3, S, S]`` uint8; A =
DATA.NUM_VIEWS when TRAIN.USE_VIEW2, else 1 (view 2 is not built when training does not
read it; see datasets.transforms.num_train_views). A normal video may carry an SRD pseudo
anomaly (datasets.srd.ItemSRD): the run of clips is drawn once per item, and each view
pastes its own patch on its finished S x S crops (view 2: after its colour and RandAugment
ops), as the published code pastes on the output of each view's pipeline. So the patch's size, position and speed
are relative to what the model sees, every clip labelled 1 (``pa_labels``) is visibly
changed in every view, and clips labelled 0 equal the same item without SRD.

``SegmentDataset``: one item per test segment (test list, or the train list for pseudo
labels) -> ``imgs [T, 3, S, S]`` (or ``[3, T, 3, S, S]`` with three crops) uint8; deterministic.

Pixels leave the datasets as uint8 (0..255): the model's float input in [0, 1] is made on
the device by :func:`datasets.transforms.model_input`, the one place every consumer calls.
That is 4x less memory written per item, copied between worker processes, collated and
sent to the GPU than float32 items (docs/bench_loader.md), and bit-identical to converting
here (the same ``float32 / 255``).

Seeding: an item's randomness (clip offsets, view-2 augmentation, SRD) is drawn from seeds
derived from ``(SEED, rank, epoch, video index)``, so it never depends on which worker
loads the item or how many workers there are, differs between epochs and ranks, and a run
resumed at any epoch replays the same data. The epoch reaches the workers inside the
sampler's keys (``(index, epoch)``, see datasets.build), which works with persistent
workers and prefetching alike. Plain integer keys mean epoch 0.
"""
import functools
import logging
import random
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from datasets.frame_folders import check_video_on_disk
from datasets.frames import open_video
from datasets.lists import resolve_video_path
from datasets.sampling import train_clip_indices, video_segments
from datasets.transforms import CenterView, build_test_view, build_train_views, resize_mode
from utils.errors import DataError

LOGGER = logging.getLogger("FrameShield")
# tags keep the per-item seed streams apart
_TAG_SAMPLING, _TAG_AUGMENT, _TAG_SRD, _TAG_WORKER = 1, 2, 3, 4


def derive_seed(*parts):
    """A 63-bit seed from integers (any sign) through numpy's SeedSequence mixing."""
    words = [int(p) % (1 << 32) for p in parts]
    state = np.random.SeedSequence(words).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def split_key(key):
    """Dataset key -> (index, epoch): an int, or the sampler's ``(index, epoch)`` pair."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 0


def seed_global_rngs(seed):
    """Seed torch, numpy and random (the RNGs torchvision's v2 transforms and users draw from)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


@contextmanager
def seeded_global_rngs(seed):
    """Seed the global RNGs for one item; in the main process restore them afterwards.

    In a worker process the globals belong to the worker and are simply reseeded; with
    ``NUM_WORKERS 0`` the item is built in the training process, whose RNG stream (dropout,
    attacks) must not change because data was loaded.
    """
    if get_worker_info() is not None:
        seed_global_rngs(seed)
        yield
        return
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    seed_global_rngs(seed)
    try:
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class _ListDataset(Dataset):
    """Shared part: records, path resolution and the up-front checks of the list.

    Every line's video is checked on disk when the dataset is made (datasets.frame_folders:
    one stat of the last frame, one listing per folder, a header read per video file), so a
    wrong frame count, a gap or a link out of DATA.ROOT stops the run before it starts
    instead of at the item that reaches it, hours in.
    """

    def __init__(self, records, cfg, list_file="", rank=0):
        self.records = list(records)
        self.list_file = str(list_file)
        self.rank = int(rank)
        self.seed = int(cfg.SEED)
        self.filename_tmpl = cfg.DATA.FILENAME_TMPL
        self.replace_bad = bool(cfg.DATA.REPLACE_BAD_FRAMES)
        self.num_frames = int(cfg.DATA.NUM_FRAMES)
        self.interval = int(cfg.DATA.FRAME_INTERVAL)
        if not self.records:
            raise DataError(f"list file {self.list_file or '(given records)'} holds no videos")
        self.video_paths, longer = [], []
        for record in self.records:
            where = f"{self.list_file}:{record.line}" if self.list_file else f"video {record.path}"
            if record.num_frames < self.num_frames:
                raise DataError(
                    f"{where}: video {record.path} has {record.num_frames} frames, fewer than one "
                    f"clip (DATA.NUM_FRAMES={self.num_frames}); remove it from the list or lower "
                    "DATA.NUM_FRAMES")
            path = resolve_video_path(cfg.DATA.ROOT, record.path, allow_outside_root=cfg.DATA.ALLOW_OUTSIDE_ROOT,
                                      must_exist=True, source=where)
            root = None if cfg.DATA.ALLOW_OUTSIDE_ROOT else (cfg.DATA.ROOT or ".")
            try:  # before any segment is built: a count far beyond the disk fails here, at once
                if check_video_on_disk(path, record.num_frames, self.filename_tmpl, record.start_frame,
                                       self.replace_bad, root) and record.kind == "test":
                    longer.append(f"{record.line} ({record.path})")
            except DataError as err:
                raise DataError(f"{where}: {err}") from None
            self.video_paths.append(path)
        if longer:  # published lists may cut videos short on purpose: worth a line, not an error
            LOGGER.warning("%s: %d video(s) hold more frames on disk than their line gives; only the listed "
                           "frames are scored (lines %s%s); check the frame counts if that is not meant",
                           self.list_file, len(longer), ", ".join(longer[:5]), " ..." if len(longer) > 5 else "")
        self._cached = (None, None)  # (video index, reader): consecutive segments reuse it

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cached"] = (None, None)  # an open video reader does not travel to workers
        return state

    def reader(self, vid):
        if self._cached[0] != vid:
            record = self.records[vid]
            self._cached = (vid, open_video(self.video_paths[vid], record.num_frames, self.filename_tmpl,
                                            record.start_frame, self.replace_bad))
        return self._cached[1]

    def read_frames(self, vid, inds, unique=False):
        """``uint8 [N, 3, H, W]`` for ``inds`` and the number of frames replaced while reading;
        ``unique``: ``((U frames uint8 [3, H, W], inverse [N]), replaced)``, each distinct frame
        once (datasets.frames._Reader.read_unique)."""
        reader = self.reader(vid)
        before = reader.replaced
        frames = reader.read_unique(inds) if unique else reader.read(inds)
        return frames, reader.replaced - before


class TrainVideoDataset(_ListDataset):
    """One item per video of a training list (see the module docstring for the keys)."""

    def __init__(self, records, cfg, list_file="", rank=0, random_sampling=True):
        super().__init__(records, cfg, list_file, rank)
        self.num_clips = int(cfg.DATA.NUM_CLIPS)
        self.random_sampling = random_sampling
        self.views = build_train_views(cfg)
        self.pseudo_anomaly = bool(cfg.ADV_TRAIN.PSEUDO_ANOMALY)
        self.srd_options = {}
        self.gradcam_dir = ""
        self.mask_view = None
        if self.pseudo_anomaly:
            from datasets import srd

            self.srd_options = srd.srd_options_from_config(cfg)
            if self.srd_options.get("mode") == "gradcam":
                self.gradcam_dir = str(cfg.ADV_TRAIN.GRADCAM_DIR)
                # gradcam.py computes its masks on the test view's centre crop
                self.mask_view = CenterView(int(cfg.DATA.INPUT_SIZE), resize_mode(cfg))

    def __len__(self):
        return len(self.records)

    @property
    def random_views(self):
        return any(view.random for view in self.views)

    def item_seed(self, index, epoch, tag):
        return derive_seed(self.seed, self.rank, epoch, index, tag)

    def __getitem__(self, key):
        vid, epoch = split_key(key)
        record = self.records[vid]
        rng = np.random.default_rng(self.item_seed(vid, epoch, _TAG_SAMPLING)) if self.random_sampling else None
        inds = train_clip_indices(record.num_frames, self.num_clips, self.num_frames, self.interval, rng)
        (frames, inverse), replaced = self.read_frames(vid, inds.reshape(-1), unique=True)

        item_srd = None
        pa_labels = torch.zeros(self.num_clips, dtype=torch.long)
        if self.pseudo_anomaly and not record.is_anomalous:
            item_srd = self._draw_srd(vid, epoch, inds, frames[0].shape[-2:])
            pa_labels = item_srd.labels

        # only a random view (view 2) draws from the global RNGs; seeding them costs ~1 ms
        randomness = seeded_global_rngs(self.item_seed(vid, epoch, _TAG_AUGMENT)) if self.random_views else nullcontext()
        with randomness:
            imgs = self._views(frames, inverse, item_srd)
        return {
            "imgs": imgs,
            "label": torch.tensor(int(record.is_anomalous), dtype=torch.long),
            "vid": torch.tensor(vid, dtype=torch.long),
            "path": record.path,
            "frame_inds": torch.from_numpy(inds),
            "pa_labels": pa_labels,
            "srd_applied": torch.tensor(bool(pa_labels.any())),
            "replaced_frames": torch.tensor(replaced, dtype=torch.long),
        }

    def _draw_srd(self, vid, epoch, inds, frame_hw):
        """The item's :class:`datasets.srd.ItemSRD`, from its own generator (and masks)."""
        from datasets import srd

        generator = torch.Generator().manual_seed(self.item_seed(vid, epoch, _TAG_SRD))
        saliency = mask_box = None
        if self.gradcam_dir:
            saliency = srd.load_saliency(self.gradcam_dir, self.records[vid].path, inds)
            mask_box = self.mask_view.crop_box(*frame_hw)
        return srd.ItemSRD(self.num_clips, self.num_frames, generator, saliency=saliency,
                           saliency_box=mask_box, **self.srd_options)

    def _views(self, frames, inverse, item_srd=None):
        """``uint8 [A, K, T, 3, S, S]`` from the U distinct frames (``uint8 [3, H, W]`` each) and
        ``inverse [K*T]`` (clip frame j is ``frames[inverse[j]]``).

        A view that is the same for every frame (view 1) resizes each distinct frame once and
        gathers the crops; a random view draws once per clip, on that clip's frames. With
        ``item_srd`` every view pastes its SRD patch on its finished crops of the run's
        clips; the others are the same as without SRD.
        """
        k, t = self.num_clips, self.num_frames
        h, w = frames[0].shape[-2:]
        size = self.views[0].size
        imgs = torch.empty((len(self.views), k, t, 3, size, size), dtype=torch.uint8)
        for out, view in zip(imgs, self.views):
            painter = item_srd.painter(size) if item_srd is not None else None
            if view.random:  # one draw per clip
                for c, out_clip in enumerate(out):
                    clip = torch.stack([frames[j] for j in inverse[c * t:(c + 1) * t].tolist()])
                    paint = functools.partial(painter.paint, c) if painter and painter.wants(c) else None
                    out_clip.copy_(view.apply_uint8(clip, paint=paint))
            else:
                flat = out.view(k * t, 3, size, size)
                if len(frames) == k * t and bool((inverse == torch.arange(k * t)).all()):
                    view.apply_uint8_frames(frames, out=flat)  # every frame once, in order: no gather
                else:
                    crops = view.apply_uint8_frames(frames)  # [U, 3, S, S]
                    torch.index_select(crops, 0, inverse, out=flat)  # [U,3,S,S] -> [K*T,3,S,S]
                if painter is not None:
                    box = view.crop_box(h, w)
                    for c in painter.clips():
                        out[c].copy_(painter.paint(c, out[c], box))
        return imgs


class SegmentDataset(_ListDataset):
    """One item per consecutive segment of every video; no randomness.

    ``segments``: list of (video index, datasets.sampling.Segment) in list order.
    """

    def __init__(self, records, cfg, list_file="", rank=0):
        super().__init__(records, cfg, list_file, rank)
        self.view = build_test_view(cfg)
        self.segments = [(vid, seg) for vid, record in enumerate(self.records)
                         for seg in video_segments(record.num_frames, self.num_frames, self.interval)]

    def __len__(self):
        return len(self.segments)

    def __getitem__(self, key):
        index, _ = split_key(key)
        vid, seg = self.segments[index]
        frames, replaced = self.read_frames(vid, list(seg.frame_inds))
        return {
            "imgs": self.view.apply_uint8(frames),
            "vid": torch.tensor(vid, dtype=torch.long),
            "path": self.records[vid].path,
            "seg_start": torch.tensor(seg.start, dtype=torch.long),
            "seg_len": torch.tensor(seg.length, dtype=torch.long),
            "frame_inds": torch.tensor(seg.frame_inds, dtype=torch.long),
            "replaced_frames": torch.tensor(replaced, dtype=torch.long),
        }
