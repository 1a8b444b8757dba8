"""Training curves: every scalar a stage produces, as ``OUTPUT/metrics.csv`` and TensorBoard events.

What is logged (rank 0 only; the other ranks get :class:`NoScalars`):

- one ``train`` row per optimizer step: ``step`` (1-based optimizer step), ``epoch`` (1-based,
  the epoch being trained), ``loss_<part>`` (each loss part the step function returns,
  averaged over the micro-batches of the accumulation group on rank 0), ``lr`` (the LR the
  step ran at) and ``grad_norm`` (L2 norm of all gradients before clipping);
- one ``eval`` row per evaluation: ``step``, ``epoch`` (epochs done), ``auc_all``, ``auc_ano``,
  ``ap`` and, where the stage attacks (main_attack.py), ``adv_auc_all``, ``adv_auc_ano``,
  ``adv_ap``.

``metrics.csv`` is always written (header from the columns seen so far: a new column rewrites
the file once, atomically; rows are appended and flushed otherwise). TensorBoard event files
go to ``OUTPUT/tb/`` when ``TRAIN.TENSORBOARD`` is on and the ``tensorboard`` package is
installed (tags ``train/loss_<part>``, ``train/lr``, ``train/grad_norm``, ``test/<metric>``,
``test_adv/<metric>``; the x axis is the optimizer step).

Resuming: rows after the resumed position (later steps, later evaluations; a killed run may
have logged them before its last checkpoint) are dropped from the CSV, and the event writer
purges the same steps (``purge_step``), so the curves of a resumed run equal those of an
uninterrupted one.
"""
import csv
import io
import logging
import math
import time
from pathlib import Path

from utils.io import atomic_write_text

CSV_NAME = "metrics.csv"
TB_DIR = "tb"
FIXED_COLUMNS = ("kind", "step", "epoch", "time")
EVAL_METRICS = ("auc_all", "auc_ano", "ap")


