"""The protocol's order: every training once, after what it needs, and never a padded slot where one could run."""

import itertools

import pytest

from jaxtickets.run import order
from jaxtickets.run.order import Key


def needs(key: Key) -> list[Key]:
  """What a training needs, written out from the protocol (not from the queue)."""
  if key.branch == "imp":
    return [Key("imp", key.round - 1, key.replicate)] if key.round else []
  return [Key("imp", key.round, key.replicate), Key("imp", 0, key.replicate)]


def test_baselines_fill_the_slots_beside_later_imp_rounds():
  packs = order.packs([0, 1, 2], rounds=3, branches=["imp", "random_prune"], runs_per_step=4)
  imp = lambda r: [Key("imp", r, rep) for rep in (0, 1, 2)]
  prune = lambda r, rep: Key("random_prune", r, rep)
  assert packs == [imp(0), imp(1), imp(2) + [prune(1, 0)], imp(3) + [prune(1, 1)],
                   [prune(1, 2), prune(2, 0), prune(2, 1), prune(2, 2)],
                   [prune(3, 0), prune(3, 1), prune(3, 2)]]


def test_one_run_at_a_time_goes_replicate_after_replicate_imp_first():
  packs = order.packs([0, 1], rounds=2, branches=["imp", "oneshot"], runs_per_step=1)
  assert all(len(p) == 1 for p in packs)
  sequence = [(k.replicate, k.branch, k.round) for (k,) in packs]
  assert sequence == [(rep, b, r) for rep in (0, 1) for b, r in (("imp", 0), ("imp", 1), ("imp", 2), ("oneshot", 1),
                                                               ("oneshot", 2))]


@pytest.mark.parametrize("reps, rounds, branches, n", [
    (3, 10, ["imp", "random_prune"], 4), (3, 10, ["imp", "random_prune"], 32), (5, 4, ["imp", "random_reinit",
                                                                                       "oneshot", "random_prune"], 3),
    (1, 3, ["imp"], 2), (2, 0, ["imp", "random_prune"], 8), (4, 6, ["imp", "random_prune", "oneshot"], 7)])
def test_every_training_once_after_its_needs_and_no_slot_idle_while_one_is_ready(reps, rounds, branches, n):
  packs = order.packs(list(range(reps)), rounds=rounds, branches=branches, runs_per_step=n)
  everything = {Key("imp", r, rep) for r in range(rounds + 1) for rep in range(reps)} | {
      Key(b, r, rep) for b in branches[1:] for r in range(1, rounds + 1) for rep in range(reps)}
  flat = list(itertools.chain.from_iterable(packs))
  assert len(flat) == len(everything) and set(flat) == everything
  done = set()
  for pack in packs:
    ready = {k for k in everything - done if all(d in done for d in needs(k))}
    assert set(pack) <= ready and len(pack) == min(n, len(ready))  # a padded slot only when nothing else is ready
    assert [k for k in pack if k.branch == "imp"] == sorted((k for k in ready if k.branch == "imp"),
                                                            key=lambda k: (k.round, k.replicate))[:n]  # IMP first
    done |= set(pack)


def test_a_replicate_that_stops_gets_no_later_imp_round_but_its_baselines_so_far():
  queue = order.Queue([0, 1], rounds=5, branches=["imp", "random_prune"])
  got = []
  while queue:
    key = queue.pop()
    got.append(key)
    queue.done(key, stop=key == Key("imp", 2, 0))
  assert Key("imp", 3, 0) not in got and Key("imp", 5, 1) in got
  assert {k.round for k in got if k.branch == "random_prune" and k.replicate == 0} == {1, 2}


def test_branches_must_start_with_imp():
  with pytest.raises(ValueError, match="must start with 'imp'"):
    order.Queue([0], rounds=1, branches=["random_prune"])
