"""Early-bird tickets: the settled-mask test on scripted mask sequences, its resume state, and a run that stops."""

import json
import os

import numpy as np
import pytest

from jaxtickets import early_bird, imp
from helpers import tiny_config

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
  rows = imp.run(config, str(tmp_path))
  steps = {(r["replicate"], r["round"]): r["steps"] for r in rows}
  assert steps == {(0, 0): 2, (1, 0): 2, (0, 1): 6, (1, 1): 6}  # pruned rounds train in full
  with open(os.path.join(tmp_path, "summary.json")) as f:
    birds = json.load(f)["early_bird"]
  assert [(b["replicate"], b["early_bird_step"], b["steps_trained"]) for b in birds] == [(0, 2, 2), (1, 2, 2)]
  assert len(birds[0]["history"]) == 1 and birds[0]["history"][0][0] == 2 and 0 <= birds[0]["history"][0][1] < 0.99
  out = capsys.readouterr().out
  assert "[rep 0 imp round 0] early bird: the mask settled" in out and "stops at step 2 of 6" in out
  from jaxtickets import report
  report.write_report(str(tmp_path), config, grid=False)
  text = open(os.path.join(tmp_path, "report.md")).read()
  assert "## Early bird" in text and "| 1 | 2 | 2 | 6 |" in text and "![Early bird" in text
  assert os.path.getsize(os.path.join(tmp_path, "early_bird.png")) > 5_000
