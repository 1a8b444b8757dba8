"""One scoring pass: the training evaluation, the stage-3 PGD run, the robustness suite and
infer.py give bit-identical clean and attacked scores (and so the same AUC) on the tiny
X-CLIP, each checked against the scores computed here straight from the model."""
import numpy as np
import pytest
import torch

from attacks.pgd import pgd
from attacks.registry import AttackSetting
from attacks.settings import attack_settings
from datasets.transforms import model_input
from evaluation import robustness
from evaluation.scoring import evaluate, score_loader, score_metrics, scores_by_video
from tests.cfg_helpers import tiny_synthetic_cfg


class _Log:
    def info(self, *a):
        pass

    warning = info


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from clip import tokenize
    from datasets.build import build_test_loader
    from datasets.synthetic import make_synthetic_dataset
    from models import xclip

    paths = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), preset="small")
    cfg = tiny_synthetic_cfg(paths, **{"ATTACK.STEPS": 2, "ATTACK.EPS": 4.0, "TEST.BATCH_SIZE": 16,
                                       "ATTACK.BATCH_SIZE": 16})
    torch.manual_seed(0)
    model, _, _ = xclip.load(None, "tiny", T=2)
    return cfg, build_test_loader(cfg), model.eval(), tokenize(["normal", "abnormal"])


def direct_scores(model, loader, tokens, attack=None):
    """{(path, start, length): P(abnormal)} computed here from the model, batch by batch."""
    from datasets.lists import frame_labels

    out = {}
    records = loader.dataset.records
    for batch in loader:
        videos = model_input(batch["imgs"], torch.device("cpu"))
        if attack is not None:
            labels = torch.tensor([int(frame_labels(records[v])[batch["frame_inds"][i].numpy()].any())
                                   for i, v in enumerate(batch["vid"].tolist())])
            videos = pgd(model, videos, tokens, labels, **attack)
        with torch.no_grad():
            probs = model(videos, tokens)["y"].float().softmax(dim=-1)[:, 1]
        for i, p in enumerate(probs.tolist()):
            out[(batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]))] = p
    return out


def as_arrays(videos):
    return {p: v["scores"] for p, v in videos.items()}


def test_evaluation_attack_and_robustness_paths_are_bit_identical(tiny):
    cfg, loader, model, tokens = tiny
    settings = attack_settings(cfg)
    kwargs = {k: settings[k] for k in ("eps", "steps", "step_size", "random_start", "restarts")}
    clean_ref = scores_by_video(direct_scores(model, loader, tokens))
    adv_ref = scores_by_video(direct_scores(model, loader, tokens, attack=kwargs))

    evaluated = evaluate(model, loader, tokens, cfg, _Log())  # every training epoch, --only_test
    setting = AttackSetting("pgd", settings["eps"], settings["steps"], settings["restarts"],
                            settings["random_start"], settings["step_size"])
    attacked = score_loader(model, loader, tokens, cfg, [setting])  # main_attack.py's PGD run
    robust = robustness.evaluate_robustness(model, loader, tokens, cfg, _Log())  # the robustness suite

    for name, videos in (("evaluate", evaluated["videos"]), ("attack stage clean", scores_by_video(attacked["clean"])),
                         ("robustness clean", robust["videos"]["clean"])):
        for path, ref in clean_ref.items():
            assert np.array_equal(videos[path]["scores"], ref["scores"]), (name, path)
    for name, videos in (("attack stage", scores_by_video(attacked["adversarial"][setting.key])),
                         ("robustness", robust["videos"]["adversarial"])):
        for path, ref in adv_ref.items():
            assert np.array_equal(videos[path]["scores"], ref["scores"]), (name, path)
    records = loader.dataset.records
    clean_auc = score_metrics(clean_ref, records, cfg)[0]["auc_all"]
    adv_auc = score_metrics(adv_ref, records, cfg)[0]["auc_all"]
    assert evaluated["metrics"]["auc_all"] == clean_auc == robust["clean"]["auc_all"]
    assert robust["main"]["auc_all"] == adv_auc
    assert adv_auc != clean_auc  # the attack did something, so the comparison means something


def test_infer_scores_a_segment_as_the_evaluation_does(tiny):
    from apps import inference

    cfg, loader, model, tokens = tiny
    batch = next(iter(loader))
    videos = model_input(batch["imgs"], torch.device("cpu"))
    settings = attack_settings(cfg)
    clean, attacked, adv = inference.score_clips(model, videos, tokens, len(videos), cfg, settings)
    with torch.no_grad():
        expected = model(videos, tokens)["y"].float().softmax(dim=-1)[:, 1]
    assert torch.equal(clean, expected)
    ones = torch.ones(videos.shape[0], dtype=torch.long)
    reference = pgd(model, videos, tokens, ones, **{k: settings[k] for k in
                                                            ("eps", "steps", "step_size", "random_start", "restarts")})
    assert torch.equal(adv, reference)
    with torch.no_grad():
        assert torch.equal(attacked, model(reference, tokens)["y"].float().softmax(dim=-1)[:, 1])
