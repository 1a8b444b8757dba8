"""The shared loops of training.engine on a toy video model (fast, CPU).

The toy model maps a clip [T, 3, H, W] to two logits through its mean colour, so every
loss, gradient and attack can be recomputed by hand here.
"""
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from evaluation import scoring
from evaluation.metrics import choose_threshold
from training import engine, steps
from utils.config import get_default_config
from utils.errors import ConfigError, TrainingError
from training.losses import advtrain_loss, promptmil_loss
from training.pseudo_labels import VideoPseudoLabels
from tests.cfg_helpers import apply_overrides

T, HW, K = 2, 4, 3


class ToyVideoModel(nn.Module):
    """logits [N, 2] = Linear(mean colour of the clip) (ignores the text tokens)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.head = nn.Linear(3, 2)

    def forward(self, video, text_tokens):
        return {"y": self.head(video.mean(dim=(1, 3, 4)))}


class ListLoader(list):
    """A list of batches that looks like a DataLoader to the engine (len, .dataset.records)."""

    def __init__(self, batches, records=()):
        super().__init__(batches)
        self.dataset = SimpleNamespace(records=list(records))


def make_cfg(**changes):
    cfg = get_default_config()
    cfg.TRAIN.ACCUMULATION_STEPS = 1
    cfg.TRAIN.EPOCHS = 1
    cfg.PRINT_FREQ = 1000
    return apply_overrides(cfg, changes)


def train_batch(labels, seed, views=1):
    """A training batch of len(labels) videos: imgs [B, A, K, T, 3, HW, HW]."""
    g = torch.Generator().manual_seed(seed)
    b = len(labels)
    return {
        "imgs": torch.rand(b, views, K, T, 3, HW, HW, generator=g),
        "label": torch.tensor(labels),
        "vid": torch.arange(b),
        "path": [f"v{seed}_{i}" for i in range(b)],
        "frame_inds": torch.arange(K * T).reshape(1, K, T).repeat(b, 1, 1) * 3,
        "pa_labels": torch.zeros(b, K, dtype=torch.long),
        "srd_applied": torch.zeros(b, dtype=torch.bool),
    }


def merge(batches):
    out = {}
    for key in batches[0]:
        values = [b[key] for b in batches]
        out[key] = sum(values, []) if isinstance(values[0], list) else torch.cat(values)
    return out


def params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run_epoch(model, batches, cfg, state=None, stop_after_steps=None):
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    state = state or engine.TrainState()
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return stop_after_steps is not None and calls["n"] >= stop_after_steps

    outcome = engine.train_one_epoch(model, ListLoader(batches), optimizer, None, torch.zeros(2, 77, dtype=torch.long),
                                     cfg, state, steps.promptmil_step, _Logger(), stop_requested=stop)
    return outcome, state, optimizer


class _Logger:
    def info(self, *a, **k):
        pass

    warning = info


# ----------------------------------------------------------------------------- training loop
def test_accumulation_equals_one_big_batch():
    batches = [train_batch([1], 1), train_batch([0], 2)]
    accumulated = ToyVideoModel()
    outcome, state, _ = run_epoch(accumulated, batches, make_cfg(**{"TRAIN.ACCUMULATION_STEPS": 2}))
    assert outcome == "done" and state.step == 1 and state.epoch == 1
    single = ToyVideoModel()
    run_epoch(single, [merge(batches)], make_cfg())
    torch.testing.assert_close(params(accumulated), params(single))
    assert not torch.allclose(params(single), params(ToyVideoModel()))  # it did train


def test_short_last_group_gets_its_own_step():
    batches = [train_batch([1], 1), train_batch([0], 2), train_batch([1], 3)]
    model = ToyVideoModel()
    _, state, _ = run_epoch(model, batches, make_cfg(**{"TRAIN.ACCUMULATION_STEPS": 2}))
    assert state.step == 2
    # the same as group 1 merged, then group 2 alone (loss divided by its size, 1)
    ref = ToyVideoModel()
    optimizer = torch.optim.AdamW(ref.parameters(), lr=0.05)
    for group in ([batches[0], batches[1]], [batches[2]]):
        b = merge(group)
        logits = ref(b["imgs"][:, 0].reshape(-1, T, 3, HW, HW), None)["y"].reshape(len(group), K, 2)
        loss, _ = promptmil_loss(logits, b["label"], 0.01, 0.001)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(params(model), params(ref))


def test_stop_and_continue_equals_uninterrupted():
    batches = [train_batch([i % 2], 10 + i) for i in range(6)]
    cfg = make_cfg(**{"TRAIN.ACCUMULATION_STEPS": 2})
    full = ToyVideoModel()
    optimizer_full = torch.optim.AdamW(full.parameters(), lr=0.05)
    engine.train_one_epoch(full, ListLoader(batches), optimizer_full, None, None, cfg, engine.TrainState(),
                           steps.promptmil_step, _Logger())

    part = ToyVideoModel()
    optimizer = torch.optim.AdamW(part.parameters(), lr=0.05)
    state = engine.TrainState()
    outcome = engine.train_one_epoch(part, ListLoader(batches), optimizer, None, None, cfg, state,
                                     steps.promptmil_step, _Logger(), stop_requested=lambda: True)
    assert outcome == "stopped" and state.batch_in_epoch == 2 and state.step == 1 and state.epoch == 0
    assert not torch.equal(params(part), params(full))
    outcome = engine.train_one_epoch(part, ListLoader(batches), optimizer, None, None, cfg, state,
                                     steps.promptmil_step, _Logger())
    assert outcome == "done" and state.step == 3 and state.epoch == 1 and state.batch_in_epoch == 0
    torch.testing.assert_close(params(part), params(full))


def test_non_finite_loss_names_the_step():
    batches = [train_batch([1], 1), train_batch([0], 2)]
    batches[1]["imgs"][0, 0, 0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingError, match="epoch 1, micro-batch 2/2, optimizer step 2"):
        run_epoch(ToyVideoModel(), batches, make_cfg())


def test_gradient_clipping_bounds_the_update():
    batches = [train_batch([1], 1)]
    model = ToyVideoModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = params(model)
    engine.train_one_epoch(model, ListLoader(batches), optimizer, None, None, make_cfg(**{"TRAIN.CLIP_GRAD": 1e-3}),
                           engine.TrainState(), steps.promptmil_step, _Logger())
    assert (params(model) - before).norm() <= 1e-3 + 1e-7


# ----------------------------------------------------------------------------- adversarial training
@pytest.mark.parametrize("detach", [False, True])
def test_mil_detach_weight_key_reaches_the_stage1_loss(detach):
    cfg = make_cfg(**{"TRAIN.MIL_DETACH_WEIGHT": detach})
    batch = train_batch([1, 0], 11)
    model = ToyVideoModel()
    loss, _ = steps.promptmil_step(model, batch, None, cfg, torch.device("cpu"), None)
    loss.backward()
    clips = batch["imgs"][:, 0].reshape(-1, T, 3, HW, HW)
    grads = {}
    for d in (False, True):
        ref = ToyVideoModel()
        expected, _ = promptmil_loss(ref(clips, None)["y"].reshape(2, K, 2), batch["label"],
                                     cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE, detach_weight=d)
        expected.backward()
        grads[d] = ref.head.weight.grad
    assert not torch.allclose(grads[False], grads[True])
    torch.testing.assert_close(model.head.weight.grad, grads[detach])


def test_clip_labels_precedence():
    batch = train_batch([0, 0, 1, 2], 5)
    batch["pa_labels"][0] = torch.tensor([0, 1, 1])
    batch["srd_applied"][0] = True
    batch["pa_labels"][1] = torch.tensor([0, 0, 0])  # SRD did not run on this normal video
    inds = batch["frame_inds"][2]  # [K, T]
    pseudo = {
        "v5_2": VideoPseudoLabels(100, inds.numpy(), np.array([1, 0, 1])),
        "v5_3": VideoPseudoLabels(100, inds.numpy(), np.array([0, 0, 1])),
    }
    cfg = make_cfg(**{"ADV_TRAIN.PSEUDO_LABEL": True})
    labels = steps.advtrain_clip_labels(batch, cfg, pseudo)
    assert labels.tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 1], [0, 0, 1]]
    # without pseudo labels every clip of an anomalous video is anomalous; pa_labels still win
    labels = steps.advtrain_clip_labels(batch, make_cfg(), None)
    assert labels.tolist() == [[0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1]]
    # SRD labels of a normal video are used even when pseudo labels exist for other videos
    with pytest.raises(TrainingError, match="v5_3"):
        steps.advtrain_clip_labels(batch, cfg, {"v5_2": pseudo["v5_2"]})


@pytest.mark.parametrize("loss_type,detach", [("ce", False), ("mil", False), ("mil", True)])
def test_advtrain_step_trains_on_the_attacked_clips(loss_type, detach):
    from attacks.pgd import pgd

    cfg = make_cfg(**{"ADV_TRAIN.LOSS": loss_type, "ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 3,
                      "TRAIN.MIL_DETACH_WEIGHT": detach})
    batch = train_batch([1, 0], 7)
    model = ToyVideoModel()
    for p in model.parameters():
        p.grad = torch.full_like(p, 123.0)  # stale gradients: must not survive the first micro-step
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = steps.make_advtrain_step(None)
    loss, parts = step(model, batch, None, cfg, torch.device("cpu"), engine.MicroStep(True, True, optimizer))
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    clips = batch["imgs"][:, 0].reshape(-1, T, 3, HW, HW)
    labels = torch.tensor([[1, 1, 1], [0, 0, 0]])
    adv = pgd(model, clips, None, labels.reshape(-1), eps=8 / 255, steps=3)
    assert (adv - clips).abs().max() <= 8 / 255 + 1e-6
    expected, _ = advtrain_loss(model(adv, None)["y"].reshape(2, K, 2), batch["label"], labels, loss_type,
                                cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE, detach_weight=detach)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    ref = ToyVideoModel()
    ref_loss, _ = advtrain_loss(ref(adv, None)["y"].reshape(2, K, 2), batch["label"], labels, loss_type,
                                cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE, detach_weight=detach)
    ref_loss.backward()
    torch.testing.assert_close(model.head.weight.grad, ref.head.weight.grad)  # the weight's gradient path too
    clean, _ = advtrain_loss(model(clips, None)["y"].reshape(2, K, 2), batch["label"], labels, loss_type,
                             cfg.TRAIN.W_SMOOTH, cfg.TRAIN.W_SPARSE)
    assert loss.item() > clean.item()  # the attack raised the loss


def test_advtrain_step_keeps_accumulated_gradients_and_mixes_clean():
    cfg = make_cfg(**{"ADV_TRAIN.LOSS": "ce", "ADV_TRAIN.EPS": 8.0, "ATTACK.STEPS": 2, "ADV_TRAIN.CLEAN_WEIGHT": 0.25})
    batch = train_batch([1, 0], 8)
    model = ToyVideoModel()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = steps.make_advtrain_step(None)
    loss, parts = step(model, batch, None, cfg, torch.device("cpu"), engine.MicroStep(False, True, optimizer))
    # not the first micro-step: the gradients of earlier micro-steps are kept, the attack added none
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    torch.testing.assert_close(loss, 0.75 * parts["adv"] + 0.25 * parts["clean"])


# ----------------------------------------------------------------------------- evaluation
def record(path, num_frames, intervals, label):
    from datasets.lists import VideoRecord

    return VideoRecord(path=path, num_frames=num_frames, label=label, intervals=intervals)


def test_segment_ground_truth_any_sampled_frame():
    records = [record("a", 40, [(10, 20)], 1), record("b", 40, [(0, 40)], 0)]
    batch = {"vid": torch.tensor([0, 0, 0, 1]),
             "frame_inds": torch.tensor([[0, 4, 8], [8, 12, 16], [20, 24, 28], [12, 14, 16]])}
    batch.update(imgs=torch.zeros(4, 3, 3, 1, 1), path=["a", "a", "a", "b"], seg_start=torch.tensor([0, 8, 20, 12]),
                 seg_len=torch.tensor([8, 8, 8, 8]))
    _, _, labels = next(scoring.loader_batches([batch], records))
    assert labels.tolist() == [0, 1, 0, 0]


def test_rows_dedupe_and_order():
    rows = {("b", 8, 8): 0.2, ("a", 8, 8): 0.5, ("a", 0, 8): 0.1}
    scores = scoring.scores_by_video(rows)
    assert scores["a"]["starts"].tolist() == [0, 8]
    np.testing.assert_allclose(scores["a"]["scores"], [0.1, 0.5])
    assert scores["b"]["lengths"].tolist() == [8]


def test_evaluate_matches_metrics_on_the_same_scores():
    from evaluation.metrics import evaluate_scores

    records = [record("v/a", 40, [(10, 30)], 1), record("v/b", 40, [(0, 40)], 0)]
    g = torch.Generator().manual_seed(3)
    batches = []
    for vid, path in enumerate(["v/a", "v/b"]):
        for start in range(0, 40, 8):
            batches.append({"imgs": torch.rand(1, T, 3, HW, HW, generator=g), "vid": torch.tensor([vid]),
                            "path": [path], "seg_start": torch.tensor([start]), "seg_len": torch.tensor([8]),
                            "frame_inds": torch.tensor([[start, start + 4]])})
    model = ToyVideoModel(seed=1)
    cfg = make_cfg(**{"TEST.SMOOTH": False})
    result = scoring.evaluate(model, ListLoader(batches[::-1], records), None, cfg, _Logger())
    with torch.no_grad():
        expected = {p: [] for p in ("v/a", "v/b")}
        for b in batches:
            expected[b["path"][0]].append(model(b["imgs"], None)["y"].softmax(-1)[0, 1].item())
    np.testing.assert_allclose(result["videos"]["v/a"]["scores"], expected["v/a"], rtol=1e-6)
    ref = evaluate_scores(expected, records, smooth=False)
    assert result["metrics"]["auc_all"] == pytest.approx(ref["auc_all"])
    assert result["metrics"]["ap"] == pytest.approx(ref["ap"])


def test_choose_threshold_by_hand():
    eval_result = {"per_video": {"a": {"scores": np.array([0.1, 0.4, 0.35, 0.8], np.float32),
                                       "labels": np.array([0, 0, 1, 1], np.uint8)}}}
    chosen = choose_threshold(eval_result)
    assert chosen["f1"] == pytest.approx(0.35)  # predicts 0.35, 0.4, 0.8 anomalous: F1 = 0.8
    assert chosen["f1_value"] == pytest.approx(0.8)
    assert chosen["youden"] in (pytest.approx(0.8), pytest.approx(0.35))  # both give J = 0.5
    one_class = {"per_video": {"a": {"scores": np.array([0.1, 0.2]), "labels": np.array([0, 0])}}}
    assert choose_threshold(one_class)["f1"] is None


def test_rng_state_round_trip():
    state = engine.rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    engine.set_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


# ----------------------------------------------------------------------------- DDP on 2 gloo processes
def _ddp_worker(rank, world, port, out_dir, batches, accum):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from utils import dist

    info = dist.init_distributed(use_cuda=False)
    model = dist.wrap_model(ToyVideoModel(), info)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    mine = batches[rank::world]
    engine.train_one_epoch(model, ListLoader(mine), optimizer, None, None,
                           make_cfg(**{"TRAIN.ACCUMULATION_STEPS": accum}), engine.TrainState(),
                           steps.promptmil_step, _Logger())
    torch.save(params(dist.unwrap_model(model)), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.cleanup()


@pytest.mark.dist
def test_ddp_two_ranks_equal_single_process(tmp_path):
    import socket

    import torch.multiprocessing as mp

    batches = [train_batch([i % 2], 30 + i) for i in range(4)]  # 4 videos, one per micro-batch
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: no re-import of torch and the test module in the children (seconds on 2 cores)
    mp.start_processes(_ddp_worker, args=(2, port, str(tmp_path), batches, 2), nprocs=2, join=True,
                       start_method="fork")
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(rank0, rank1)
    single = ToyVideoModel()
    run_epoch(single, [merge(batches)], make_cfg())  # the same global batch of 4 videos, one step
    torch.testing.assert_close(rank0, params(single))
    assert not torch.allclose(rank0, params(ToyVideoModel()))


class _SelfTerminatingItems(torch.utils.data.Dataset):
    """Each item sends SIGTERM to the process loading it (as a launcher's killpg would)."""

    def __len__(self):
        return 4

    def __getitem__(self, index):
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return torch.tensor(index)


def test_data_workers_survive_sigterm():
    loader = torch.utils.data.DataLoader(_SelfTerminatingItems(), batch_size=2, num_workers=1)
    with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly"):
        list(loader)
    engine.protect_workers_from_sigterm(loader)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3]]
    # resuming inside an epoch rebuilds the loader: the protection is kept
    rest = engine.remaining_batches(loader, 1)
    assert [b.tolist() for b in rest] == [[2, 3]]


