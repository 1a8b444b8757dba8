"""Vendored CLIP: building blocks (``clip.model``) and the BPE tokenizer.

``from clip import tokenize`` is the published entry point; the model code is imported
only when ``clip.model`` is.
"""
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def _tokenizer():
    from clip.simple_tokenizer import SimpleTokenizer

    return SimpleTokenizer()


def tokenize(texts, context_length: int = 77, truncate: bool = False) -> torch.Tensor:
    """Token ids of ``texts`` (a string or list of strings) as LongTensor [N, context_length].

    Each row is ``<start> ids... <end>`` zero-padded. A text too long for the context raises
    ValueError unless ``truncate`` is set, in which case it is cut and still ends with <end>.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = _tokenizer()
    start, end = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for row, text in enumerate(texts):
        ids = [start] + tok.encode(text) + [end]
        if len(ids) > context_length:
            if not truncate:
                raise ValueError(
                    f"text {text[:40]!r}... has {len(ids)} tokens, more than the context "
                    f"length {context_length}; shorten it or pass truncate=True"
                )
            ids = ids[:context_length]
            ids[-1] = end
        result[row, : len(ids)] = torch.tensor(ids)
    return result
