"""Training objectives of PromptMIL (stage 1) and adversarial training (stage 2).

Shapes: ``logits`` [B, K, C] (B videos, K clips per video, C text classes, class 1 =
"abnormal"), ``probs`` [B, K] (clip anomaly probabilities = softmax(logits)[..., 1]),
``video_labels`` [B] (anomalous when > 0), ``clip_labels`` [B, K] (0/1).
Every loss is reduced as the published code does: summed over the clips of a video,
then averaged over the videos of the batch.
"""
import torch
import torch.nn.functional as F


def anomaly_probs(logits):
    """Clip anomaly probabilities [B, K] from logits [B, K, C]."""
    return logits.softmax(dim=-1)[..., 1]


def mil_loss(logits, video_labels, detach_weight=False, normal="top", anomalous_bottom=False):
    """Multiple-instance loss: cross-entropy of each video's top-scoring clip.

    Per video the clip with the highest anomaly probability is selected (first one on
    ties); its logits are scored against the binary video label (label > 0) and the
    cross-entropy is weighted by that clip's largest class probability (its confidence).
    As in the published code the weight is NOT detached by default, so the gradient also
    flows through the confidence; ``detach_weight=True`` treats it as a constant.
    ``normal`` (TRAIN.MIL_NORMAL): 'top' (published) scores only the top clip of a normal
    video too; 'all' scores every clip of a normal video against "normal" (mean over its K
    clips, each weighted by its own confidence): the weak label says that none of a normal
    video's clips is anomalous, so all of them are labelled instances, not just the max.
    ``anomalous_bottom`` (TRAIN.MIL_ANOMALOUS_BOTTOM): an anomalous video's lowest-scoring
    clip is also scored against "normal" (added to its term, same weighting): weak labels of
    surveillance data mark videos whose anomaly covers a part of them, so their least
    anomalous clip is normal; without it nothing stops a model from raising every clip of a
    video it recognises as anomalous (separating videos instead of frames).
    Returns a scalar: mean over the B videos.
    """
    _check_logits(logits)
    probs = logits.softmax(dim=-1)
    top = probs[..., 1].argmax(dim=1)  # [B]
    rows = torch.arange(logits.shape[0], device=logits.device)
    top_logits = logits[rows, top]  # [B, C]
    weight = probs[rows, top].max(dim=-1).values  # [B]
    if detach_weight:
        weight = weight.detach()
    targets = (video_labels.reshape(-1) > 0).long().to(logits.device)
    ce = F.cross_entropy(top_logits, targets, reduction="none")
    per_video = ce * weight
    if normal == "all":
        b, k, c = logits.shape
        all_ce = F.cross_entropy(logits.reshape(b * k, c), torch.zeros(b * k, dtype=torch.long, device=logits.device),
                                 reduction="none").reshape(b, k)
        all_weight = probs.max(dim=-1).values
        if detach_weight:
            all_weight = all_weight.detach()
        per_video = torch.where(targets > 0, per_video, (all_ce * all_weight).mean(dim=1))
    elif normal != "top":
        raise ValueError(f"TRAIN.MIL_NORMAL must be 'top' or 'all', got {normal!r}")
    if anomalous_bottom:
        low = probs[..., 1].argmin(dim=1)
        low_weight = probs[rows, low].max(dim=-1).values
        if detach_weight:
            low_weight = low_weight.detach()
        low_ce = F.cross_entropy(logits[rows, low], torch.zeros_like(targets), reduction="none") * low_weight
        per_video = per_video + torch.where(targets > 0, low_ce, torch.zeros_like(low_ce))
    return per_video.mean()


def smooth_loss(probs):
    """Temporal smoothness: sum over consecutive clips of (p[k+1] - p[k])^2, mean over videos."""
    return (probs[:, 1:] - probs[:, :-1]).pow(2).sum(dim=-1).mean()


def sparse_loss(probs):
    """Sparsity: sum of the clip anomaly probabilities of a video, mean over videos."""
    return probs.sum(dim=-1).mean()


def clip_ce_loss(logits, clip_labels):
    """Per-clip cross-entropy against clip labels [B, K], mean over all B*K clips."""
    _check_logits(logits)
    num_classes = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, num_classes),
                           clip_labels.reshape(-1).long().to(logits.device))


def promptmil_loss(logits, video_labels, w_smooth, w_sparse, detach_weight=False, mil_normal="top",
                   anomalous_bottom=False):
    """Stage-1 objective: mil + w_smooth * smooth + w_sparse * sparse.

    Returns ``(total, parts)``; ``parts`` holds the unweighted scalar tensors
    ``mil``, ``smooth``, ``sparse`` and the weighted ``total``.
    """
    probs = anomaly_probs(logits)
    parts = {
        "mil": mil_loss(logits, video_labels, detach_weight=detach_weight, normal=mil_normal,
                        anomalous_bottom=anomalous_bottom),
        "smooth": smooth_loss(probs),
        "sparse": sparse_loss(probs),
    }
    total = parts["mil"] + w_smooth * parts["smooth"] + w_sparse * parts["sparse"]
    parts["total"] = total
    return total, parts


def advtrain_loss(logits, video_labels, clip_labels, loss_type, w_smooth, w_sparse,
                  detach_weight=False, mil_normal="top", anomalous_bottom=False):
    """Stage-2 objective on (adversarial) clips, as published.

    ``loss_type`` 'mil': the PromptMIL objective (mil + smooth + sparse);
    'ce': per-clip cross-entropy on ``clip_labels`` + w_smooth * smooth (no sparsity term).
    ``detach_weight`` is passed to :func:`mil_loss` ('mil' only).
    Returns ``(total, parts)`` like :func:`promptmil_loss` (for 'ce' the first part is
    named ``ce``).
    """
    if loss_type == "mil":
        return promptmil_loss(logits, video_labels, w_smooth, w_sparse, detach_weight, mil_normal, anomalous_bottom)
    if loss_type == "ce":
        probs = anomaly_probs(logits)
        parts = {"ce": clip_ce_loss(logits, clip_labels), "smooth": smooth_loss(probs)}
        parts["total"] = parts["ce"] + w_smooth * parts["smooth"]
        return parts["total"], parts
    raise ValueError(f"ADV_TRAIN.LOSS must be 'mil' or 'ce', got {loss_type!r}")


def _check_logits(logits):
    if logits.dim() != 3 or logits.shape[-1] < 2:
        raise ValueError(f"expected logits [B, K, C] with C >= 2, got shape {tuple(logits.shape)}")
