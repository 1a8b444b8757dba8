"""Grad-CAM saliency of the anomaly logit, and the per-frame masks SRD's gradcam mode reads.

Saliency: Grad-CAM on the patch tokens entering the last block of the cross-frame ViT
(``visual.transformer.resblocks[-1]``). Those tokens feed the last block's attention, so
the anomaly logit reaches them both through the class token (-> MIT -> video feature) and
through the visual prompts; the tokens leaving the last block reach it only through the
prompts. Per frame: channel weights = gradient averaged over the patches, map =
ReLU(sum over channels of weight * activation), bilinearly resized to the input size and
divided by its maximum (an all-zero map stays zero).

Masks: ``DIR/<video path from the list>/<frame index>.png``, 8-bit grayscale, the size of
the model input, one per frame index the train-as-test loader samples (``frame_inds``);
see ``datasets.srd.mask_path`` / ``load_saliency``.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F

from datasets.transforms import model_input
from utils.io import atomic_write_bytes


def _last_block(model):
    visual = getattr(model, "visual", None)
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if not blocks:
        raise TypeError(f"{type(model).__name__} has no visual.transformer.resblocks: "
                        "Grad-CAM needs the X-CLIP vision transformer")
    return blocks[-1]


def gradcam_saliency(model, video: torch.Tensor, text_tokens: torch.Tensor,
                     class_index: int = 1) -> torch.Tensor:
    """Per-frame saliency ``[B, T, H, W]`` float in [0, 1] of logit ``class_index``.

    ``video [B, T, 3, H, W]`` float in [0, 1] on the model's device; ``text_tokens [C, 77]``.
    The model runs in eval mode (restored afterwards); no parameter gradient is touched.
    """
    b, t, _, h, w = video.shape
    captured = {}

    def take_input(module, args):
        tokens = args[0].detach().requires_grad_(True)  # [B*T, 1+P, width]
        captured["tokens"] = tokens
        return (tokens,) + tuple(args[1:])

    was_training = model.training
    handle = _last_block(model).register_forward_pre_hook(take_input)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(video, text_tokens)["y"]
            tokens = captured["tokens"]
            (grads,) = torch.autograd.grad(logits[:, class_index].sum(), tokens)
    finally:
        handle.remove()
        model.train(was_training)
    acts, grads = tokens.detach()[:, 1:].float(), grads[:, 1:].float()  # [N, P, width]
    weights = grads.mean(dim=1, keepdim=True)
    cam = F.relu((weights * acts).sum(dim=-1))  # [N, P]
    side = math.isqrt(cam.shape[1])
    if side * side != cam.shape[1]:
        raise ValueError(f"{cam.shape[1]} patch tokens do not form a square grid")
    cam = F.interpolate(cam.view(-1, 1, side, side), size=(h, w), mode="bilinear", align_corners=False)
    cam = cam.view(b * t, h * w).clamp_min(0)
    peak = cam.amax(dim=1, keepdim=True)
    cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    return cam.view(b, t, h, w)


def mask_png_bytes(saliency: torch.Tensor) -> bytes:
    """PNG (8-bit grayscale) of one ``[H, W]`` map in [0, 1]."""
    from PIL import Image

    pixels = (saliency.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_masks(output_dir, video_path: str, frame_inds, saliency: torch.Tensor) -> int:
    """Write ``saliency [T, H, W]`` as ``output_dir/<video_path>/<frame>.png``; returns files written.

    A frame index that appears twice in ``frame_inds`` (a short last segment) is written once.
    """
    from datasets.srd import mask_path

    written = set()
    for index, frame_map in zip(torch.as_tensor(frame_inds).tolist(), saliency):
        if index in written:
            continue
        atomic_write_bytes(mask_path(output_dir, video_path, index), mask_png_bytes(frame_map))
        written.add(index)
    return len(written)


def normal_segment_indices(dataset) -> list[int]:
    """Indices of a ``SegmentDataset``'s items that belong to normal videos."""
    return [i for i, (vid, _) in enumerate(dataset.segments) if not dataset.records[vid].is_anomalous]


def compute_masks(model, loader, text_tokens, output_dir, device, logger=None, progress=None) -> dict:
    """Grad-CAM masks for every item of ``loader`` (batches with imgs, path, frame_inds).

    Returns counts: ``{"segments": ..., "videos": ..., "masks": ...}``.
    """
    segments, masks, videos = 0, 0, set()
    iterator = progress(loader) if progress is not None else loader
    for batch in iterator:
        imgs = batch["imgs"]
        if imgs.dim() != 5:
            raise ValueError(f"Grad-CAM needs single-crop segments [B, T, 3, H, W], got {tuple(imgs.shape)}; "
                             "set TEST.NUM_CROP 1")
        saliency = gradcam_saliency(model, model_input(imgs, device), text_tokens).cpu()
        for path, inds, maps in zip(batch["path"], batch["frame_inds"], saliency):
            masks += write_masks(output_dir, path, inds, maps)
            videos.add(path)
        segments += imgs.shape[0]
    if logger is not None:
        logger.info(f"Grad-CAM: {masks} masks for {segments} segments of {len(videos)} normal videos "
                    f"written under {output_dir}")
    return {"segments": segments, "videos": len(videos), "masks": masks}
