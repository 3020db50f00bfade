"""The order the protocol's trainings run in: each starts as soon as what it needs exists.

A training is a (branch, round, replicate). IMP's round r needs IMP's round r-1 of its replicate (the weights it
prunes); a baseline of round r (random_prune, random_reinit, oneshot) needs only IMP's round-r ticket of its
replicate (its mask, or its sparsity) and the dense round (theta_k, the dense weights oneshot prunes). So the
baselines of round r can train beside IMP's round r+1, in slots of a pack that would otherwise compute padding.

`Queue` hands out the ready trainings one at a time, IMP's first (every later round waits on them), then the
baselines in the order they became ready. imp.py trains what it hands out; plan.py replays it to count packs.
"""

import collections
import dataclasses
import heapq
from typing import Iterable, Sequence

IMP = "imp"


@dataclasses.dataclass(frozen=True)
class Key:
  """One training of the protocol."""
  branch: str
  round: int
  replicate: int


class Queue:
  """The ready trainings of `replicates`: IMP's rounds 0..rounds and each baseline branch's rounds 1..rounds."""

  def __init__(self, replicates: Iterable[int], rounds: int, branches: Sequence[str]):
    if not branches or branches[0] != IMP:
      raise ValueError(f"branches must start with {IMP!r}: {branches!r}")
    self.rounds, self.baseline_branches = rounds, tuple(branches[1:])
    # IMP's ready rounds as (round, replicate), lowest first: the slowest replicate is never left behind.
    self._imp = [(0, rep) for rep in replicates]
    heapq.heapify(self._imp)
    self._baselines = collections.deque()

  def __bool__(self) -> bool:
    return bool(self._imp or self._baselines)

  def pop(self) -> Key | None:
    """The next ready training (IMP's before the baselines'), or None when none is ready."""
    if self._imp:
      r, rep = heapq.heappop(self._imp)
      return Key(IMP, r, rep)
    return self._baselines.popleft() if self._baselines else None

  def done(self, key: Key, stop: bool = False) -> None:
    """`key`'s ticket exists: what it makes possible becomes ready. For an IMP round: the replicate's next IMP round
    (unless `stop`: it reached the target sparsity, or it was the last round) and, after round 0, the baselines of
    that round."""
    if key.branch != IMP:
      return
    if key.round:
      self._baselines.extend(Key(b, key.round, key.replicate) for b in self.baseline_branches)
    if key.round < self.rounds and not stop:
      heapq.heappush(self._imp, (key.round + 1, key.replicate))


def replicate_groups(replicates: Sequence[int], runs_per_step: int) -> list[list[int]]:
  """The replicates trained as one queue. One run at a time, replicate after replicate (its IMP rounds, then its
  baselines), so a replicate's results come early; packed, every replicate in one queue, to fill the packs."""
  return [[rep] for rep in replicates] if runs_per_step == 1 else [list(replicates)]


def packs(replicates: Sequence[int], rounds: int, branches: Sequence[str], runs_per_step: int) -> list[list[Key]]:
  """The packs a run trains, in order, when every replicate reaches every round (no early stop): each pack takes
  up to `runs_per_step` ready trainings and the next pack starts when it has finished."""
  out = []
  for group in replicate_groups(replicates, runs_per_step):
    queue = Queue(group, rounds, branches)
    while queue:
      pack = []
      while len(pack) < runs_per_step and (key := queue.pop()) is not None:
        pack.append(key)
      for key in pack:
        queue.done(key)
      out.append(pack)
  return out
