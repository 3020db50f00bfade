"""Early-bird tickets (You et al. 2020): stop the dense round once the mask it would give has settled.

Every `every` steps of the dense round the mask that pruning would give now is drawn (to the next round's
sparsity, or imp.target_sparsity); when the distance between consecutive masks (distance(): 0 for the same mask,
about 1 for unrelated masks of that sparsity) stays below `epsilon` for `patience` checks in a row, the dense round
stops there and IMP continues from its weights. It never stops before `min_step`, the rewind point k, whose weights
theta_k the pruned rounds start from.
"""

import base64
import dataclasses
from typing import Callable

import jax
import numpy as np


def distance(a, b, prunable) -> float:
  """The Hamming distance of two masks over the prunable weights, relative to that of two unrelated masks.

  Two independent random masks pruning fractions s_a and s_b of the weights differ at s_a (1 - s_b) + s_b (1 - s_a)
  of them (2 s (1 - s) at equal sparsity: 0.32 at s = 0.2, but 0.095 at s = 0.95), so the raw fraction would call
  unrelated masks close at a high sparsity. Over that chance level, unrelated masks score about 1 at any sparsity
  and identical ones 0.
  """
  differ = total = pruned_a = pruned_b = 0
  for x, y, p in zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(prunable)):
    if p:
      x, y = np.asarray(x, bool), np.asarray(y, bool)
      differ += int(np.count_nonzero(x != y))
      pruned_a += int(x.size - np.count_nonzero(x))
      pruned_b += int(y.size - np.count_nonzero(y))
      total += int(x.size)
  if not total:
    return 0.0
  s_a, s_b = pruned_a / total, pruned_b / total
  chance = s_a * (1 - s_b) + s_b * (1 - s_a)
  return differ / total / chance if chance else 0.0  # no chance difference: both all kept or both all pruned


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
  min_step: int = 0  # never stops before this step (imp.rewind_step: theta_k must be saved first)
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
    if self.below >= self.patience and step >= self.min_step:
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
