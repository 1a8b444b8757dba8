"""The command-line flags of the stage scripts: each script lists only the flags it reads.

Groups (``build_arg_parser(description, groups=...)``):

=============  ======================================================  =========================
group          flags                                                   scripts
=============  ======================================================  =========================
(always)       ``-cfg``, ``--opts``, ``--output``, ``--pretrained``,     all
               ``--local-rank``, ``--overwrite``
``resume``     ``--resume``                                            main.py, main_advtrain.py,
                                                                       main_attack.py
``only_test``  ``--only_test``                                         main.py, main_advtrain.py
``training``   ``--batch-size``, ``--accumulation-steps``,              main.py, main_advtrain.py
               ``--w-smooth``, ``--w-sparse``
=============  ======================================================  =========================

``compat``: training flags a script does not read but accepts, hidden from ``--help``,
because the published README's commands pass them (``main_attack.py ... --batch-size 1
--accumulation-steps 8``). They never reach the config: their values land in
``args.ignored_flags`` and the script warns that they are ignored.
"""
import argparse

ALL_GROUPS = ("resume", "only_test", "training")
TRAINING_FLAGS = ("--batch-size", "--accumulation-steps", "--w-smooth", "--w-sparse")


class FlagDefault(float):
    """A float default that get_config can tell apart from the same value typed by the user."""


class _Ignored(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        namespace.ignored_flags = [*getattr(namespace, "ignored_flags", []), option_string]


def build_arg_parser(description="FrameShield", groups=ALL_GROUPS, compat=()):
    """The flags of a stage script: the common ones plus ``groups`` (module docstring);
    ``compat``: flags of TRAINING_FLAGS accepted (hidden) and ignored."""
    from utils.config import W_SMOOTH_DEFAULT, W_SPARSE_DEFAULT

    unknown = set(groups) - set(ALL_GROUPS)
    if unknown:
        raise ValueError(f"unknown flag groups {sorted(unknown)}; choose from {ALL_GROUPS}")
    parser = argparse.ArgumentParser(description=description)
    parser.set_defaults(ignored_flags=[])
    parser.add_argument("-cfg", "--config", required=True, metavar="FILE", help="YAML config file")
    parser.add_argument("--opts", nargs="+", default=None, metavar="KEY VALUE",
                        help="override config keys: --opts TRAIN.LR 1e-5 DATA.NUM_WORKERS 0")
    parser.add_argument("--output", default=None, help="output folder (sets OUTPUT)")
    if "resume" in groups:
        parser.add_argument("--resume", default=None, help="checkpoint to resume from (sets MODEL.RESUME)")
    parser.add_argument("--pretrained", default=None, help="pretrained weights (sets MODEL.PRETRAINED)")
    if "only_test" in groups:
        parser.add_argument("--only_test", action="store_true", help="evaluate only (sets TEST.ONLY_TEST)")
    if "training" in groups:
        parser.add_argument("--batch-size", type=int, default=None, help="sets TRAIN.BATCH_SIZE")
        parser.add_argument("--accumulation-steps", type=int, default=None, help="sets TRAIN.ACCUMULATION_STEPS")
    parser.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=-1,
                        help="local rank (the LOCAL_RANK environment variable, set by torchrun, wins)")
    if "training" in groups:
        parser.add_argument("--w-smooth", type=float, default=FlagDefault(W_SMOOTH_DEFAULT),
                            help="smoothness loss weight; sets TRAIN.W_SMOOTH only when given "
                                 f"(default: the config's value, {W_SMOOTH_DEFAULT} unless changed)")
        parser.add_argument("--w-sparse", type=float, default=FlagDefault(W_SPARSE_DEFAULT),
                            help="sparsity loss weight; sets TRAIN.W_SPARSE only when given "
                                 f"(default: the config's value, {W_SPARSE_DEFAULT} unless changed)")
    else:
        for flag in compat:
            if flag not in TRAINING_FLAGS:
                raise ValueError(f"compat flags are among {TRAINING_FLAGS}, got {flag!r}")
            parser.add_argument(flag, dest=f"ignored_{flag[2:].replace('-', '_')}", action=_Ignored,
                                help=argparse.SUPPRESS)
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into an output folder that holds another run's results")
    return parser


def warn_ignored(args, script, logger):
    """Log the compat flags given to ``script`` that it does not read."""
    if getattr(args, "ignored_flags", None):
        logger.warning(f"{script} does not train: {', '.join(args.ignored_flags)} ignored "
                       "(the published commands pass them; batch sizes of an evaluation are TEST.BATCH_SIZE "
                       "and ATTACK.BATCH_SIZE)")


def _number_type(convert, check, requirement: str, hint: str = ""):
    """An argparse ``type=``: ``convert`` the text and require ``check`` of the number, so a bad
    value is argparse's usage error (exit code 2) that names the flag, before any work starts."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if convert is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}" + (f" ({hint})" if hint else ""))
        return value
    parse.__name__ = f"{convert.__name__} {requirement}"
    return parse


def positive_int(hint: str = ""):
    """type= for a count that must be >= 1."""
    return _number_type(int, lambda v: v >= 1, ">= 1", hint)


def non_negative_int(hint: str = ""):
    """type= for a count or index that must be >= 0 (0 often meaning 'automatic')."""
    return _number_type(int, lambda v: v >= 0, ">= 0", hint)

