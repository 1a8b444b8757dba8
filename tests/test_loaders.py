"""Datasets and loaders: batch layout, frame mapping, views, seeding, SRD hook, bad inputs,
and a 2-process gloo split."""
import json
import os

import numpy as np
import pytest
import torch

from datasets import build, video_dataset
from datasets.build import build_test_loader, build_train_as_test_loader, build_train_loader, set_loader_epoch
from datasets.lists import parse_list_file
from datasets.sampling import video_segments
from datasets.transforms import to_unit_float
from datasets.video_dataset import SegmentDataset, TrainVideoDataset
from tests.loader_helpers import decoded_indices, frame_colour, make_dataset, tiny_cfg, write_video
from utils.errors import DataError, ListFileError


@pytest.fixture()
def data(tmp_path):
    make_dataset(tmp_path)
    return tmp_path


def _train_dataset(root, **overrides):
    cfg = tiny_cfg(root, **overrides)
    return TrainVideoDataset(parse_list_file(cfg.DATA.TRAIN_FILE), cfg, cfg.DATA.TRAIN_FILE)


def test_train_batch_layout_and_frame_mapping(data):
    loader = build_train_loader(tiny_cfg(data))
    assert [r.path for r in loader.dataset.records] == [f"frames/v{i}" for i in range(4)]
    batches = list(loader)
    assert len(batches) == 2
    seen = []
    for batch in batches:
        b = len(batch["path"])
        assert batch["imgs"].shape == (b, 2, 4, 3, 3, 32, 32) and batch["imgs"].dtype == torch.uint8
        assert batch["frame_inds"].shape == (b, 4, 3) and batch["frame_inds"].dtype == torch.long
        assert batch["pa_labels"].shape == (b, 4) and not batch["pa_labels"].any()
        assert not batch["srd_applied"].any()
        for i in range(b):
            vid = int(batch["vid"][i])
            assert batch["path"][i] == f"frames/v{vid}"
            assert int(batch["label"][i]) == vid % 2
            # view 1's pixels are exactly the frames named in frame_inds
            assert np.array_equal(decoded_indices(batch["imgs"][i, 0]), batch["frame_inds"][i].numpy())
            seen.append(vid)
    assert sorted(seen) == [0, 1, 2, 3]


def test_view2_built_only_when_training_uses_it(data):
    batch = next(iter(build_train_loader(tiny_cfg(data, **{"TRAIN.USE_VIEW2": False}))))
    assert batch["imgs"].shape[1] == 1
    batch = next(iter(build_train_loader(tiny_cfg(data, **{"DATA.NUM_VIEWS": 1}))))
    assert batch["imgs"].shape[1] == 1


def test_both_views_show_the_same_frames(data, monkeypatch):
    dataset = _train_dataset(data)
    # view 2 without its pixel ops keeps the flat colours: its frames must be view 1's
    view2 = dataset.views[1]
    monkeypatch.setattr(view2, "pixel_ops", lambda clip: clip)
    item = dataset[(1, 3)]
    assert np.array_equal(decoded_indices(item["imgs"][0]), decoded_indices(item["imgs"][1]))
    assert np.array_equal(decoded_indices(item["imgs"][1]), item["frame_inds"].numpy())


