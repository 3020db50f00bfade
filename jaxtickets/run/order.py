"""The order the protocol's trainings run in: each starts as soon as what it needs exists.

A training is a (branch, round, replicate). IMP's round r needs IMP's round r-1 of its replicate (the weights it
prunes); a baseline of round r (random_prune, random_reinit, oneshot) needs only IMP's round-r ticket of its
replicate (its mask, or its sparsity) and the dense round (theta_k, the dense weights oneshot prunes). So the
baselines of round r can train beside IMP's round r+1, in slots of a pack that would otherwise compute padding.

`Queue` hands out the ready trainings one at a time, IMP's first (every later round waits on them), then the
baselines in the order they became ready. imp.py trains what it hands out; `phases` replays it to count the packs
of each part of the protocol (what jaxtickets.plan prices).
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


# ----------------------------------------------------------------------------- the protocol in packs (the planner)


@dataclasses.dataclass(frozen=True)
class Phase:
  """A part of the protocol the schedule trains as one queue of packs."""
  name: str
  trainings: int  # the runs it trains
  packs: int  # packed steps' worth of sequences: each pack trains side by side for `steps` steps
  steps: int  # per pack
  runs_per_step: int

  @property
  def slots(self) -> int:
    return self.packs * self.runs_per_step

  @property
  def utilisation(self) -> float:
    """Busy slots over slots: a padded slot computes a copy of a run that never moves."""
    return self.trainings / self.slots if self.slots else 0.0


def phases(protocol, steps: int, runs_per_step: int, replicates: int | None = None) -> list[Phase]:
  """The phases of a settings.Protocol as imp trains them (the order `packs` gives, no early stops), rounds of
  `steps` steps: the dense round; IMP's rounds with the baselines that are ready beside them; the baselines left when
  IMP has finished. Packs with the dense round train all `steps`, the others from the rewind step on."""
  packs = _packs(protocol, runs_per_step, replicates)
  kinds = [0 if any(k.round == 0 for k in p) else 1 if any(k.branch == IMP for k in p) else 2
           for p in packs]
  beside = sum(k.branch != IMP for p, kind in zip(packs, kinds) if kind == 1 for k in p)
  named = {0: "dense round 0",
           1: f"IMP rounds 1-{protocol.rounds}" + (f" + {beside} baselines beside" if beside else ""),
           2: f"baselines after IMP ({', '.join(protocol.branches[1:])})"}
  return [Phase(named[kind], trainings=sum(len(p) for p, k in zip(packs, kinds) if k == kind),
                packs=kinds.count(kind), steps=steps if kind == 0 else steps - protocol.rewind_step,
                runs_per_step=runs_per_step)
          for kind in (0, 1, 2) if kind in kinds]


def most_ready(protocol, runs_per_step: int) -> int:
  """The most trainings any pack of the protocol has ready: slots beyond it only ever compute padding."""
  return max(len(p) for p in _packs(protocol, runs_per_step))


def _packs(protocol, runs_per_step: int, replicates: int | None = None) -> list:
  """packs() of the protocol (with `replicates` instead of its own, if given)."""
  return packs(range(replicates or protocol.replicates), protocol.rounds, list(protocol.branches), runs_per_step)


def free_replicates(protocol, steps: int, runs_per_step: int) -> int:
  """The most replicates that train in as many packed steps as the protocol's replicates do (at least that many):
  idle slots of a big slice hold more replicates for no more time."""
  packed = lambda reps: sum(p.packs * p.steps for p in phases(protocol, steps, runs_per_step, reps))
  base, reps = packed(protocol.replicates), protocol.replicates
  while reps < runs_per_step and packed(reps + 1) <= base:
    reps += 1
  return reps
