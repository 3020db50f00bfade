"""Early-bird tickets: the settled-mask test on scripted mask sequences, its resume state, and a run that stops."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.core import early_bird, sparsity
from jaxtickets.run import imp, preempt, train, layout as layout_lib
from helpers import StopAfter, state_checkpoints, tiny_config

PRUNABLE = {"a": True, "b": False}


def _masks(bits, other=None):
  return {"a": np.array(bits, bool), "b": np.array(other if other is not None else [True, False], bool)}


def test_distance_counts_prunable_weights_only():
  a, b = _masks([1, 1, 0, 0]), _masks([1, 0, 0, 1], other=[False, True])
  # 'b' differs everywhere but is not prunable; 2 of 4 differ, against 2 * 0.5 * 0.5 = 0.5 for unrelated masks.
  assert early_bird.distance(a, b, PRUNABLE) == pytest.approx((2 / 4) / 0.5)
  assert early_bird.distance(a, a, PRUNABLE) == 0.0


@pytest.mark.parametrize("s", [0.2, 0.5, 0.9, 0.95])
def test_unrelated_masks_are_far_and_nearly_identical_ones_close_at_any_sparsity(s):
  rng = np.random.default_rng(int(s * 100))
  n = 20_000
  draw = lambda: {"a": rng.permutation(n) >= round(s * n), "b": np.ones(2, bool)}
  a, b = draw(), draw()
  assert early_bird.distance(a, b, PRUNABLE) == pytest.approx(1.0, abs=0.05)  # raw Hamming: 2 s (1 - s), 0.095 at 0.95
  assert early_bird.distance(a, a, PRUNABLE) == 0.0
  near = {"a": a["a"].copy(), "b": a["b"]}  # 1% of the smaller side (pruned or kept) swapped with the other side
  pruned, kept = np.flatnonzero(~a["a"]), np.flatnonzero(a["a"])
  k = round(0.01 * min(pruned.size, kept.size))
  near["a"][pruned[:k]], near["a"][kept[:k]] = True, False
  assert early_bird.distance(a, near, PRUNABLE) == pytest.approx(2 * k / n / (2 * s * (1 - s)))
  assert early_bird.distance(a, near, PRUNABLE) < 0.05


def _watch(sequence, epsilon=0.1, patience=2, every=10):
  draws = iter(sequence)
  return early_bird.Watch(every=every, epsilon=epsilon, patience=patience, draw=lambda params: next(draws),
                          prunable=PRUNABLE)


def test_a_mask_that_stops_changing_stops_the_round_after_patience_checks():
  m0, m1 = _masks([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]), _masks([0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
  watch = _watch([m0, m1, m1, m1, m1], epsilon=0.1, patience=2)
  stops = [watch.check(step, None) for step in (10, 20, 30, 40)]
  assert stops == [False, False, False, True] and watch.stop_step == 40
  assert watch.history == [[20, pytest.approx(0.4 / (2 * 0.6 * 0.4))], [30, 0.0], [40, 0.0]]
  assert not watch.due(50)  # stopped: no more draws


def test_a_mask_that_keeps_changing_never_stops_and_a_big_change_resets_the_count():
  a, b = _masks([1, 0, 1, 0, 1, 0, 1, 0, 1, 0]), _masks([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
  watch = _watch([a, b] * 10, patience=1)
  assert not any(watch.check(10 * k, None) for k in range(1, 21)) and watch.stop_step is None
  near = _masks([1, 0, 1, 0, 1, 0, 1, 0, 1, 1])  # 1 of 10 differs, against 0.5 by chance: 0.2, above epsilon
  watch = _watch([a, a, near, near, a], epsilon=0.15, patience=2)
  assert [watch.check(10 * k, None) for k in range(1, 6)] == [False, False, False, False, False]
  assert watch.below == 0  # the last draw changed again


def test_a_settled_mask_never_stops_the_round_before_the_rewind_step():
  m = _masks([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
  watch = _watch([m] * 6, patience=1, every=1)
  watch.min_step = 4  # theta_4 is saved at step 4; a round stopped before it leaves the pruned rounds no start
  stops = [watch.check(step, None) for step in range(1, 5)]
  assert stops == [False, False, False, True] and watch.stop_step == 4 and not watch.due(5)
  assert watch.history == [[2, 0.0], [3, 0.0], [4, 0.0]]  # settled from step 2 on, held back until step 4
  unlimited = _watch([m] * 6, patience=1, every=1)
  assert [unlimited.check(step, None) for step in (1, 2)] == [False, True]


def test_the_watch_resumes_from_its_checkpoint_state_to_the_same_decision():
  m0, m1 = _masks([1, 1, 1, 1, 0, 0, 0, 0, 0, 0]), _masks([0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
  whole = _watch([m0, m1, m1, m1])
  first = _watch([m0, m1])
  for step in (10, 20):
    whole.check(step, None)
    first.check(step, None)
  saved = json.loads(json.dumps(first.state()))  # what a checkpoint's meta keeps
  second = _watch([m1, m1])
  second.restore(saved, m0)
  for step in (30, 40):
    assert second.check(step, None) == whole.check(step, None)
  assert second.stop_step == whole.stop_step == 40 and second.history == whole.history


@pytest.mark.e2e
def test_a_run_with_early_bird_stops_its_dense_rounds_and_reports_the_steps_it_trained(tmp_path, capsys):
  # epsilon 0.99: any two masks count as settled, so the dense round stops at the second draw (step 2 of 6).
  config = tiny_config(train__steps=6, imp__rounds=1, imp__replicates=2, imp__early_bird=True,
                       imp__early_bird_every=1, imp__early_bird_epsilon=0.99, imp__early_bird_patience=1)
  rows = imp.run(config_lib.resolve(config), str(tmp_path))
  steps = {(r["replicate"], r["round"]): r["steps"] for r in rows}
  assert steps == {(0, 0): 2, (1, 0): 2, (0, 1): 6, (1, 1): 6}  # pruned rounds train in full
  with open(os.path.join(tmp_path, "summary.json")) as f:
    birds = json.load(f)["early_bird"]
  assert [(b["replicate"], b["early_bird_step"], b["steps_trained"]) for b in birds] == [(0, 2, 2), (1, 2, 2)]
  assert len(birds[0]["history"]) == 1 and birds[0]["history"][0][0] == 2 and 0 <= birds[0]["history"][0][1] < 0.99
  out = capsys.readouterr().out
  assert "[rep 0 imp round 0] early bird: the mask settled" in out and "stops at step 2 of 6" in out
  from jaxtickets.reports import run_report as report_run
  report_run.write_report(str(tmp_path), grid=False)
  text = open(os.path.join(tmp_path, "report.md")).read()
  assert "## Early bird" in text and "| 1 | 2 | 2 | 6 |" in text and "![Early bird" in text
  assert os.path.getsize(os.path.join(tmp_path, "early_bird.png")) > 5_000


# ----------------------------------------------------------------------------- packed, and preempted

# Two replicates packed side by side (vmapped on this one device; the step test_pack.py compiles), a mask drawn every
# step: the masks here change by one or two swapped weights a step, so epsilon 3e-4 (between one swap and two, of
# 20% pruned) lets replicate 0 settle at its check of step 2 (one swap) and replicate 1 at step 3 (two swaps at step
# 2, none at 3). Each stop is then a distinct decision of the same pack.
# The stops (STOPS) are tuned to the distances of this tiny run with the random stand-in VGG; what the tests check,
# each packed run stopping at its own check, does not depend on the loss network.
PACKED_BIRDS = dict(model__vgg_weights="", train__steps=6, checkpoint__every_steps=2, checkpoint__async_save=False, imp__replicates=2,
                    imp__rounds=1, parallel__runs_per_step=2, imp__early_bird=True, imp__early_bird_every=1,
                    imp__early_bird_epsilon=3e-4, imp__early_bird_patience=1)
STOPS = {0: 2, 1: 3}


def _run(ctx, workdir, watch=None):
  """What imp.run does on `workdir` once it holds the lock, with the shared context `ctx` (traced once)."""
  output = dataclasses.replace(ctx.output, workdir=workdir, watch=watch or preempt.PreemptionWatch())
  ctx = imp.with_run_state(dataclasses.replace(ctx, output=output))
  try:
    return imp._run_rounds(ctx)  # pylint: disable=protected-access
  finally:
    ctx.output.close()


def _ticket(workdir, round_, rep):
  return checkpoint.load_ticket(workdir_lib.ticket_dir(workdir, "imp", round_, rep))


@pytest.fixture(scope="module")
def packed_birds(tmp_path_factory):
  """The shared context, its uninterrupted run's workdir, and the weights each replicate's early-bird test drew its
  masks from, check by check: {replicate: [params at step 1, 2, ...]}."""
  ctx = imp.setup(config_lib.resolve(tiny_config(**PACKED_BIRDS)), str(tmp_path_factory.mktemp("setup")))
  assert ctx.compute.layout == layout_lib.Layout(2, 1)
  reference = str(tmp_path_factory.mktemp("reference"))
  drawn, train_pack = {}, train.train_pack

  def recording(ctx, jobs):
    for job in jobs:
      if job.early_bird is not None:
        def draw(params, draw=job.early_bird.draw, rep=job.replicate.index):
          drawn.setdefault(rep, []).append(params)
          return draw(params)
        job.early_bird.draw = draw
    return train_pack(ctx, jobs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "train_pack", recording)
    _run(ctx, reference)
  return ctx, reference, drawn


@pytest.mark.e2e
def test_packed_replicates_whose_masks_settle_at_different_checks_each_stop_at_their_own(packed_birds):
  ctx, reference, drawn = packed_birds
  eps = PACKED_BIRDS["imp__early_bird_epsilon"]
  with open(os.path.join(reference, "summary.json")) as f:
    birds = {b["replicate"]: b for b in json.load(f)["early_bird"]}
  assert {rep: (b["early_bird_step"], b["steps_trained"]) for rep, b in birds.items()} == {0: (2, 2), 1: (3, 3)}
  (s0, d0), = birds[0]["history"]
  (s1, d1), (s2, d2) = birds[1]["history"]
  assert (s0, s1, s2) == (2, 2, 3) and 0 < d0 < eps <= d1 and d2 == 0.0
  assert {rep: len(params) for rep, params in drawn.items()} == {0: 2, 1: 3}  # a draw a step, none after the stop
  for rep, stop in STOPS.items():
    dense, pruned = _ticket(reference, 0, rep), _ticket(reference, 1, rep)
    assert dense.metrics["steps"] == dense.metrics["early_bird_step"] == stop and pruned.metrics["steps"] == 6
    # The stopped run kept the weights of its stop while the other trained on beside it...
    for x, y in zip(jax.tree.leaves(dense.trained_params), jax.tree.leaves(drawn[rep][-1])):
      np.testing.assert_array_equal(x, y, err_msg=f"rep {rep}")
    # ... and the mask that settled is the pruned round's.
    settled = sparsity.early_bird_masks(ctx.compute.protocol.pruning, ctx.compute.protocol.target_sparsity, ctx.compute.prunable)(drawn[rep][-1])
    for x, y in zip(jax.tree.leaves(pruned.masks), jax.tree.leaves(settled)):
      np.testing.assert_array_equal(x, y, err_msg=f"rep {rep}")
  # Replicate 1 moved on after replicate 0 stopped.
  assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(drawn[1][2]), jax.tree.leaves(drawn[1][1])))


@pytest.mark.e2e
def test_early_bird_preempted_mid_dense_round_resumes_to_the_same_stops_and_masks(packed_birds, tmp_path, capsys):
  """SIGTERM after step 1 (each watch holds one mask, no distance yet), resumed; SIGTERM again after step 2
  (replicate 0 has stopped, replicate 1 has not); resumed to the end: the uninterrupted run's stops and tickets."""
  ctx, reference, _ = packed_birds
  workdir = str(tmp_path / "run")
  for step in (1, 2):
    with pytest.raises(preempt.Preempted, match=rf"at step {step} of a pack of 2 runs"):
      _run(ctx, workdir, StopAfter(step))
  assert "[rep 0 imp round 0] early bird: the mask settled" in capsys.readouterr().out.rsplit("resuming at step 1")[-1]
  runs = {run["replicate"]: run for run in state_checkpoints(workdir)[2]["runs"]}
  assert [runs[rep]["step"] for rep in (0, 1)] == [2, 2]
  assert runs[0]["early_bird"]["stop_step"] == 2 and runs[1]["early_bird"]["stop_step"] is None
  assert runs[1]["early_bird"]["previous"]  # the mask of step 2, which step 3's check compares with
  _run(ctx, workdir)
  out = capsys.readouterr().out
  assert "[rep 0 imp round 0] resuming at step 2" in out and "[rep 1 imp round 0] resuming at step 2" in out
  # Replicate 0 stopped before step 2's save: it is not trained or decided again; replicate 1 decides at step 3.
  assert "[rep 1 imp round 0] early bird: the mask settled" in out and "[rep 0 imp round 0] early bird" not in out
  assert "[rep 0 imp round 0] step 2/2" in out and "[rep 0 imp round 0] step 3" not in out
  for rep, stop in STOPS.items():
    a, b = _ticket(reference, 0, rep), _ticket(workdir, 0, rep)
    assert b.metrics["early_bird_step"] == a.metrics["early_bird_step"] == stop
    assert b.metrics["early_bird_history"] == a.metrics["early_bird_history"]
    for x, y in zip(jax.tree.leaves(a.trained_params), jax.tree.leaves(b.trained_params)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7, err_msg=f"rep {rep}")
    a, b = _ticket(reference, 1, rep), _ticket(workdir, 1, rep)
    for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
      np.testing.assert_array_equal(x, y, err_msg=f"rep {rep}")
    for x, y in zip(jax.tree.leaves(a.trained_params), jax.tree.leaves(b.trained_params)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7, err_msg=f"rep {rep}")
