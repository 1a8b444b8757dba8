"""CLIP BPE tokenizer: vocabulary integrity and known token ids."""
import hashlib

import pytest
import torch

from clip import tokenize
from clip.simple_tokenizer import VOCAB_PATH, SimpleTokenizer

VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_vocab_file_is_the_published_one():
    assert hashlib.sha256(VOCAB_PATH.read_bytes()).hexdigest() == VOCAB_SHA256


def test_vocab_size_is_49408():
    tok = SimpleTokenizer()
    assert len(tok.encoder) == 49408
    assert tok.encoder["<|startoftext|>"] == 49406
    assert tok.encoder["<|endoftext|>"] == 49407


def test_class_name_ids():
    ids = tokenize(["normal", "abnormal"])
    assert ids.shape == (2, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [49406, 5967, 49407, 0]
    assert ids[1, :4].tolist() == [49406, 40934, 49407, 0]
    assert ids[:, 4:].abs().sum() == 0


def test_sentence_ids_and_cleaning():
    expected = [49406, 320, 1125, 539, 320, 1929, 269, 49407]
    assert tokenize("a photo of a dog.")[0, :8].tolist() == expected
    # case, surrounding whitespace and HTML entities are normalised away
    assert torch.equal(tokenize("  A   PHOTO of a dog.\n"), tokenize("a photo of a dog."))
    assert torch.equal(tokenize("a photo &amp;amp; a dog"), tokenize("a photo & a dog"))


def test_decode_round_trip():
    tok = SimpleTokenizer()
    assert tok.decode(tok.encode("abnormal event")).strip() == "abnormal event"


def test_too_long_text():
    long_text = "word " * 100
    with pytest.raises(ValueError, match="context length"):
        tokenize(long_text)
    ids = tokenize(long_text, truncate=True)
    assert ids.shape == (1, 77) and ids[0, -1].item() == 49407
    assert tokenize("normal", context_length=8).shape == (1, 8)