def test_view2_is_consistent_within_each_clip(tmp_path):
    # every frame of a video identical (textured): any per-frame randomness would show
    frame = torch.randint(0, 256, (3, 32, 40), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    folder = tmp_path / "frames" / "same"
    folder.mkdir(parents=True)
    from torchvision.io import encode_jpeg

    data = encode_jpeg(frame, quality=95).numpy().tobytes()
    for i in range(30):
        (folder / f"img_{i:08}.jpg").write_bytes(data)
    (tmp_path / "train.txt").write_text("frames/same 0 30 0\n")
    dataset = _train_dataset(tmp_path, **{"AUG.COLOR_JITTER": 1.0})
    view2 = dataset[0]["imgs"][1]  # [K, T, 3, S, S]
    for clip in view2:
        assert torch.equal(clip, clip[:1].expand_as(clip))
    assert not all(torch.equal(view2[0], view2[k]) for k in range(1, 4))  # clips draw their own


def test_item_seeding_epochs_ranks_and_workers(data):
    cfg = tiny_cfg(data)
    records = parse_list_file(cfg.DATA.TRAIN_FILE)
    dataset = TrainVideoDataset(records, cfg)
    a, again, next_epoch = dataset[(1, 0)], dataset[(1, 0)], dataset[(1, 1)]
    assert torch.equal(a["imgs"], again["imgs"]) and torch.equal(a["frame_inds"], again["frame_inds"])
    assert not torch.equal(a["imgs"][1], next_epoch["imgs"][1])
    assert not torch.equal(a["frame_inds"], next_epoch["frame_inds"])
    other_rank = TrainVideoDataset(records, cfg, rank=1)[(1, 0)]
    assert not torch.equal(a["imgs"][1], other_rank["imgs"][1])

    # building items in the main process leaves the global RNG stream alone
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    dataset[(0, 0)]
    assert torch.equal(torch.rand(4), expected)

    # two workers, persistent, two epochs: each item equals the one built in this process
    # for (video, epoch) -> no worker replays another's stream, epochs differ
    cfg.DATA.NUM_WORKERS = 2
    cfg.DATA.PERSISTENT_WORKERS = True
    loader = build_train_loader(cfg)
    for epoch in (0, 1):
        set_loader_epoch(loader, epoch)
        for batch in loader:
            for i, vid in enumerate(batch["vid"].tolist()):
                ref = dataset[(vid, epoch)]
                assert torch.equal(batch["imgs"][i], ref["imgs"])
                assert torch.equal(batch["frame_inds"][i], ref["frame_inds"])


def test_worker_init_seeds_differ_by_worker_and_epoch():
    sampler = build.EpochKeySampler(build.SeededShuffleSampler(10, seed=1))
    seeds = {}
    with torch.random.fork_rng(devices=[]):
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            for rank in (0, 1):
                for worker in (0, 1):
                    build.WorkerInit(1024, rank, sampler)(worker)
                    seeds[(epoch, rank, worker)] = (torch.initial_seed(), np.random.get_state()[1][0])
    assert len({s for s, _ in seeds.values()}) == 8 and len({n for _, n in seeds.values()}) == 8


def test_train_order_reproducible_per_epoch(data):
    loader = build_train_loader(tiny_cfg(data))
    order = lambda: [k for k in loader.sampler]  # noqa: E731
    set_loader_epoch(loader, 0)
    first = order()
    assert first == order() and all(e == 0 for _, e in first)
    set_loader_epoch(loader, 5)
    assert all(e == 5 for _, e in order())
    orders = set()
    for epoch in range(6):
        set_loader_epoch(loader, epoch)
        orders.add(tuple(i for i, _ in order()))
    assert len(orders) > 1


@pytest.mark.parametrize("builder", ["test", "train_as_test"])
def test_segment_loader_maps_segments_to_frames(data, builder):
    cfg = tiny_cfg(data)
    loader = build_test_loader(cfg) if builder == "test" else build_train_as_test_loader(cfg)
    records = loader.dataset.records
    covered = {r.path: [] for r in records}
    for batch in loader:
        b = len(batch["path"])
        assert batch["imgs"].shape == (b, 3, 3, 32, 32)
        assert batch["frame_inds"].shape == (b, 3)
        for i in range(b):
            start, length = int(batch["seg_start"][i]), int(batch["seg_len"][i])
            inds = batch["frame_inds"][i].numpy()
            assert np.array_equal(decoded_indices(batch["imgs"][i]), inds)
            assert start <= inds.min() and inds.max() < start + length
            covered[batch["path"][i]].append((start, length))
    for record in records:  # in order, one per segment, covering the video
        expected = [(s.start, s.length) for s in video_segments(record.num_frames, 3, 2)]
        assert covered[record.path] == expected
    # deterministic
    first = next(iter(loader))
    assert torch.equal(first["imgs"], next(iter(loader))["imgs"])


def test_test_loader_three_crops(data):
    loader = build_test_loader(tiny_cfg(data, **{"TEST.NUM_CROP": 3}))
    batch = next(iter(loader))
    assert batch["imgs"].shape == (3, 3, 3, 3, 32, 32)


def test_train_list_start_column_and_one_based_folder(tmp_path):
    write_video(tmp_path / "frames" / "v", 20, first=1)  # files img_00000001 .. img_00000020
    (tmp_path / "train.txt").write_text("frames/v 4 16 0\n")  # frames 4..15 of the video
    cfg = tiny_cfg(tmp_path)
    item = TrainVideoDataset(parse_list_file(cfg.DATA.TRAIN_FILE), cfg)[0]
    assert np.array_equal(decoded_indices(item["imgs"][0]), item["frame_inds"].numpy() + 4)


def test_srd_runs_on_normal_videos_inside_every_view(data, monkeypatch):
    from datasets import srd

    seeds = []
    real_item_srd = srd.ItemSRD

    def spy(num_clips, num_frames, generator, **options):
        seeds.append(generator.initial_seed())
        return real_item_srd(num_clips, num_frames, generator, **options)

    monkeypatch.setattr(srd, "ItemSRD", spy)
    dataset = _train_dataset(data, **{"ADV_TRAIN.PSEUDO_ANOMALY": True, "ADV_TRAIN.SRD_PROB": 1.0})
    plain = _train_dataset(data)
    normal, anomalous = dataset[(0, 0)], dataset[(1, 0)]
    assert len(seeds) == 1  # only the normal video
    labels = normal["pa_labels"]
    assert labels.any() and bool(normal["srd_applied"])
    assert not anomalous["pa_labels"].any() and not bool(anomalous["srd_applied"])
    assert torch.equal(anomalous["imgs"], plain[(1, 0)]["imgs"])
    # clips off the run are exactly the item without SRD, in both views
    reference = plain[(0, 0)]["imgs"]
    off = labels == 0
    assert torch.equal(normal["imgs"][:, off], reference[:, off])
    assert not torch.equal(normal["imgs"][:, ~off], reference[:, ~off])
    dataset[(0, 0)], dataset[(0, 1)], dataset[(2, 0)]
    assert seeds[0] == seeds[1] and len(set(seeds[1:])) == 3  # seeded by (epoch, video)


def test_real_srd_marks_normal_videos(data):
    pytest.importorskip("datasets.srd")
    dataset = _train_dataset(data, **{"ADV_TRAIN.PSEUDO_ANOMALY": True, "ADV_TRAIN.SRD_PROB": 1.0})
    item = dataset[(0, 0)]
    assert bool(item["srd_applied"]) and item["pa_labels"].any()
    assert not dataset[(1, 0)]["pa_labels"].any()


# ---- bad inputs ---------------------------------------------------------------------------

def test_video_shorter_than_one_clip_names_list_line(data):
    (data / "train.txt").write_text("frames/v0 0 24 0\nframes/v1 0 2 1\n")
    with pytest.raises(DataError, match=r"train.txt:2: video frames/v1 has 2 frames, fewer than one clip"):
        build_train_loader(tiny_cfg(data))


def test_missing_video_folder_names_list_line(data):
    (data / "test.txt").write_text("frames/v0 24 0 0 24\nframes/gone 30 1 5 9\n")
    with pytest.raises(DataError, match=r"test.txt:2.*frames/gone"):
        build_test_loader(tiny_cfg(data))


def test_path_escaping_root_refused(data):
    (data / "train.txt").write_text("../outside 0 24 0\n")
    with pytest.raises(ListFileError, match="outside DATA.ROOT"):
        build_train_loader(tiny_cfg(data))


def test_list_longer_than_frames_on_disk(data):
    (data / "test.txt").write_text("frames/v0 40 0 0 40\n")
    # found when the loader is built (one stat), not when the item is read
    with pytest.raises(DataError, match=r"test.txt:1: .*v0: the list gives 40 frames but frame img_00000039.jpg"):
        build_test_loader(tiny_cfg(data))


def test_missing_and_corrupt_frames_through_loader(data):
    (data / "frames" / "v2" / "img_00000004.jpg").unlink()
    (data / "frames" / "v3" / "img_00000008.jpg").write_bytes(b"\xff\xd8garbage")
    with pytest.raises(DataError, match=r"v2: 1 of the 20 frames .* missing, the first is frame 4 \(img_00000004.jpg\)"):
        build_test_loader(tiny_cfg(data))
    cfg = tiny_cfg(data, **{"DATA.REPLACE_BAD_FRAMES": True})
    replaced = sum(int(b["replaced_frames"].sum()) for b in build_test_loader(cfg))
    assert replaced == 2  # frame 4 of v2 and frame 8 of v3, each sampled once
    (data / "frames" / "v2" / "img_00000004.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"v3: cannot decode frame 8 \(img_00000008.jpg\)"):
        SegmentDataset(parse_list_file(data / "test.txt"), tiny_cfg(data))[video_segment_index(data, 3, 8)]


def video_segment_index(root, vid, frame):
    dataset = SegmentDataset(parse_list_file(root / "test.txt"), tiny_cfg(root))
    return next(i for i, (v, s) in enumerate(dataset.segments) if v == vid and frame in s.frame_inds)


# ---- two processes, gloo --------------------------------------------------------------------

def _dist_worker(rank, world, init_file, root, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world, timeout=__import__("datetime").timedelta(seconds=60))
    try:
        cfg = tiny_cfg(__import__("pathlib").Path(root))
        train = build_train_loader(cfg)
        set_loader_epoch(train, 1)
        train_vids = [v for b in train for v in b["vid"].tolist()]
        test = build_test_loader(cfg)
        segments = [(b["path"][i], int(b["seg_start"][i])) for b in test for i in range(len(b["path"]))]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump({"train": train_vids, "test": segments}, f)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_gloo_split_covers_dataset_once(data, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ranks")
    torch.multiprocessing.start_processes(
        _dist_worker, args=(2, str(out_dir / "init"), str(data), str(out_dir)), nprocs=2,
        join=True, start_method="spawn")
    ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    train = ranks[0]["train"] + ranks[1]["train"]
    assert sorted(train) == [0, 1, 2, 3] and len(ranks[0]["train"]) == 2  # 4 videos, once each
    test = [tuple(seg) for r in range(2) for seg in ranks[r]["test"]]
    cfg = tiny_cfg(data)
    expected = sorted((r.path, s.start) for r in parse_list_file(cfg.DATA.VAL_FILE)
                      for s in video_segments(r.num_frames, 3, 2))
    assert sorted(test) == expected and len(set(test)) == len(test)  # every segment once


def test_helpers_encode_frame_index_in_colour():
    # what the mapping tests above rely on: a frame's index survives JPEG and the float step
    frame = torch.tensor(frame_colour(7), dtype=torch.uint8).view(3, 1, 1).expand(1, 3, 4, 4)
    assert decoded_indices(to_unit_float(frame.clone()))[0] == 7
    assert video_dataset.split_key((3, 2)) == (3, 2) and video_dataset.split_key(4) == (4, 0)


def test_overlapping_clips_equal_the_views_of_each_clips_own_frames(tmp_path):
    # a video shorter than the clips' span: clips share frames, which the item decodes and
    # resizes once; every clip must still equal the views applied to its own frames
    gen = torch.Generator().manual_seed(1)
    folder = tmp_path / "frames" / "short"
    folder.mkdir(parents=True)
    from torchvision.io import encode_jpeg

    for i in range(14):
        frame = torch.randint(0, 256, (3, 36, 44), generator=gen, dtype=torch.uint8)
        (folder / f"img_{i:08}.jpg").write_bytes(encode_jpeg(frame, quality=95).numpy().tobytes())
    (tmp_path / "train.txt").write_text("frames/short 0 14 0\n")
    dataset = _train_dataset(tmp_path, **{"DATA.NUM_CLIPS": 6, "DATA.FRAME_INTERVAL": 2})
    item = dataset[(0, 2)]
    inds = item["frame_inds"]
    assert len(set(inds.reshape(-1).tolist())) < inds.numel()  # the clips do overlap
    reader = dataset.reader(0)
    with video_dataset.seeded_global_rngs(dataset.item_seed(0, 2, video_dataset._TAG_AUGMENT)):
        for c, clip_inds in enumerate(inds):
            frames = reader.read(clip_inds)
            assert torch.equal(item["imgs"][0, c], dataset.views[0].apply_uint8(frames))
            assert torch.equal(item["imgs"][1, c], dataset.views[1].apply_uint8(frames))


def test_read_unique_decodes_each_frame_once(data, monkeypatch):
    dataset = _train_dataset(data)
    reader = dataset.reader(0)
    decoded = []
    original = reader._decode_batch
    monkeypatch.setattr(reader, "_decode_batch", lambda inds: decoded.extend(inds) or original(inds))
    indices = [5, 2, 5, 9, 2, 2]
    frames, inverse = reader.read_unique(indices)
    assert sorted(decoded) == [2, 5, 9] and len(frames) == 3
    gathered = torch.stack([frames[k] for k in inverse.tolist()])
    assert torch.equal(gathered, reader.read(indices))
    assert decoded_indices(gathered).tolist() == indices


def test_model_input_converts_uint8_on_the_device_and_passes_float_through():
    from datasets.transforms import model_input

    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    converted = model_input(pixels, torch.device("cpu"))
    assert converted.dtype == torch.float32
    assert torch.equal(converted, to_unit_float(pixels)) and converted.max() == 1.0 and converted.min() == 0.0
    floats = torch.rand(2, 3)
    assert model_input(floats, torch.device("cpu")) is floats


def test_interleaved_clips_of_distinct_frames_keep_their_order(data, monkeypatch):
    # clips whose frames are all distinct but interleave in time (clip 1 starts before clip
    # 0 ends): the crops must follow the sampled order, not the sorted distinct frames
    dataset = _train_dataset(data)
    k, t = dataset.num_clips, dataset.num_frames
    inds = np.array([[0, 4, 8], [2, 6, 10], [12, 14, 16], [13, 15, 17]])[:k, :t]
    monkeypatch.setattr(video_dataset, "train_clip_indices", lambda *args, **kwargs: inds)
    item = dataset[(0, 0)]
    assert np.array_equal(decoded_indices(item["imgs"][0]), inds)