def read_metrics(path) -> list[dict]:
    """Rows of a metrics.csv as dicts: numbers as float (``step``/``epoch`` as int), empty
    cells as None. A torn last line (a run killed mid-write) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            return []
        for values in reader:
            if len(values) != len(header):
                continue
            row = dict(zip(header, values))
            try:
                parsed = {"kind": row["kind"], "step": int(row["step"]), "epoch": int(row["epoch"])}
            except (KeyError, ValueError):
                continue
            for key, value in row.items():
                if key not in parsed:
                    parsed[key] = _number(value)
            rows.append(parsed)
    return rows


def _number(text):
    if text in ("", None):
        return None
    try:
        return float(text)
    except ValueError:
        return text


class GroupMean:
    """Mean of the loss parts of the micro-batches of one accumulation group."""

    def __init__(self):
        self.sums, self.count = {}, 0

    def add(self, parts):
        for key, value in parts.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def mean(self):
        return {k: v / max(1, self.count) for k, v in self.sums.items()}


class NoScalars:
    """What every rank but 0 logs to: nothing."""

    active = False  # the engine measures the gradient norm only for an active log
    csv_path = None
    tb_dir = None

    def train_step(self, step, epoch, parts, lr, grad_norm):
        pass

    def evaluation(self, step, epoch, metrics, adversarial=None):
        pass

    def close(self):
        pass

    def paths(self):
        return {"metrics_csv": None, "tensorboard": None}


class ScalarLog(NoScalars):
    """metrics.csv (always) and TensorBoard events (optional) of one output folder.

    ``resume``: (step, epoch) of the checkpoint a run continues from; None for a fresh training
    run (which starts an empty metrics.csv and purges older events of the folder); "append"
    for an evaluation-only stage (main.py --only_test, main_attack.py), which adds its rows to
    whatever the folder holds.
    """

    active = True

    def __init__(self, output, tensorboard=True, resume=None, log=None):
        log = log or logging.getLogger("FrameShield")
        self.csv_path = Path(output) / CSV_NAME
        self.rows, self.columns = [], list(FIXED_COLUMNS)
        append = resume == "append"
        step, epoch = resume if resume not in (None, "append") else (0, 0)
        if resume is not None:
            self.rows = [r for r in read_metrics(self.csv_path)
                         if append or (r["step"] <= step if r["kind"] == "train" else r["epoch"] <= epoch)]
            for row in self.rows:
                self.columns += [k for k in row if k not in self.columns]
        self._rewrite()
        self.writer, self.tb_dir = None, None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("TRAIN.TENSORBOARD: the tensorboard package is not installed; scalars go to "
                         f"{self.csv_path} only (pip install tensorboard for event files)")
            else:
                self.tb_dir = Path(output) / TB_DIR
                # purge_step: TensorBoard drops the events of steps >= it written before this run
                self.writer = SummaryWriter(log_dir=str(self.tb_dir), purge_step=None if append else step + 1,
                                            flush_secs=30)

    # ------------------------------------------------------------------ writing
    def _line(self, row):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(["" if row.get(c) is None else _cell(row[c])
                                                          for c in self.columns])
        return buffer.getvalue()

    def _rewrite(self):
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow(self.columns)
        atomic_write_text(self.csv_path, header.getvalue() + "".join(self._line(r) for r in self.rows))

    def _append(self, row):
        self.rows.append(row)
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns += new
            self._rewrite()
            return
        with open(self.csv_path, "a", encoding="utf-8", newline="") as handle:
            handle.write(self._line(row))

    def train_step(self, step, epoch, parts, lr, grad_norm):
        """One optimizer step: its (group-mean) loss parts, LR and gradient norm."""
        row = {"kind": "train", "step": int(step), "epoch": int(epoch), "time": round(time.time(), 3),
               **{f"loss_{k}": float(v) for k, v in parts.items()}, "lr": float(lr),
               "grad_norm": None if grad_norm is None else float(grad_norm)}
        self._append(row)
        if self.writer is not None:
            for key in row:
                if key not in FIXED_COLUMNS and row[key] is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], step)

    def evaluation(self, step, epoch, metrics, adversarial=None):
        """One evaluation: clean AUC@all/AUC@ano/AP and, after an attack, the attacked ones."""
        row = {"kind": "eval", "step": int(step), "epoch": int(epoch), "time": round(time.time(), 3)}
        row.update({m: _finite(metrics.get(m)) for m in EVAL_METRICS})
        if adversarial is not None:
            row.update({f"adv_{m}": _finite(adversarial.get(m)) for m in EVAL_METRICS})
        self._append(row)
        if self.writer is not None:
            for key in row:
                if key not in FIXED_COLUMNS and row[key] is not None:
                    tag = f"test_adv/{key[4:]}" if key.startswith("adv_") else f"test/{key}"
                    self.writer.add_scalar(tag, row[key], step)
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def paths(self):
        return {"metrics_csv": str(self.csv_path), "tensorboard": str(self.tb_dir) if self.tb_dir else None}


def _cell(value):
    return repr(value) if isinstance(value, float) else str(value)


def _finite(value):
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def open_scalars(stage, resume=None):
    """The stage's :class:`ScalarLog` on rank 0 (TRAIN.TENSORBOARD decides about events),
    :class:`NoScalars` elsewhere. ``resume``: see :class:`ScalarLog`."""
    if not stage.is_main:
        return NoScalars()
    return ScalarLog(stage.output, tensorboard=stage.cfg.TRAIN.TENSORBOARD, resume=resume, log=stage.logger)


def log_evaluation(stage, metrics, adversarial=None) -> dict:
    """One ``eval`` row (step 0, epoch 0) from an evaluation-only stage; returns the paths."""
    scalars = open_scalars(stage, resume="append")
    try:
        scalars.evaluation(0, 0, metrics, adversarial)
    finally:
        scalars.close()
    return scalars.paths()
