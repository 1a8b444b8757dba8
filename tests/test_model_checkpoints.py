"""Checkpoint round trips, architecture inference, T interpolation and pickle safety."""
import pickle
import warnings
import zipfile
from typing import Dict, List

import numpy as np
import pytest
import torch
from yacs.config import CfgNode

from clip import tokenize
from clip.model import CLIP
from models import xclip
from models.checkpoint_io import read_state_dict, save_safetensors
from utils.errors import CheckpointError, UnsafeCheckpointError

T = 3
TOKENS = tokenize(["normal", "abnormal"])


def tiny(seed=0, frames=T):
    torch.manual_seed(seed)
    return xclip.load(None, "tiny", T=frames)[0]


def logits(model, seed=1):
    frames = model.num_frames
    v = torch.rand(2, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(v, TOKENS)["y"]


def tiny_clip():
    torch.manual_seed(5)
    arch = xclip.ARCH_PRESETS["tiny"]
    return CLIP(arch["embed_dim"], arch["image_resolution"], arch["vision_layers"],
                arch["vision_width"], arch["vision_patch_size"], arch["context_length"],
                arch["vocab_size"], arch["transformer_width"], 1,
                arch["transformer_layers"]).eval()


def test_legacy_training_pickle_with_cfgnode(tmp_path):
    model = tiny()
    cfg = CfgNode({"MODEL": CfgNode({"ARCH": "ViT-B/16"}), "TRAIN": CfgNode({"LR": 8e-6})})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    path = tmp_path / "ckpt_epoch_1.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "max_accuracy": np.float64(0.75), "epoch": 1, "config": cfg}, path)
    state, meta = read_state_dict(path)
    assert meta["format"] == "legacy_pickle_training_checkpoint"
    assert meta["config"].MODEL.ARCH == "ViT-B/16" and meta["epoch"] == 1
    # MODEL.ARCH in the file and the name argument do not decide the architecture
    loaded, _, returned_path = xclip.load(path, "ViT-L/14", T=T)
    assert returned_path == path and loaded.input_resolution == 64
    assert torch.equal(logits(loaded), logits(model))


def test_legacy_non_zip_format_and_ddp_prefix(tmp_path):
    model = tiny()
    path = tmp_path / "old.pth"
    state = {"module." + k: v for k, v in model.state_dict().items()}
    torch.save({"model": state, "config": CfgNode({"A": 1})}, path,
               _use_new_zipfile_serialization=False)
    assert torch.equal(logits(xclip.load(path, T=T)[0]), logits(model))


def test_safetensors_round_trip(tmp_path):
    model = tiny()
    path = tmp_path / "best.safetensors"
    save_safetensors(model.state_dict(), path, metadata={"epoch": 3})
    state, meta = read_state_dict(path)
    assert meta["format"] == "safetensors" and meta["metadata"] == {"epoch": "3"}
    assert torch.equal(logits(xclip.load(path, T=T)[0]), logits(model))
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_bare_state_dict_round_trip(tmp_path):
    model = tiny()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    assert read_state_dict(tmp_path / "sd.pt")[1]["format"] == "torch_state_dict"
    assert torch.equal(logits(xclip.load(tmp_path / "sd.pt", T=T)[0]), logits(model))


def test_torchscript_archive_is_read_without_running_code(tmp_path):
    clip_model = tiny_clip()
    del clip_model.context_length  # OpenAI archives carry these as 0-d tensors
    for name, value in (("input_resolution", 64), ("context_length", 77), ("vocab_size", 49408)):
        clip_model.register_buffer(name, torch.tensor(value))
    example = (torch.rand(1, 3, 64, 64), TOKENS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(clip_model, example, check_trace=False)
    archive = tmp_path / "ViT-tiny.pt"
    traced.save(str(archive))
    state, meta = read_state_dict(archive)
    assert meta["format"] == "torchscript"
    expected = clip_model.state_dict()
    assert set(state) == set(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)

    # Loading the archive gives the same model as loading the plain state dict.
    plain = {k: v for k, v in expected.items() if v.ndim or k == "logit_scale"}
    torch.save(plain, tmp_path / "plain.pt")
    torch.manual_seed(7)
    from_archive = xclip.load(archive, T=T)[0]
    torch.manual_seed(7)
    from_plain = xclip.load(tmp_path / "plain.pt", T=T)[0]
    assert torch.equal(logits(from_archive), logits(from_plain))
    with torch.no_grad():
        torch.testing.assert_close(from_archive.encode_text(TOKENS),
                                   clip_model.encode_text(TOKENS))
    assert "input_resolution" not in from_archive.state_dict()


def test_mit_positional_embedding_is_interpolated(tmp_path):
    model = tiny(frames=4)
    with torch.no_grad():
        model.mit.positional_embedding.copy_(
            torch.arange(4.0).view(1, 4, 1).expand(1, 4, 64))
    path = tmp_path / "t4.safetensors"
    save_safetensors(model.state_dict(), path)
    same = xclip.load(path, T=4)[0]
    assert torch.equal(same.mit.positional_embedding, model.mit.positional_embedding)
    longer = xclip.load(path, T=7)[0]
    assert longer.num_frames == 7
    expected = torch.linspace(0, 3, 7).view(1, 7, 1).expand(1, 7, 64)
    torch.testing.assert_close(longer.mit.positional_embedding, expected)
    assert logits(longer).shape == (2, 2)
    state = dict(longer.state_dict())
    for key in state:
        if key != "mit.positional_embedding":
            assert torch.equal(state[key], model.state_dict()[key])


def test_allowed_missing_keys(tmp_path):
    model = tiny()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head_video.")}
    torch.save(state, tmp_path / "k400.pth")  # X-CLIP K400 files have no head_video
    loaded = xclip.load(tmp_path / "k400.pth", T=T)[0]
    torch.testing.assert_close(loaded.head_video.weight, torch.eye(64))
    assert torch.equal(logits(loaded), logits(model))  # identity head: same computation

    state.pop("prompts_generator.alpha")  # a genuine X-CLIP key missing is an error
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth.*prompts_generator\.alpha"):
        xclip.load(tmp_path / "broken.pth", T=T)


def test_depths_are_inferred_from_keys(tmp_path):
    torch.manual_seed(0)
    model = xclip.build_model(None, xclip.ARCH_PRESETS["tiny"], T=T, mit_layers=2,
                              prompts_layers=1)
    torch.save(model.state_dict(), tmp_path / "deep.pt")
    loaded = xclip.load(tmp_path / "deep.pt", T=T, mit_layers=1, prompts_layers=2)[0]
    assert len(loaded.mit.resblocks) == 2 and len(loaded.prompts_generator.decoder) == 1


def test_wrong_architecture_names_the_keys(tmp_path):
    state = dict(tiny().state_dict())
    state["visual.transformer.resblocks.0.extra.weight"] = torch.zeros(3)
    del state["visual.transformer.resblocks.1.ln_2.bias"]
    state["mit.resblocks.0.mlp.c_fc.weight"] = torch.zeros(128, 64)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError) as info:
        xclip.load(tmp_path / "wrong.pt", T=T)
    message = str(info.value)
    assert "wrong.pt" in message
    assert "visual.transformer.resblocks.0.extra.weight" in message
    assert "visual.transformer.resblocks.1.ln_2.bias" in message
    assert "mit.resblocks.0.mlp.c_fc.weight" in message


def test_not_a_clip_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt.*visual.conv1.weight"):
        xclip.load(tmp_path / "other.pt")


class RunsCode:
    """Unpickling this calls ``exec``, which would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


@pytest.mark.parametrize("zip_format", [True, False])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "config": CfgNode({"A": 1}),
                "payload": RunsCode(marker)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(UnsafeCheckpointError, match="builtins.exec"):
        read_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        xclip.load(path, T=T)
    assert not marker.exists()


def test_malicious_torchscript_archive_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil_ts/constants.pkl", pickle.dumps(()))
        archive.writestr("evil_ts/data.pkl", pickle.dumps(RunsCode(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="exec"):
        read_state_dict(path)
    assert not marker.exists()


def test_truncated_and_corrupt_files(tmp_path):
    model = tiny()
    good_st = tmp_path / "good.safetensors"
    save_safetensors(model.state_dict(), good_st)
    torch.save({"model": model.state_dict(), "config": CfgNode({"A": 1})}, tmp_path / "g.pth")
    cases = {
        "cut.safetensors": good_st.read_bytes()[: good_st.stat().st_size // 2],
        "cut.pth": (tmp_path / "g.pth").read_bytes()[:5000],
        "noise.pth": bytes(range(256)) * 10,
        "empty.pth": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
            read_state_dict(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pth")


class MaskedLinear(torch.nn.Module):
    """A scriptable module: a parameter, a buffer, a plain tensor and typed containers."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)
        self.register_buffer("scale", torch.ones(3))
        self.attn_mask = torch.ones(3, 3)
        self.sizes: List[int] = [1, 2]
        self.factors: Dict[str, float] = {"a": 1.0}

    def forward(self, x):
        y = (self.lin(x) * self.scale) @ self.attn_mask
        return y * self.sizes[0] * self.factors["a"]


def test_scripted_archive_keeps_only_parameters_and_buffers(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(MaskedLinear())
    scripted.save(str(tmp_path / "scripted.pt"))
    state, _ = read_state_dict(tmp_path / "scripted.pt")
    assert sorted(state) == ["lin.bias", "lin.weight", "scale"]  # no attn_mask
    assert torch.equal(state["lin.weight"], scripted.lin.weight)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("zip_format", [True, False])
def test_damaged_bytes_raise_only_checkpoint_errors(tmp_path, zip_format):
    """Flipped or cut bytes either still load or raise CheckpointError, never anything else."""
    source = tmp_path / "small.pth"
    torch.save({"model": {"w": torch.arange(6.0)}, "config": CfgNode({"A": 1}),
                "max_accuracy": np.float64(0.5)}, source, _use_new_zipfile_serialization=zip_format)
    data = source.read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(25):
        damaged = bytearray(data)
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(1, len(data)))]
        else:
            for pos in rng.integers(0, len(data), size=3):
                damaged[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"damaged_{trial}.pth"
        path.write_bytes(bytes(damaged))
        try:
            state, _ = read_state_dict(path)
        except CheckpointError as err:
            assert path.name in str(err)
        else:
            assert all(torch.is_tensor(v) for v in state.values())


def test_unknown_preset():
    with pytest.raises(CheckpointError, match="unknown model preset"):
        xclip.load(None, "ViT-H/99")
