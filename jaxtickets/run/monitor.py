"""TensorBoard event files in the workdir (tensorboardX, no TensorFlow): `tensorboard --logdir=WORKDIR/tensorboard`.

Runs (TensorBoard's curves that share a chart):
  <branch>/rep_<r>/round_NN  training: train/total, train/<each metric the model names> (content, style, ...;
                             AdaAttN's global, local), train/lr, train/steps_per_sec against the global step, so
                             every round of a branch overlays on the same axes
  <branch>/rep_<r>           one point per round (step = round): eval/*, sparsity/prunable, sparsity/total,
                      layer_sparsity/<layer>, and a few stylized held-out pairs as images
Only process 0 writes (the default); a disabled Monitor does nothing and creates no files.
"""

import numbers
import os
import sys

import jax
import numpy as np

from jaxtickets.store import workdir as workdir_lib

MAX_IMAGES = 4


def _scalar(value) -> float | None:
  """A float for numbers, numpy/jax scalars and bools; None for anything else (strings, arrays)."""
  if isinstance(value, (bool, np.bool_)):
    return float(value)
  if isinstance(value, numbers.Number):
    return float(value)
  if isinstance(value, (np.ndarray, np.generic, jax.Array)) and np.size(value) == 1:
    return float(np.asarray(value).reshape(()))
  return None


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch: tensorboardX imports torch whenever it is installed,
  only to accept torch tensors, which jaxtickets never passes, and that import would slow every run's start-up."""
  hide_torch = "torch" not in sys.modules
  if hide_torch:
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile, which tensorboardX handles
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top  (only process 0 needs it)
  finally:
    if hide_torch:
      del sys.modules["torch"]  # a later `import torch` (e.g. porting weights) finds it as usual
  return SummaryWriter


class Monitor:
  """Writes scalars and images for TensorBoard; a no-op when disabled (processes other than 0)."""

  def __init__(self, workdir: str, enabled: bool | None = None, flush_secs: int = 30):
    self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
    self.logdir = workdir_lib.tensorboard_dir(workdir)
    self.flush_secs = flush_secs
    self._writers = {}

  def _writer(self, run: str):
    if run not in self._writers:
      self._writers[run] = _summary_writer_class()(logdir=os.path.join(self.logdir, run), flush_secs=self.flush_secs)
    return self._writers[run]

  def scalars(self, run: str, step: int, values: dict, prefix: str = "") -> None:
    """Every numeric entry of `values` as `prefix/name` at `step`; other entries are skipped."""
    if not self.enabled:
      return
    writer = self._writer(run)
    for name, value in values.items():
      v = _scalar(value)
      if v is not None:
        writer.add_scalar(f"{prefix}/{name}" if prefix else name, v, int(step))

  def images(self, run: str, tag: str, step: int, images) -> None:
    """Up to MAX_IMAGES NHWC float images (clipped to [0, 1])."""
    if not self.enabled:
      return
    batch = np.clip(np.asarray(images, np.float32)[:MAX_IMAGES], 0.0, 1.0)
    self._writer(run).add_images(tag, batch, int(step), dataformats="NHWC")

  def train_step(self, branch: str, round_: int, step: int, metrics: dict, lr: float | None = None,
                 steps_per_sec: float | None = None) -> None:
    """One logged training step of a round: its losses, learning rate and speed."""
    extra = {k: v for k, v in (("lr", lr), ("steps_per_sec", steps_per_sec)) if v is not None}
    self.scalars(f"{branch}/round_{round_:02d}", step, {**metrics, **extra}, "train")

  def round_end(self, branch: str, round_: int, metrics: dict, sparsity_report: dict | None = None,
                images=None) -> None:
    """A finished round: eval metrics, sparsity (total and per layer) and a few stylized samples."""
    if not self.enabled:
      return
    self.scalars(branch, round_, metrics, "eval")
    if sparsity_report:
      self.scalars(branch, round_, {"prunable": sparsity_report["prunable"]["sparsity"],
                                    "total": sparsity_report["total"]["sparsity"]}, "sparsity")
      self.scalars(branch, round_, {k: e["sparsity"] for k, e in sparsity_report.get("layers", {}).items()},
                   "layer_sparsity")
    if images is not None:
      self.images(branch, "stylized", round_, images)
    self.flush()

  def flush(self) -> None:
    for writer in self._writers.values():
      writer.flush()

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
    self._writers = {}

  def __enter__(self) -> "Monitor":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
