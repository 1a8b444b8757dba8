"""The one scoring pass: clean and attacked P(abnormal) of every test segment.

main.py (every evaluation of training), main_attack.py (the published PGD run and the
robustness suite) and infer.py all score through :func:`class_probabilities` /
:func:`segment_probabilities`; the loaders' passes go through :func:`score_batches`, which
applies every attack setting to each batch while it is in memory (so a video loader decodes
each segment once).

Shapes: a test item is ``[T, 3, H, W]`` (or ``[crops, T, 3, H, W]`` with TEST.NUM_CROP 3);
a batch adds B in front. A segment's key is ``(path, seg_start, seg_len)``. Attacked crops
of one item share the item's label (anomalous if any of its sampled frames is).
"""
import time

import numpy as np
import torch

from attacks.common import amp_dtype_from_config, eval_mode, in_chunks, make_forward
from attacks.registry import run_attack
from datasets.lists import frame_labels
from datasets.transforms import model_input
from evaluation.metrics import evaluate_scores
from utils import dist
from utils.dist import unwrap_model
from utils.logger import progress

def class_probabilities(forward, videos):
    """Class probabilities [B, C] of items [B, T, 3, H, W] or [B, crops, T, 3, H, W]: the
    softmax of each crop's logits, averaged over crops."""
    crops = videos.shape[1] if videos.dim() == 6 else 1
    with torch.no_grad():
        probs = forward(videos.reshape(-1, *videos.shape[-4:])).softmax(dim=-1)
    return probs.reshape(videos.shape[0], crops, -1).mean(dim=1)


def segment_probabilities(forward, videos):
    """P(abnormal) [B] (class 1) of items [B, T, 3, H, W] or [B, crops, T, 3, H, W]."""
    return class_probabilities(forward, videos)[:, 1]


def score_batches(model, batches, text_tokens, settings, generator=None, amp_dtype=None, batch_size=0,
                   source_model=None, source_attack="pgd"):
    """Clean and adversarial P(abnormal) of every item, for every setting, in one pass.

    ``settings``: attacks.registry.AttackSetting list (empty: clean scores only).

    batches: iterable of (keys: list, videos [B, T, 3, H, W] or [B, crops, T, 3, H, W],
        labels [B]); every crop of an item is attacked with the item's label.
    Returns {"clean": {key: p}, "adversarial": {setting.key: {key: p}},
    "seconds": {setting.key: attack seconds}, "items": number of items}.
    """
    forward = make_forward(model, text_tokens, amp_dtype)
    clean, adversarial = {}, {s.key: {} for s in settings}
    seconds = {s.key: 0.0 for s in settings}
    items = 0
    with eval_mode(model, source_model):
        for keys, videos, labels in batches:
            items += len(keys)
            flat = videos.reshape(-1, *videos.shape[-4:])
            crops = flat.shape[0] // videos.shape[0]
            flat_labels = labels.reshape(-1).to(videos.device).repeat_interleave(crops)
            for key, p in zip(keys, segment_probabilities(forward, videos).tolist()):
                clean[key] = p
            for setting in settings:
                started = time.perf_counter()
                kw = setting.kwargs()
                if setting.attack == "transfer":
                    kw.update(source_model=source_model, source_attack=source_attack)
                adv = in_chunks(_registry_call(setting.attack), flat, flat_labels, batch_size, model=model,
                                   text_tokens=text_tokens, eps=setting.eps, steps=setting.steps,
                                   generator=generator, amp_dtype=amp_dtype, **kw)
                probs = segment_probabilities(forward, adv.reshape(videos.shape))
                if videos.device.type == "cuda":
                    torch.cuda.synchronize(videos.device)
                seconds[setting.key] += time.perf_counter() - started
                for key, p in zip(keys, probs.tolist()):
                    adversarial[setting.key][key] = p
    return {"clean": clean, "adversarial": adversarial, "seconds": seconds, "items": items}