def test_selection_rules():
    from training.engine import score_distribution, selection_rule, selection_value

    row = {"auc_all": 0.9, "val_auc_all": 0.7}
    assert selection_value("test", row, 3) == 0.9
    assert selection_value("val", row, 3) == 0.7
    assert selection_value("last", row, 3) < selection_value("last", row, 4)  # the latest always wins
    cfg = SimpleNamespace(TRAIN=SimpleNamespace(SELECT="val"))
    with pytest.raises(TrainingError, match="VAL_SPLIT_FILE"):
        selection_rule(cfg, None)
    result = {"per_video": {"n": {"scores": [0.1, 0.3], "labels": [0, 0]},
                            "a": {"scores": [0.2, 0.9, 0.8], "labels": [0, 1, 1]}}}
    dist = score_distribution(result)
    assert dist == pytest.approx({"p_normal_videos": 0.2, "p_anomalous_videos_normal": 0.2, "p_anomalous_frames": 0.85})


def test_select_val_needs_a_validation_list():
    from utils.config import get_default_config, merge_opts, _validate

    cfg = get_default_config()
    merge_opts(cfg, ["TRAIN.SELECT", "val"])
    with pytest.raises(ConfigError, match="DATA.VAL_SPLIT_FILE"):
        _validate(cfg)
    merge_opts(cfg, ["DATA.VAL_SPLIT_FILE", "val.txt"])
    _validate(cfg)
