"""Every attack by name behind one signature, and one attack configuration (AttackSetting).

Names: "pgd" (attacks.pgd), "apgd-ce" / "apgd-margin" (attacks.apgd), "square"
(attacks.square) and "transfer" (clips crafted on a source model with one of the others,
to be scored on the target). Conventions as in attacks.common.
"""
from dataclasses import dataclass

from attacks.apgd import apgd
from attacks.pgd import pgd
from attacks.square import DEFAULT_P_INIT, square
from utils.errors import ConfigError

WHITE_BOX = ("pgd", "apgd-ce", "apgd-margin")
GRADIENT_FREE = ("square",)


def _apgd_ce(model, videos, text_tokens, clip_labels, eps, steps=100, **kw):
    kw.pop("step_size", None)
    return apgd(model, videos, text_tokens, clip_labels, eps, steps=steps, loss="ce", **kw)


def _apgd_margin(model, videos, text_tokens, clip_labels, eps, steps=100, **kw):
    kw.pop("step_size", None)
    return apgd(model, videos, text_tokens, clip_labels, eps, steps=steps, loss="margin", **kw)


def _square(model, videos, text_tokens, clip_labels, eps, steps=1000, **kw):
    kw.pop("step_size", None)
    return square(model, videos, text_tokens, clip_labels, eps, steps=steps, **kw)


SOURCE_ATTACKS = {"pgd": pgd, "apgd-ce": _apgd_ce, "apgd-margin": _apgd_margin, "square": _square}


def transfer(source_model, videos, text_tokens, clip_labels, eps, steps=10, source_attack="pgd", **kwargs):
    """Adversarial videos crafted on ``source_model`` with ``source_attack`` ("pgd",
    "apgd-ce", "apgd-margin", "square"); score them on the target model yourself."""
    if source_attack not in SOURCE_ATTACKS:
        raise ConfigError(f"unknown transfer source attack {source_attack!r}; choose one of {sorted(SOURCE_ATTACKS)}")
    if source_attack != "pgd":
        kwargs.pop("step_size", None)
    return SOURCE_ATTACKS[source_attack](source_model, videos, text_tokens, clip_labels, eps, steps=steps, **kwargs)


def _transfer(model, videos, text_tokens, clip_labels, eps, steps=10, source_model=None, **kw):
    if source_model is None:
        raise ConfigError("the transfer attack needs a source model (--transfer-from CKPT)")
    return transfer(source_model, videos, text_tokens, clip_labels, eps, steps=steps, **kw)


ATTACKS = {**SOURCE_ATTACKS, "transfer": _transfer}


def run_attack(name, model, videos, text_tokens, clip_labels, eps, steps, generator=None, **kw):
    """Adversarial videos [N, T, 3, H, W] from the attack registered as ``name``.

    videos [N, T, 3, H, W] in [0, 1]; clip_labels [N] (0 normal, > 0 anomalous); eps in
    [0, 1] units; steps = gradient steps (queries for "square"; the source attack's steps
    for "transfer"). Keyword arguments go to the attack: restarts, random_start,
    step_size (pgd), amp_dtype, source_model / source_attack (transfer), p_init (square).
    """
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; choose one of {sorted(ATTACKS)}")
    return ATTACKS[name](model, videos, text_tokens, clip_labels, eps, steps=steps, generator=generator, **kw)


@dataclass(frozen=True)
class AttackSetting:
    """One attack configuration. eps in [0, 1] units; steps = queries for square."""

    attack: str
    eps: float
    steps: int
    restarts: int = 1
    random_start: bool = False
    step_size: float | None = None  # pgd / transfer only; None = 2.5 * eps / steps
    p_init: float = DEFAULT_P_INIT  # square only: initial fraction of pixels a square covers

    @property
    def key(self) -> str:
        size = "" if self.step_size is None else f",a={self.step_size * 255:g}"
        start = ",rs" if self.random_start else ""
        square_p = f",p={self.p_init:g}" if self.attack == "square" else ""
        return f"{self.attack}(eps={self.eps * 255:g}/255,steps={self.steps},R={self.restarts}{start}{size}{square_p})"

    def kwargs(self) -> dict:
        """Keyword arguments of :func:`run_attack` beyond model, videos, labels, eps, steps."""
        kw = {"restarts": self.restarts, "random_start": self.random_start}
        if self.attack in ("pgd", "transfer") and self.step_size is not None:
            kw["step_size"] = self.step_size
        if self.attack == "square":
            kw["p_init"] = self.p_init
        return kw