def _registry_call(name):
    def call(model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
        return run_attack(name, model, videos, text_tokens, clip_labels, eps, steps, generator=generator, **kw)
    return call


def loader_batches(loader, records, count_start_zero=False, device="cpu", max_batches=None):
    """(keys (path, seg_start, seg_len), videos, segment labels [B]) from a test loader.

    A segment is anomalous when any of its sampled frames is (datasets.lists.frame_labels).
    """
    truth_cache = {}
    for index, batch in enumerate(loader):
        if max_batches is not None and index >= max_batches:
            return
        labels = torch.zeros(len(batch["vid"]), dtype=torch.long)
        for i, vid in enumerate(batch["vid"].tolist()):
            if vid not in truth_cache:
                truth_cache[vid] = frame_labels(records[vid], count_start_zero)
            truth = truth_cache[vid]
            inds = batch["frame_inds"][i].reshape(-1).clamp(0, len(truth) - 1).numpy()
            labels[i] = int(truth[inds].any())
        keys = [(batch["path"][i], int(batch["seg_start"][i]), int(batch["seg_len"][i]))
                for i in range(len(batch["path"]))]
        yield keys, model_input(batch["imgs"], device), labels.to(device)


def scores_by_video(segment_scores):
    """{(path, seg_start, seg_len): p} -> {path: {"starts", "lengths", "scores"}} (time order)."""
    videos = {}
    for (path, start, length), p in segment_scores.items():
        videos.setdefault(path, []).append((start, length, p))
    out = {}
    for path, segs in videos.items():
        segs.sort()
        out[path] = {"starts": np.array([s[0] for s in segs], dtype=np.int64),
                     "lengths": np.array([s[1] for s in segs], dtype=np.int64),
                     "scores": np.array([s[2] for s in segs], dtype=np.float32)}
    return out


def records_metrics_fn(records, count_start_zero=False, smooth=True):
    """metrics_fn for segment keys (path, seg_start, seg_len): the published frame-level metric."""
    def metrics(segment_scores):
        videos = scores_by_video(segment_scores)
        return evaluate_scores({p: v["scores"] for p, v in videos.items()}, records,
                               count_start_zero=count_start_zero, smooth=smooth)
    return metrics


def gather_pass(result):
    """Merge one attack pass from every rank (duplicated padded items collapse)."""
    parts = dist.all_gather_object(result)
    if len(parts) == 1:
        return result
    merged = {"clean": {}, "adversarial": {k: {} for k in result["adversarial"]},
              "seconds": {k: max(p["seconds"][k] for p in parts) for k in result["seconds"]}}
    for p in parts:
        merged["clean"].update(p["clean"])
        for k, v in p["adversarial"].items():
            merged["adversarial"][k].update(v)
    merged["items"] = len(merged["clean"])
    merged["elapsed"] = max(p.get("elapsed", 0.0) for p in parts)
    return merged


def model_device(model) -> torch.device:
    return next(unwrap_model(model).parameters()).device


def score_loader(model, loader, text_tokens, cfg, settings=(), desc="test", source_model=None, source_attack="pgd",
                 batch_hook=None, max_batches=None):
    """:func:`score_batches` over a test loader on every rank, gathered -> its result dict.

    ``batch_hook(keys, videos, labels)``: called on each batch before it is scored (e.g. the
    robustness suite's input-gradient check). Random starts are drawn from a generator
    seeded with SEED + rank.
    """
    device = model_device(model)
    records = loader.dataset.records
    batches = loader_batches(progress(loader, desc=desc, rank=dist.get_rank()), records, cfg.DATA.COUNT_START_ZERO,
                             device, max_batches)
    if batch_hook is not None:
        batches = _hooked(batches, batch_hook)
    generator = torch.Generator().manual_seed(int(cfg.SEED) + dist.get_rank())
    started = time.time()
    result = score_batches(unwrap_model(model), batches, text_tokens, list(settings), generator=generator,
                           amp_dtype=amp_dtype_from_config(cfg, device), batch_size=int(cfg.ATTACK.BATCH_SIZE),
                           source_model=source_model, source_attack=source_attack)
    result["elapsed"] = time.time() - started
    return gather_pass(result)


def _hooked(batches, hook):
    for keys, videos, labels in batches:
        hook(keys, videos, labels)
        yield keys, videos, labels


def score_metrics(videos, records, cfg):
    """(metrics {auc_all, auc_ano, ap, num_videos, num_frames}, full evaluate_scores result)."""
    result = evaluate_scores({p: v["scores"] for p, v in videos.items()}, records,
                             count_start_zero=cfg.DATA.COUNT_START_ZERO, smooth=cfg.TEST.SMOOTH)
    return {k: result[k] for k in ("auc_all", "auc_ano", "ap", "num_videos", "num_frames")}, result


def evaluate(model, loader, text_tokens, cfg, logger, desc="test"):
    """Clean scores of every test segment and their frame-level metrics (the evaluation of
    every training epoch and of ``--only_test``).

    Returns ``{"metrics": {auc_all, auc_ano, ap, ...}, "videos": {path: {"starts",
    "lengths", "scores"}}, "eval": <evaluation.metrics.evaluate_scores result>, "segments_per_s"}``.
    """
    result = score_loader(model, loader, text_tokens, cfg, desc=desc)
    videos = scores_by_video(result["clean"])
    metrics, full = score_metrics(videos, loader.dataset.records, cfg)
    logger.info(f"{desc}: AUC@all {metrics['auc_all']:.4f} AUC@ano {metrics['auc_ano']:.4f} "
                f"AP {metrics['ap']:.4f} ({metrics['num_videos']} videos, {result['items']} segments)")
    return {"metrics": metrics, "videos": videos, "eval": full,
            "segments_per_s": result["items"] / max(result["elapsed"], 1e-9)}
