"""Byte-pair-encoding tokenizer that reproduces OpenAI CLIP's text token ids.

The merge list (``bpe_simple_vocab_16e6.txt.gz``, see ``VOCAB_SOURCE.md``) is data; this
module is the algorithm: text is cleaned (ftfy, HTML unescape, whitespace collapsed,
lower-cased), split into words by CLIP's regular expression, each word's UTF-8 bytes are
mapped to printable characters, and merges are applied in rank order. The vocabulary is
256 byte symbols, the same with an end-of-word marker ``</w>``, one entry per merge, and
the two special tokens, giving 49,408 ids.
"""
import gzip
import html
from functools import lru_cache
from pathlib import Path

import ftfy
import regex

VOCAB_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
NUM_MERGES = 49152 - 256 - 2
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
WORD_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@lru_cache()
def byte_to_char_table() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character.

    Printable Latin-1 bytes map to themselves; the rest are shifted to code points from
    256 upwards, so no byte maps to whitespace or a control character.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def clean_text(text: str) -> str:
    """ftfy repair, double HTML unescape, whitespace collapse, lower case."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    text = regex.sub(r"\s+", " ", text).strip()
    return text.lower()


class SimpleTokenizer:
    """CLIP BPE tokenizer: ``encode(text) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self, vocab_path: Path | str = VOCAB_PATH):
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
        byte_chars = list(byte_to_char_table().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars]
        vocab += ["".join(pair) for pair in merges]
        vocab += [START_TOKEN, END_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.merge_rank = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = byte_to_char_table()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.cache = {START_TOKEN: START_TOKEN, END_TOKEN: END_TOKEN}

    def bpe(self, word: str) -> str:
        """Apply merges to one word (already byte-mapped); returns space-joined symbols."""
        if word in self.cache:
            return self.cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = {(symbols[i], symbols[i + 1]) for i in range(len(symbols) - 1)}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            merged = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = " ".join(symbols)
        self.cache[word] = result
        return result

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            mapped = "".join(self.byte_encoder[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(mapped).split(" "))
        return ids

    def decode(self, ids) -> str:
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ")
