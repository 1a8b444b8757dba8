"""The embedded synthetic dataset: determinism, list files, visible events, safe writing."""
import json

import numpy as np
import pytest
from PIL import Image

from datasets import synthetic
from datasets.lists import frame_labels, parse_list_file, read_label_csv
from utils.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "small"
    paths = synthetic.make_synthetic_dataset(root, preset="small", seed=0)
    return paths, json.loads(paths["meta"].read_text())


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _frames(root, rel_dir, num_frames):
    return np.stack([np.asarray(Image.open(root / rel_dir / synthetic.FILENAME_TMPL.format(t)))
                     for t in range(num_frames)])


def test_same_seed_gives_identical_bytes_and_other_seed_differs(small, tmp_path):
    paths, _ = small
    again = synthetic.make_synthetic_dataset(tmp_path / "again", preset="small", seed=0)
    first, second = _files(paths["root"]), _files(again["root"])
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = _files(synthetic.make_synthetic_dataset(tmp_path / "other", preset="small", seed=1)["root"])
    assert other["train.txt"] != first["train.txt"] or other["test.txt"] != first["test.txt"]


def test_lists_parse_and_agree_with_meta_and_disk(small):
    paths, meta = small
    root = paths["root"]
    assert read_label_csv(paths["labels"]) == ["normal", "abnormal"]
    train, test = parse_list_file(paths["train_list"]), parse_list_file(paths["test_list"])
    preset = synthetic.DATASET_PRESETS["small"]
    assert (len(train), len(test)) == (preset.num_train, preset.num_test)
    assert meta["counts"]["train"]["videos"] == len(train) and meta["counts"]["test"]["videos"] == len(test)
    for records in (train, test):
        labels = [r.label for r in records]
        assert 0 < sum(labels) < len(labels) and set(labels) == {0, 1}
        for rec in records:
            info = meta["videos"][rec.path]
            assert info["label"] == rec.label and info["num_frames"] == rec.num_frames
            assert (info["anomaly"] is not None) == (rec.label == 1)
            assert preset.min_frames <= rec.num_frames <= preset.max_frames
            names = sorted(p.name for p in (root / rec.path).iterdir())
            assert names == [synthetic.FILENAME_TMPL.format(t) for t in range(rec.num_frames)]
            if info["anomaly"] is not None:
                start, end = info["interval"]
                assert 0 < start < end <= rec.num_frames
                assert preset.min_cover - 0.05 <= (end - start) / rec.num_frames <= preset.max_cover + 0.05
    for rec in test:
        info = meta["videos"][rec.path]
        if rec.label:
            assert rec.intervals == [tuple(info["interval"])]
            assert frame_labels(rec).sum() == info["interval"][1] - info["interval"][0]
        else:
            assert rec.intervals == [(0, rec.num_frames)] and frame_labels(rec).sum() == 0
    frame = Image.open(root / test[0].path / synthetic.FILENAME_TMPL.format(0))
    assert frame.format == "JPEG" and frame.mode == "RGB" and frame.size == (64, 64)
    assert meta["counts"]["train"]["anomalous"] == sum(r.label for r in train)


def test_every_anomaly_type_and_scene_is_used(small):
    _, meta = small
    kinds = {v["anomaly"] for v in meta["videos"].values() if v["split"] == "train"}
    assert set(synthetic.ANOMALY_TYPES) <= kinds
    assert {v["scene"] for v in meta["videos"].values()} == set(meta["scenes"])


def test_events_are_visible_inside_their_interval_only(small):
    """Against the video's own background (temporal median), interval frames change more pixels."""
    paths, meta = small
    checked = 0
    for rel_dir, info in meta["videos"].items():
        if info["anomaly"] is None:
            continue
        frames = _frames(paths["root"], rel_dir, info["num_frames"]).astype(np.int16)
        background = np.median(frames, axis=0)
        changed = (np.abs(frames - background).max(-1) > 40).sum((1, 2))
        start, end = info["interval"]
        inside = np.r_[start:end]
        outside = np.setdiff1d(np.arange(info["num_frames"]), inside)
        assert changed[inside].mean() > changed[outside].mean() + 10, (rel_dir, info["anomaly"])
        checked += 1
    assert checked == meta["counts"]["train"]["anomalous"] + meta["counts"]["test"]["anomalous"]


@pytest.mark.parametrize("kind", synthetic.ANOMALY_TYPES)
@pytest.mark.parametrize("scene", range(synthetic.NUM_SCENES))
def test_event_is_the_only_difference_and_fully_visible(kind, scene):
    """Same video without its event: identical outside the interval, clearly different in every interval frame."""
    spec = synthetic.VideoSpec("test", 3, scene, 40, kind, (6, 30), seed=5)
    with_event = synthetic.render_video(spec).astype(np.int16)
    without = synthetic.render_video(spec, with_event=False).astype(np.int16)
    assert with_event.shape == (40, 64, 64, 3)
    diff = np.abs(with_event - without).max(-1) > 30
    assert not diff[:6].any() and not diff[30:].any()
    assert diff[6:30].sum((1, 2)).min() >= 12
    border = diff[6:30].copy()  # the whole event stays inside the frame: nothing changes on the border
    border[:, 1:-1, 1:-1] = False
    assert not border.any()


