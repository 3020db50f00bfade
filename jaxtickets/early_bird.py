"""Early-bird tickets (You et al. 2020): stop the dense round once the mask it would give has settled.

Every `every` steps of the dense round the mask that pruning would give now is drawn (to the next round's
sparsity, or imp.target_sparsity); when the normalised Hamming distance between consecutive masks stays below
`epsilon` for `patience` checks in a row, the dense round stops there and IMP continues from its weights.
"""

import base64
import dataclasses
from typing import Callable

import jax
import numpy as np


def distance(a, b, prunable) -> float:
  """The fraction of prunable weights whose mask entry differs between a and b."""
  differ = total = 0
  for x, y, p in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(prunable)):
    if p:
      differ += int(np.sum(np.asarray(x) != np.asarray(y)))
      total += int(np.size(x))
  return differ / total if total else 0.0


def _pack_bits(masks) -> str:
  flat = np.concatenate([np.asarray(m, bool).ravel() for m in jax.tree.leaves(masks)])
  return base64.b64encode(np.packbits(flat).tobytes()).decode()


def _unpack_bits(text: str, like):
  flat = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8)).astype(bool)
  leaves, out, at = jax.tree.leaves(like), [], 0
  for leaf in leaves:
    n = int(np.size(leaf))
    out.append(flat[at:at + n].reshape(np.shape(leaf)))
    at += n
  return jax.tree.unflatten(jax.tree.structure(like), out)


@dataclasses.dataclass
class Watch:
  """The early-bird test of one dense run; check() after every `every` steps, state() into its checkpoints."""
  every: int
  epsilon: float
  patience: int
  draw: Callable  # params -> the masks pruning would give now
  prunable: dict
  history: list = dataclasses.field(default_factory=list)  # [step, distance to the previous check's mask]
  below: int = 0  # consecutive checks below epsilon
  stop_step: int | None = None
  previous: dict | None = None

  def due(self, step: int) -> bool:
    return self.stop_step is None and step > 0 and step % self.every == 0

  def check(self, step: int, params) -> bool:
    """Draws the mask at `step`; True when the mask has settled (the run stops here)."""
    masks = self.draw(params)
    if self.previous is not None:
      d = distance(self.previous, masks, self.prunable)
      self.history.append([int(step), d])
      self.below = self.below + 1 if d < self.epsilon else 0
    self.previous = masks
    if self.below >= self.patience:
      self.stop_step = int(step)
      return True
    return False

  def state(self) -> dict:
    return {"history": self.history, "below": self.below, "stop_step": self.stop_step,
            "previous": None if self.previous is None else _pack_bits(self.previous)}

  def restore(self, state: dict | None, like) -> None:
    """Continues from a checkpoint's state(); `like` is a masks tree of the run's shapes."""
    if not state:
      return
    self.history = [list(h) for h in state.get("history", [])]
    self.below = int(state.get("below", 0))
    self.stop_step = state.get("stop_step")
    self.previous = None if state.get("previous") is None else _unpack_bits(state["previous"], like)
