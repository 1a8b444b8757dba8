"""The README carries what a user of the field looks for: paper, weights, datasets, citation."""
import re
from pathlib import Path

from models.sources import FRAMESHIELD_MODELS, PUBLISHED_WEIGHTS, XCLIP_ZOO

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def test_paper_and_citation():
    assert "https://arxiv.org/abs/2510.21532" in README and "https://openreview.net/forum?id=7FLKzOqsKd" in README
    entries = re.findall(r"@inproceedings\{(\w+),", README)
    assert entries == ["nafez2025frameshield", "ni2022xclip"]


def test_weights_links_match_the_messages():
    """The links the README gives are the ones a missing-weights message gives (models/sources.py)."""
    for name in PUBLISHED_WEIGHTS:
        assert f"{XCLIP_ZOO}{name}" in README, name
    for benchmark, link in FRAMESHIELD_MODELS:
        assert link in README, benchmark


def test_every_benchmark_has_a_source_and_its_list_format():
    section = README[README.index("## Datasets"):README.index("## Pretrained weights")]
    for folder in ("shanghai", "traffic", "ucf", "msad", "ped2"):
        row = next(line for line in section.splitlines() if f"`configs/{folder}/`" in line)
        assert "columns" in row and ("http" in row or "to be filled" in row), folder