def test_existing_same_dataset_is_kept(small):
    paths, _ = small
    marker = paths["root"] / "frames" / "keep.me"
    marker.write_text("x")
    try:
        again = synthetic.make_synthetic_dataset(paths["root"], preset="small", seed=0)
        assert again == paths and marker.exists()
    finally:
        marker.unlink()


def test_refuses_to_overwrite(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "important.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(DataError, match="not empty"):
            synthetic.make_synthetic_dataset(foreign, preset="small", overwrite=overwrite)
    assert (foreign / "important.txt").read_text() == "keep"

    root = tmp_path / "data"
    root.mkdir()  # an empty folder is fine
    synthetic.make_synthetic_dataset(root, preset="small", seed=0)
    with pytest.raises(DataError, match="overwrite"):
        synthetic.make_synthetic_dataset(root, preset="small", seed=1)
    assert json.loads((root / "meta.json").read_text())["seed"] == 0
    synthetic.make_synthetic_dataset(root, preset="small", seed=1, overwrite=True)
    assert json.loads((root / "meta.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "foreign"]  # no staging left over


def test_unknown_preset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="preset"):
        synthetic.make_synthetic_dataset(tmp_path / "x", preset="huge")
    assert not (tmp_path / "x").exists()


def test_cli_writes_dataset_and_montage(tmp_path, capsys):
    out, png = tmp_path / "cli", tmp_path / "montage.png"
    assert synthetic.main(["--out", str(out), "--preset", "small", "--montage", str(png)]) == 0
    assert (out / "meta.json").exists() and "train 12 videos" in capsys.readouterr().out
    image = Image.open(png)
    assert image.format == "PNG" and image.size[0] > 5 * 64
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    assert synthetic.main(["--out", str(tmp_path / "busy"), "--preset", "small"]) == 2


def test_validation_split_is_held_out_of_training_with_true_intervals(small):
    paths, meta = small
    fit = parse_list_file(paths["train_fit_list"], kind="train")
    val = parse_list_file(paths["val_list"], kind="test")
    full = parse_list_file(paths["train_list"], kind="train")
    assert {r.path for r in fit} | {r.path for r in val} == {r.path for r in full}
    assert not {r.path for r in fit} & {r.path for r in val}
    assert {r.label for r in val} == {0, 1}  # both labels held back
    for rec in val:
        info = meta["videos"][rec.path]
        assert info["split"] == "train" and rec.num_frames == info["num_frames"]
        assert rec.label == info["label"]
        if info["interval"]:
            assert rec.intervals == [tuple(info["interval"])]
    assert synthetic.true_intervals(paths["root"])[val[0].path] == (tuple(meta["videos"][val[0].path]["interval"])
                                                                   if meta["videos"][val[0].path]["interval"] else None)


def test_variant_family_differs_and_is_deterministic(tmp_path):
    from datasets.synthetic_variant import VARIANT_ANOMALY_TYPES, VARIANT_FRAME_SIZE

    specs = synthetic.plan_videos("variant_small", seed=0)
    assert {s.family for s in specs} == {"variant"}
    assert {s.anomaly for s in specs if s.anomaly} <= set(VARIANT_ANOMALY_TYPES)
    default = synthetic.plan_videos("small", seed=0)
    assert [s.num_frames for s in specs] != [s.num_frames for s in default]  # its own seed space
    spec = next(s for s in specs if s.anomaly)
    frames = synthetic.render(spec)
    assert frames.shape == (spec.num_frames, VARIANT_FRAME_SIZE, VARIANT_FRAME_SIZE, 3)
    np.testing.assert_array_equal(frames, synthetic.render(spec))
    plain = synthetic.render(spec, with_event=False)
    start, end = spec.interval
    diff = np.abs(frames.astype(int) - plain).reshape(spec.num_frames, -1).max(1)
    assert (diff[start:end] > 40).all() and (diff[:start] == 0).all() and (diff[end:] == 0).all()
    paths = synthetic.make_synthetic_dataset(tmp_path / "v", preset="variant_small", seed=0)
    meta = json.loads(paths["meta"].read_text())
    assert meta["frame_size"] == VARIANT_FRAME_SIZE and meta["anomaly_types"] == list(VARIANT_ANOMALY_TYPES)
    first = next(iter(meta["videos"]))
    assert Image.open(paths["root"] / first / synthetic.FILENAME_TMPL.format(0)).size == (48, 48)
