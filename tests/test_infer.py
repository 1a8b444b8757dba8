"""infer.py / apps.inference on a synthetic anomalous video (written as mp4 and as a frame
folder) with a tiny X-CLIP trained for a few seconds in the test and saved as a FrameShield
checkpoint (weights, state with a score threshold, config, manifest)."""
import csv
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torch import nn

import infer
from apps import inference
from apps import intervals, thresholds
from datasets import video_probe
from tests.cfg_helpers import tiny_synthetic_cfg
from utils.errors import CheckpointError, ConfigError, DataError

NUM_FRAMES, EVENT, MP4_FPS = 96, (36, 72), 25


def make_cfg(paths, **overrides):
    return tiny_synthetic_cfg(paths, **{"DATA.LABEL_LIST": str(paths["labels"]), "ATTACK.EPS": 4.0,
                                        "ATTACK.STEPS": 5, **overrides})


def write_mp4(path, frames, fps):
    """uint8 [N, H, W, 3] -> H.264 mp4 (PyAV)."""
    import av

    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_frames(folder, frames):
    from PIL import Image

    folder.mkdir(parents=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img_{t:08}.jpg", quality=90)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Tiny X-CLIP trained ~4 s on the small synthetic test set (segment cross-entropy); a 96-frame vehicle video as
    ``clip.mp4`` (25 fps) and ``clip_frames/``; the model saved as checkpoints/best.*."""
    from clip import tokenize
    from datasets.build import build_test_loader
    from datasets.synthetic import VideoSpec, make_synthetic_dataset, render_video
    from models import xclip
    from training.checkpoint import save_checkpoint
    from evaluation.scoring import loader_batches

    root = tmp_path_factory.mktemp("infer")
    paths = make_synthetic_dataset(root / "data", preset="small")
    cfg = make_cfg(paths)
    loader = build_test_loader(cfg)
    videos, labels = [], []
    for _, imgs, segment_labels in loader_batches(loader, loader.dataset.records):
        videos.append(imgs)
        labels.append(segment_labels)
    videos, labels = torch.cat(videos), torch.cat(labels)
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2)
    tokens = tokenize(["normal", "abnormal"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    draw = torch.Generator().manual_seed(0)
    weight = torch.tensor([1.0, 3.0])  # ~17% of the segments are anomalous
    for _ in range(40):
        idx = torch.randint(0, len(videos), (16,), generator=draw)
        loss = nn.functional.cross_entropy(model(videos[idx], tokens)["y"], labels[idx], weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()

    spec = VideoSpec("test", 0, 0, NUM_FRAMES, "vehicle", EVENT, 123)
    frames = render_video(spec)
    write_mp4(root / "clip.mp4", frames, MP4_FPS)
    write_frames(root / "clip_frames", frames)
    # a threshold between the lowest and highest segment score of the video, so that the
    # detected intervals are neither empty nor the whole video
    source = video_probe.open_source(root / "clip_frames", cfg.DATA.FILENAME_TMPL)
    scores = inference.score_video(model, tokens, source, cfg, show_progress=False).scores
    threshold = float((scores.min() + scores.max()) / 2)
    run = root / "run"
    weights = save_checkpoint(str(run), "best", model, None, None, 1, 30, 0.9, cfg,
                              extra={"score_threshold": threshold})
    # the folder's line first: clip.mp4 must find its own line, not any line without a suffix
    (root / "ann.txt").write_text(f"clip_frames {NUM_FRAMES} 1 {EVENT[0]} {EVENT[1]}\n"
                                  f"clip.mp4 {NUM_FRAMES} 1 {EVENT[0] + 4} {EVENT[1]}\n")
    return SimpleNamespace(root=root, paths=paths, cfg=cfg, model=model, tokens=tokens, frames=frames,
                           weights=weights, threshold=threshold)


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- the command
def test_command_on_mp4_and_frame_folder(demo, tmp_path):
    out = tmp_path / "out"
    code = infer.main(["--pretrained", demo.weights, str(demo.root / "clip.mp4"), str(demo.root / "clip_frames"),
                       "--output", str(out), "--annotation", str(demo.root / "ann.txt"), "--attack", "--render",
                       "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(v["video"]).name for v in summary["videos"]] == ["clip.mp4", "clip_frames"]
    assert summary["threshold"] == pytest.approx(demo.threshold) and summary["failed"] == []
    assert (out / "config.yaml").is_file() and (out / "log_rank0.txt").is_file()
    for name, fps, fps_source, start in (("clip_mp4", MP4_FPS, "decord", EVENT[0] + 4),
                                         ("clip_frames", 30.0, "default", EVENT[0])):
        truth = np.zeros(NUM_FRAMES, np.uint8)
        truth[start:EVENT[1]] = 1
        folder = out / name
        for file in ("scores.csv", "scores.json", "scores.png", "annotated.mp4"):
            assert (folder / file).stat().st_size > 0, (name, file)
        result = json.loads((folder / "scores.json").read_text())
        rows = read_csv(folder / "scores.csv")
        # frame count and times
        assert result["num_frames"] == NUM_FRAMES and len(rows) == NUM_FRAMES
        assert result["fps"] == pytest.approx(fps) and result["fps_source"] == fps_source
        assert [int(r["frame"]) for r in rows] == list(range(NUM_FRAMES))
        np.testing.assert_allclose([float(r["time_s"]) for r in rows], np.arange(NUM_FRAMES) / fps, atol=1e-6)
        scores = np.array(result["frames"]["score"], dtype=np.float32)
        np.testing.assert_array_equal(np.array([float(r["score"]) for r in rows], dtype=np.float32), scores)
        # the evaluation's mapping of segment scores to frames
        np.testing.assert_array_equal(
            scores, intervals.frame_scores(result["segments"]["score"], NUM_FRAMES, smooth=False))
        # intervals: exactly the runs of frames scoring above the threshold
        above = np.zeros(NUM_FRAMES, bool)
        for interval in result["intervals"]:
            assert interval["end_s"] == pytest.approx(interval["end_frame"] / fps, abs=1e-6)
            above[interval["start_frame"]:interval["end_frame"]] = True
        assert result["intervals"], "the fixture's threshold lies inside the score range"
        np.testing.assert_array_equal(above, scores > result["threshold"])
        # ground truth and AUC
        assert result["annotation"]["intervals"] == [[start, EVENT[1]]]
        assert result["auc"] == pytest.approx(roc_auc_score(truth, scores))
        # the attack: within eps of the clean input, lowers the anomalous frames' scores
        attack = result["attack"]
        # the published stage-3 attack, not the checkpoint config's (ATTACK.EPS 4, STEPS 5)
        assert attack["eps_255"] == pytest.approx(demo.cfg.ADV_TRAIN.EPS) and attack["steps"] == 10
        assert 0 < attack["max_linf_255"] <= attack["eps_255"] + 1e-3
        attacked = np.array(result["frames"]["attacked_score"])
        assert attacked[truth == 1].mean() < scores[truth == 1].mean() - 0.01
        # the annotated video: decodable, frames scaled up, red border where the score is high
        import decord

        video = decord.VideoReader(str(folder / "annotated.mp4"))
        assert len(video) == NUM_FRAMES and video[0].shape == (256, 256, 3)
        picked = [int(np.argmax(scores)), int(np.argmin(scores))]
        top_middle = video.get_batch(picked).asnumpy()[:, 2, 128].astype(int)
        red = (top_middle[:, 0] > 150) & (top_middle[:, 1] < 100)
        np.testing.assert_array_equal(red, scores[picked] > result["threshold"])
        check_annotated_frame(video, result, scores, fps)
    log = (out / "log_rank0.txt").read_text()
    assert "the published stage-3 attack" in log and "ATTACK.STEPS 5 -> 10" in log and "ATTACK.EPS 4.0 -> -1.0" in log


def check_annotated_frame(video, result, scores, fps):
    """A decoded frame of annotated.mp4 shows its score and time as text and the threshold tick."""
    from apps.render import text_mask

    k = int(np.argmin(scores))  # a low score: the case where the bar alone showed nothing
    frame = video[k - result["render"]["start_frame"]].asnumpy().astype(int)
    h, w = frame.shape[:2]
    scale, border, bar = max(1, h // 60), max(2, min(h, w) // 40), max(4, h // 16)
    ink = text_mask(f"{scores[k]:.4f} {k / fps:.1f}s", scale)
    top = left = border + 2 * scale
    box = frame[top:top + ink.shape[0], left:left + ink.shape[1]].mean(axis=2)
    assert box[ink].mean() > 180 and box[~ink].mean() < 90, (box[ink].mean(), box[~ink].mean())
    # the threshold tick: white, rising above the dark bar, with dark edges
    tick = min(w - scale // 2 - 2, max(scale // 2 + 2, int(round(result["threshold"] * w))))
    column = frame[h - bar - bar // 2:h - 2, tick].mean(axis=1)
    assert column.min() > 180, column
    assert frame[h - bar // 2, max(0, tick - scale)].mean() < 80


def test_stored_threshold_default_and_smoothing(demo, tmp_path):
    # weights only (no state file): the stated default, with a warning
    bare = tmp_path / "bare.safetensors"
    shutil.copy(demo.weights, bare)
    cfg_file = Path(demo.weights).with_suffix("").with_suffix(".yaml")
    out = tmp_path / "out"
    code = infer.main(["--pretrained", str(bare), "-cfg", str(cfg_file), str(demo.root / "clip_frames"),
                       "--output", str(out), "--smooth", "--fps", "12", "--intervals", "36-72", "--no-progress"])
    assert code == 0
    assert "WARNING the checkpoint has no stored score threshold" in (out / "log_rank0.txt").read_text()
    result = json.loads((out / "clip_frames" / "scores.json").read_text())
    assert result["threshold"] == thresholds.DEFAULT_THRESHOLD and "default" in result["threshold_source"]
    assert result["fps"] == 12 and result["fps_source"] == "--fps" and result["smooth"] is True
    expected = intervals.frame_scores(result["segments"]["score"], NUM_FRAMES, smooth=True)
    np.testing.assert_array_equal(np.array(result["frames"]["score"], np.float32), expected)
    assert len(np.unique(expected)) <= 32  # 32 windows of 3 frames
    assert result["annotation"]["intervals"] == [[36, 72]]
    assert thresholds.read_stored_threshold(demo.weights)[0] == pytest.approx(demo.threshold)
    # a 'last' checkpoint carries the training state's threshold dict instead
    from training.checkpoint import save_checkpoint

    last = save_checkpoint(str(tmp_path / "run"), "last", demo.model, None, None, 2, 60, 0.9, demo.cfg,
                           extra={"threshold": {"f1": 0.25, "youden": 0.5}})
    value, source, origin = thresholds.resolve_threshold(None, last)
    assert (value, origin) == (0.25, "checkpoint") and "extra.threshold.f1" in source
    assert thresholds.resolve_threshold(0.7, last)[::2] == (0.7, "flag")


# ----------------------------------------------------------------------------- streaming
class RecordingReader:
    """Wraps a frame reader and records how many frames each call decodes."""

    def __init__(self, reader):
        self.reader, self.calls = reader, []

    def read(self, indices):
        self.calls.append(len(indices))
        return self.reader.read(indices)


def test_chunked_streaming_equals_whole_video_and_the_evaluation(demo, tmp_path):
    from datasets.build import build_test_loader
    from datasets.sampling import video_segments
    from datasets.transforms import build_test_view
    from training.engine import evaluate

    cfg = demo.cfg
    source = video_probe.open_source(demo.root / "clip_frames", cfg.DATA.FILENAME_TMPL)
    # whole video in memory, every frame decoded at once
    everything = source.reader.read(list(range(NUM_FRAMES)))
    segments = video_segments(NUM_FRAMES, cfg.DATA.NUM_FRAMES, cfg.DATA.FRAME_INTERVAL)
    view = build_test_view(cfg)
    clips = torch.stack([view(everything[list(s.frame_inds)]) for s in segments])
    whole = inference.clip_probabilities(demo.model, clips, demo.tokens, 64).numpy()
    for chunk_frames in (1, 20, 10**6):
        source.reader = RecordingReader(source.reader)
        streamed = inference.score_video(demo.model, demo.tokens, source, cfg, chunk_frames, show_progress=False)
        np.testing.assert_allclose(streamed.scores, whole, atol=1e-6)
        seg_len = cfg.DATA.NUM_FRAMES * cfg.DATA.FRAME_INTERVAL
        most = cfg.DATA.NUM_FRAMES * max(1, min(chunk_frames, NUM_FRAMES) // seg_len)
        assert max(source.reader.calls) == most  # only the sampled frames of one chunk
        source.reader = source.reader.reader
    # the evaluation's loader scores the same segments the same way (one view or three crops)
    import logging

    (tmp_path / "list.txt").write_text(f"clip_frames {NUM_FRAMES} 1 {EVENT[0]} {EVENT[1]}\n")
    for crops in (1, 3):
        eval_cfg = make_cfg(demo.paths, **{"DATA.ROOT": str(demo.root), "TEST.NUM_CROP": crops})
        loader = build_test_loader(eval_cfg, list_file=str(tmp_path / "list.txt"))
        result = evaluate(demo.model, loader, demo.tokens, eval_cfg, logging.getLogger("FrameShield.test"))
        evaluated = result["videos"]["clip_frames"]
        np.testing.assert_array_equal(evaluated["starts"], [s.start for s in segments])
        streamed = inference.score_video(demo.model, demo.tokens, source, eval_cfg, 20, show_progress=False)
        np.testing.assert_allclose(streamed.scores, evaluated["scores"], atol=1e-6)
        if crops == 1:
            np.testing.assert_allclose(evaluated["scores"], whole, atol=1e-6)


def test_attack_stays_within_eps_and_lowers_scores(demo):
    from datasets.transforms import build_test_view

    view = build_test_view(demo.cfg)
    frames = torch.from_numpy(demo.frames[EVENT[0]:EVENT[0] + 16]).permute(0, 3, 1, 2)
    clips = torch.stack([view(frames[i:i + 2]) for i in range(0, 16, 2)])  # [8, 2, 3, 64, 64]
    eps = 4 / 255
    settings = {"eps": eps, "steps": 5, "step_size": None, "random_start": False, "restarts": 1}
    adv = inference.attack_clips(demo.model, clips, demo.tokens, settings, batch_size=3)
    assert adv.shape == clips.shape
    assert (adv - clips).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    clean = inference.clip_probabilities(demo.model, clips, demo.tokens, 64)
    attacked = inference.clip_probabilities(demo.model, adv, demo.tokens, 64)
    assert (attacked <= clean + 1e-6).all() and attacked.mean() < clean.mean()


# ----------------------------------------------------------------------------- intervals
def test_detect_intervals_merges_and_drops():
    scores = np.zeros(40, np.float32)
    scores[2:5] = 0.9   # 3 frames
    scores[7:17] = 0.8  # 10 frames, 2 frames after the first run
    scores[30:31] = 0.7  # 1 frame
    found = intervals.detect_intervals(scores, 0.5, fps=10)
    assert [(i["start_frame"], i["end_frame"]) for i in found] == [(2, 5), (7, 17), (30, 31)]
    assert found[0]["start_s"] == 0.2 and found[0]["end_s"] == 0.5 and found[1]["peak_score"] == pytest.approx(0.8)
    merged = intervals.detect_intervals(scores, 0.5, fps=10, merge_gap=0.2)
    assert [(i["start_frame"], i["end_frame"]) for i in merged] == [(2, 17), (30, 31)]
    kept = intervals.detect_intervals(scores, 0.5, fps=10, merge_gap=0.2, min_duration=0.5)
    assert [(i["start_frame"], i["end_frame"]) for i in kept] == [(2, 17)]
    assert intervals.detect_intervals(scores, 0.9, fps=10) == []  # strictly above
    with pytest.raises(ConfigError):
        intervals.detect_intervals(scores, 0.5, fps=10, min_duration=-1)


def test_interval_text():
    labels = intervals.parse_interval_text("2-4, 6-8", 10)
    assert labels.tolist() == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0]
    for bad in ("4-2", "1-11", "a-b", "3"):
        with pytest.raises(ConfigError, match="--intervals"):
            intervals.parse_interval_text(bad, 10)


# ----------------------------------------------------------------------------- bad input
def test_unreadable_and_empty_videos(demo, tmp_path):
    tmpl = demo.cfg.DATA.FILENAME_TMPL
    with pytest.raises(DataError, match="no such file"):
        video_probe.open_source(tmp_path / "missing.mp4", tmpl)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        video_probe.open_source(tmp_path / "empty.mp4", tmpl)
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match="cannot read"):
        video_probe.open_source(tmp_path / "junk.mp4", tmpl)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a frame folder"):
        video_probe.open_source(tmp_path / "notes.txt", tmpl)
    (tmp_path / "no_frames").mkdir()
    with pytest.raises(DataError, match="zero frames"):
        video_probe.open_source(tmp_path / "no_frames", tmpl)
    one = tmp_path / "one_frame"
    write_frames(one, demo.frames[:1])
    source = video_probe.open_source(one, tmpl)
    assert source.num_frames == 1
    with pytest.raises(DataError, match="too short"):
        inference.score_video(demo.model, demo.tokens, source, demo.cfg, show_progress=False)


def test_command_errors(demo, tmp_path):
    good = str(demo.root / "clip_frames")
    # one bad video among good ones: the others are scored, the exit code says it failed
    out = tmp_path / "out"
    (tmp_path / "junk.avi").write_bytes(b"\0" * 64)
    assert infer.main(["--pretrained", demo.weights, str(tmp_path / "junk.avi"), good,
                       "--output", str(out), "--no-progress"]) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert [Path(v["video"]).name for v in summary["videos"]] == ["clip_frames"]
    assert Path(summary["failed"][0]["video"]).name == "junk.avi" and "junk.avi" in summary["failed"][0]["error"]
    # a checkpoint without a config beside it needs -cfg
    bare = tmp_path / "bare.safetensors"
    shutil.copy(demo.weights, bare)
    with pytest.raises(ConfigError, match="-cfg"):
        infer.main(["--pretrained", str(bare), good, "--output", str(tmp_path / "o2")])
    with pytest.raises(CheckpointError, match="does not exist"):
        inference.load_model(demo.cfg, str(tmp_path / "none.safetensors"), "cpu")
    # a --pretrained that is not there is said so (not "no config file beside the checkpoint")
    with pytest.raises(CheckpointError, match=r"--pretrained .*none\.safetensors does not exist"):
        infer.main(["--pretrained", str(tmp_path / "none.safetensors"), good, "--output", str(tmp_path / "o7")])
    with pytest.raises(ConfigError, match="one video"):
        infer.main(["--pretrained", demo.weights, good, good, "--intervals", "1-4", "--output", str(tmp_path / "o3")])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            infer.main(["--pretrained", demo.weights, good, "--device", "cuda", "--output", str(tmp_path / "o5")])
    for flag, value in (("--chunk-frames", "0"), ("--min-duration", "-1"), ("--merge-gap", "-0.5"),
                        ("--render-seconds", "0"), ("--fps", "0")):
        with pytest.raises(ConfigError, match=flag):
            infer.main(["--pretrained", demo.weights, good, flag, value, "--output", str(tmp_path / "o6")])
        assert not (tmp_path / "o6" / "summary.json").exists()
    with pytest.raises(ConfigError, match="threshold"):
        infer.main(["--pretrained", demo.weights, good, "--threshold", "2", "--output", str(tmp_path / "o4")])


def test_annotation_lookup(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("frames/a 10 1 2 4\nframes/clip 12 1 5 8\nclip.mp4 10 1 1 3\n")
    exact = intervals.annotation_labels(listing, tmp_path / "clip.mp4", 10)
    assert exact.tolist() == [0, 1, 1] + [0] * 7
    by_stem = intervals.annotation_labels(listing, tmp_path / "a.avi", 10)
    assert by_stem.tolist() == [0, 0, 1, 1] + [0] * 6
    # the list says 12 frames, the video has 10: cut (and padded the other way), with a warning
    cut = intervals.annotation_labels(listing, tmp_path / "clip", 10)
    assert cut.tolist() == [0] * 5 + [1] * 3 + [0] * 2
    assert intervals.annotation_labels(listing, tmp_path / "other.mp4", 10) is None


def test_runner_script(demo, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHON": sys.executable, "PRETRAINED": demo.weights, "OUTPUT": str(tmp_path / "out")}
    usage = subprocess.run(["bash", str(repo / "runners" / "infer.sh")], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "usage" in usage.stderr
    done = subprocess.run(["bash", str(repo / "runners" / "infer.sh"), str(demo.root / "clip_frames"), "--no-progress",
                           "--threshold", "0.3"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "clip_frames: 96 frames" in done.stdout
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["threshold"] == 0.3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1, width=32), min_size=1, max_size=60), st.floats(0, 1),
       st.sampled_from([0.0, 0.1, 0.3]), st.sampled_from([0.0, 0.2, 0.5]))
def test_intervals_properties(scores, threshold, merge_gap, min_duration):
    scores = np.array(scores, np.float32)
    found = intervals.detect_intervals(scores, threshold, fps=10, min_duration=min_duration, merge_gap=merge_gap)
    above = scores > threshold
    covered = np.zeros(len(scores), bool)
    previous_end = None
    for interval in found:
        start, end = interval["start_frame"], interval["end_frame"]
        assert start < end and above[start] and above[end - 1]  # starts and ends on frames above
        assert (end - start) / 10 >= min_duration - 1e-9
        if previous_end is not None:
            assert (start - previous_end) / 10 > merge_gap  # farther apart than the merge gap
        previous_end = end
        covered[start:end] = True
    if merge_gap == 0 and min_duration == 0:
        np.testing.assert_array_equal(covered, above)
    else:
        assert not (covered & ~above).any() or merge_gap > 0  # only merging covers frames below
        assert not (above & ~covered).any() or min_duration > 0  # only the minimum drops frames above


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(1, 4), st.integers(1, 5), st.integers(1, 100))
def test_chunks_cover_the_segments_in_order(num_frames, clip_len, interval, chunk_frames):
    from datasets.sampling import video_segments

    segments = video_segments(num_frames, clip_len, interval)
    groups = list(inference.segment_chunks(segments, chunk_frames))
    assert [s for g in groups for s in g] == segments
    for group in groups:
        assert len(group) == 1 or sum(s.length for s in group) <= chunk_frames


def test_extreme_stored_threshold_warns(demo, tmp_path):
    """A weak model's stored threshold (0.0023) flags the whole video: both are warned about."""
    from training.checkpoint import save_checkpoint

    weights = save_checkpoint(str(tmp_path / "weak"), "best", demo.model, None, None, 1, 3, 0.5, demo.cfg,
                              extra={"score_threshold": 0.0023})
    out = tmp_path / "out"
    assert infer.main(["--pretrained", weights, str(demo.root / "clip_frames"), "--output", str(out),
                       "--no-progress"]) == 0
    log = (out / "log_rank0.txt").read_text()
    assert "stored score threshold 0.0023" in log and "is below 0.05" in log and "--threshold" in log
    assert "100% of the frames score above the threshold 0.0023" in log
    assert json.loads((out / "clip_frames" / "scores.json").read_text())["flagged_fraction"] == 1.0


def test_attack_settings_follow_opts_and_cfg(demo, tmp_path):
    good = str(demo.root / "clip_frames")
    out = tmp_path / "opts"
    assert infer.main(["--pretrained", demo.weights, good, "--output", str(out), "--attack", "--no-progress",
                       "--opts", "ATTACK.STEPS", "2"]) == 0
    attack = json.loads((out / "clip_frames" / "scores.json").read_text())["attack"]
    assert attack["steps"] == 2 and attack["eps_255"] == pytest.approx(demo.cfg.ADV_TRAIN.EPS)
    cfg_file = Path(demo.weights).with_suffix("").with_suffix(".yaml")
    out = tmp_path / "cfg"
    assert infer.main(["--pretrained", demo.weights, "-cfg", str(cfg_file), good, "--output", str(out), "--attack",
                       "--no-progress"]) == 0
    attack = json.loads((out / "clip_frames" / "scores.json").read_text())["attack"]
    assert (attack["steps"], attack["eps_255"]) == (5, pytest.approx(4.0))  # -cfg: its ATTACK.* as written
    assert "published stage-3" not in (out / "log_rank0.txt").read_text()
