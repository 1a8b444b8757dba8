"""DDP on 2 gloo processes launched like torchrun: synchronised parameters equal to a
single-process run with the same global batch, gathered evaluation equal to a
single-process evaluation, shared stop decisions, and no hang when a rank fails."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace as NS

import pytest
import torch

from tests.toy_models import ToyVideoModel, random_videos, text_tokens

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[1]
VIDEOS, CLIPS, STEPS, ACCUMULATION = 4, 2, 3, 2
TEST_LIST = "d/n1 40 0 0 40\nd/a1 64 1 10 30\nd/n2 33 0 0 33\nd/a2 50 1 20 45\nd/a3 20 1 5 9\n"


def global_batch(step, micro):
    gen = torch.Generator().manual_seed(100 + 10 * step + micro)
    videos = random_videos(VIDEOS * CLIPS, gen)
    labels = torch.tensor([0, 1, 1, 0])
    return videos, labels


def train(info):
    """STEPS optimizer steps of PromptMIL on the toy model, each over ACCUMULATION micro-batches.

    Every rank takes its contiguous share of the videos of each global micro-batch.
    Returns the final parameters (of the unwrapped model).
    """
    from attacks import pgd as attacks
    from utils import dist
    from training import losses, optim

    torch.manual_seed(0)
    model = dist.wrap_model(ToyVideoModel(dropout=0.0), info)
    # an attack on the wrapped model must neither sync nor leave gradients behind
    attacks.pgd(model, random_videos(2, torch.Generator().manual_seed(7)), text_tokens(),
                torch.tensor([0, 1]), eps=4 / 255, steps=2)
    cfg = NS(TRAIN=NS(OPTIMIZER="adamw", LR=1e-2, WEIGHT_DECAY=0.01, LR_SCHEDULER="cosine",
                      EPOCHS=STEPS, WARMUP_EPOCHS=0, LR_SCALING="none",
                      FUSED_OPTIMIZER=True))
    opt = optim.build_optimizer(cfg, model)
    sched = optim.build_scheduler(cfg, opt, steps_per_epoch=1)
    share = VIDEOS // info.world_size
    mine = slice(info.rank * share, (info.rank + 1) * share)
    for step in range(STEPS):
        for micro in range(ACCUMULATION):
            videos, labels = global_batch(step, micro)
            videos = videos.view(VIDEOS, CLIPS, *videos.shape[1:])[mine].flatten(0, 1)
            with dist.sync_context(model, sync=micro == ACCUMULATION - 1):
                logits = model(videos, text_tokens())["y"].view(share, CLIPS, -1)
                total, _ = losses.promptmil_loss(logits, labels[mine], 0.01, 0.001)
                (total / ACCUMULATION).backward()
        opt.step()
        opt.zero_grad()
        sched.step_update(step + 1)
    return {k: v.detach().clone() for k, v in dist.unwrap_model(model).state_dict().items()}


def evaluate(info, list_path):
    """Each rank scores its share of the test videos; rank-gathered metrics."""
    from datasets.lists import parse_list_file
    from utils import dist
    from evaluation import metrics

    records = parse_list_file(list_path)
    torch.manual_seed(0)
    model = ToyVideoModel(dropout=0.0).eval()
    scores = {}
    for index in range(info.rank, len(records), info.world_size):
        gen = torch.Generator().manual_seed(index)
        with torch.no_grad():
            probs = model(random_videos(3, gen), text_tokens())["y"].softmax(-1)[:, 1]
        scores[records[index].path] = probs.numpy()
    merged = {}
    for part in dist.all_gather_object(scores):
        merged.update(part)
    result = metrics.evaluate_scores(merged, records)
    return {"auc_all": result["auc_all"], "auc_ano": result["auc_ano"], "ap": result["ap"]}


def worker(scenario, out_dir):
    from utils import dist, signals

    info = dist.init_distributed(local_rank_arg=-1, timeout_s=8, use_cuda=False)
    out = Path(out_dir)
    if scenario == "fail":
        if info.rank == 1:
            raise RuntimeError("rank 1 fails on purpose")
        dist.barrier()  # rank 0 must not wait here forever
        return
    params = train(info)
    torch.save(params, out / f"params_rank{info.rank}.pt")
    report = evaluate(info, out / "test.txt")
    report["gathered"] = dist.all_gather_object(info.rank)
    report["broadcast"] = dist.broadcast_object(f"from {info.rank}")
    report["any_rank"] = dist.any_rank(info.rank == 1)
    report["none_rank"] = dist.any_rank(False)
    if info.rank == 1:
        signals.request_stop()
    report["stop_everywhere"] = signals.stop_requested(sync=True)
    report["mean"] = dist.reduce_mean(torch.tensor([float(info.rank)])).item()
    report["info"] = [info.rank, info.world_size, info.local_rank, info.distributed]
    (out / f"report_rank{info.rank}.json").write_text(json.dumps(report))
    dist.cleanup()


def launch(scenario, out_dir, world_size=2, timeout=120):
    """Start ``world_size`` processes with torchrun's environment variables; wait for all."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = []
    for rank in range(world_size):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        code = f"from tests.test_dist import worker; worker({scenario!r}, {str(out_dir)!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = []
    deadline = time.time() + timeout
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=max(1, deadline - time.time()))[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail(f"the ranks hung for more than {timeout} s")
    return [p.returncode for p in procs], outputs


@pytest.fixture
def single_process(monkeypatch):
    from utils import dist

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = dist.init_distributed(use_cuda=False)
    yield info
    dist.cleanup()


def test_ddp_equals_single_process(tmp_path, single_process):
    pytest.importorskip("datasets.lists")
    (tmp_path / "test.txt").write_text(TEST_LIST)
    codes, outputs = launch("train", tmp_path)
    assert codes == [0, 0], "\n".join(outputs)
    rank0 = torch.load(tmp_path / "params_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "params_rank1.pt", weights_only=True)
    assert single_process.world_size == 1 and not single_process.distributed
    reference = train(single_process)
    initial = ToyVideoModel(dropout=0.0)
    for name, value in reference.items():
        assert torch.equal(rank0[name], rank1[name]), name
        assert torch.allclose(rank0[name], value, rtol=1e-4, atol=1e-6), name
    assert any(not torch.allclose(initial.state_dict()[n], reference[n]) for n in reference)

    reports = [json.loads((tmp_path / f"report_rank{r}.json").read_text()) for r in range(2)]
    expected = evaluate(single_process, tmp_path / "test.txt")
    for rank, report in enumerate(reports):
        for key in ("auc_all", "auc_ano", "ap"):
            assert report[key] == pytest.approx(expected[key], abs=1e-12)
        assert report["gathered"] == [0, 1] and report["broadcast"] == "from 0"
        assert report["any_rank"] is True and report["none_rank"] is False
        assert report["stop_everywhere"] is True and report["mean"] == pytest.approx(0.5)
        assert report["info"] == [rank, 2, rank, True]


def test_failing_rank_does_not_hang_the_others(tmp_path):
    start = time.time()
    codes, outputs = launch("fail", tmp_path, timeout=90)
    assert codes[0] != 0 and codes[1] != 0, "\n".join(outputs)
    assert "rank 1 fails on purpose" in outputs[1]
    assert time.time() - start < 90


def test_launch_argument_and_env_precedence(monkeypatch):
    from utils import dist
    from utils.errors import ConfigError

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert dist.init_distributed(local_rank_arg=1, use_cuda=False).local_rank == 1  # --local-rank
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert dist.init_distributed(local_rank_arg=3, use_cuda=False).local_rank == 0
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK"):
        dist.init_distributed(use_cuda=False)
    dist.cleanup()
    assert dist.all_gather_object("x") == ["x"] and dist.get_world_size() == 1
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match="only 1 GPU"):
        dist.init_distributed(use_cuda=True)
    model = ToyVideoModel()
    assert dist.wrap_model(model, dist.current()) is model and dist.unwrap_model(model) is model


def test_logger_console_on_rank0_only_and_file_per_rank(tmp_path, capsys):
    import logging

    from utils.logger import create_logger

    rank1 = create_logger(tmp_path, rank=1, name="FrameShieldTest")
    rank1.info("hello from rank 1")
    assert "hello" not in capsys.readouterr().out
    rank0 = create_logger(tmp_path, rank=0, name="FrameShieldTest")
    rank0 = create_logger(tmp_path, rank=0, name="FrameShieldTest")  # no duplicated handlers
    rank0.info("hello from rank 0")
    logging.getLogger("FrameShieldTest.metrics").warning("child message")
    out = capsys.readouterr().out
    assert out.count("hello from rank 0") == 1 and "child message" in out
    for handler in rank0.handlers:
        handler.flush()
    assert "hello from rank 1" in (tmp_path / "log_rank1.txt").read_text()
    text0 = (tmp_path / "log_rank0.txt").read_text()
    assert text0.count("hello from rank 0") == 1 and "child message" in text0
    for handler in list(rank0.handlers):
        rank0.removeHandler(handler)
        handler.close()


def test_cleanup_waits_for_the_other_gloo_ranks_unless_an_error_propagates(monkeypatch):
    """A rank that closes its gloo connections while a peer still uses them makes the peer abort
    (exit -6) after its work is done: cleanup waits for every rank first, except in a failure."""
    from utils import dist as fs_dist

    calls = []
    monkeypatch.setattr(fs_dist.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(fs_dist.dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(fs_dist.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(fs_dist.dist, "monitored_barrier", lambda timeout: calls.append("barrier"))
    monkeypatch.setattr(fs_dist.dist, "destroy_process_group", lambda: calls.append("destroy"))
    fs_dist.cleanup()
    assert calls == ["barrier", "destroy"]
    calls.clear()
    with pytest.raises(RuntimeError):
        try:
            raise RuntimeError("this rank failed")
        finally:
            fs_dist.cleanup()
    assert calls == ["destroy"]
