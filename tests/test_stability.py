"""Linear mode connectivity: the barrier's arithmetic, the path's ends, identical copies, unrelated networks."""

import os

import jax
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.core import evaluate
from jaxtickets.run import imp
from jaxtickets.run import stability
from jaxtickets.store import workdir as workdir_lib
from jaxtickets.errors import UserError
from helpers import tiny_config


def test_barrier_is_the_paths_peak_above_the_mean_of_its_ends():
  assert stability.barrier([1.0, 3.0, 1.0]) == (2.0, 2.0)
  assert stability.barrier([2.0, 1.5, 1.0, 2.0]) == (0.0, 0.0)  # a dip: no barrier
  value, relative = stability.barrier([1.0, 1.2, 2.0])  # unequal ends: the peak is an end
  assert value == pytest.approx(0.5) and relative == pytest.approx(0.5 / 1.5)


def test_linear_barrier_is_the_rise_above_the_line_between_the_ends():
  assert stability.linear_barrier([2.0, 1.5, 1.0]) == 0.0  # falls along the line: no rise
  assert stability.linear_barrier([2.0, 1.2, 1.0]) == pytest.approx(0.0)  # below the line: none either
  assert stability.linear_barrier([2.0, 2.5, 1.0]) == pytest.approx(1.0)  # 2.5 against the line's 1.5
  assert stability.barrier([2.0, 1.5, 1.0])[0] == pytest.approx(0.5)  # the ends' mean measure counts the slope


def test_interpolation_ends_are_the_two_networks_and_stay_masked():
  a = {"w": np.array([1.0, 2.0, 3.0], np.float32)}
  b = {"w": np.array([3.0, 6.0, -3.0], np.float32)}
  masks = {"w": np.array([True, True, False])}
  np.testing.assert_array_equal(stability.interpolate(a, b, 0.0, masks)["w"], [1.0, 2.0, 0.0])
  np.testing.assert_array_equal(stability.interpolate(a, b, 1.0, masks)["w"], [3.0, 6.0, 0.0])
  np.testing.assert_allclose(stability.interpolate(a, b, 0.25, masks)["w"], [1.5, 3.0, 0.0])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  imp.run(config_lib.resolve(tiny_config(imp__rounds=1, imp__replicates=1, train__steps=4)), workdir)
  return workdir


@pytest.mark.e2e
def test_identical_copies_have_no_barrier_and_the_ends_are_the_copies_losses(finished):
  rows = stability.run(finished, rounds=[1], points=5, same_order=True)
  (row,) = rows
  assert row["round"] == 1 and row["sparsity"] == pytest.approx(0.2, abs=1e-3) and len(row["path"]) == 5
  assert abs(row["barrier"]) < 1e-5 * row["path"][0]
  np.testing.assert_allclose(row["path"], row["path"][0], rtol=1e-5)
  # The ends are the trained copies themselves, scored as any ticket is.
  from jaxtickets.store import checkpoint
  c = imp.setup(config_lib.resolve(tiny_config(imp__rounds=1, imp__replicates=1, train__steps=4)), finished).compute
  ticket = checkpoint.load_ticket(workdir_lib.ticket_dir(finished, "imp", 1, 0))
  for copy, end in (("a", 0), ("b", -1)):
    params = checkpoint.load_params(os.path.join(finished, "stability", "rep_0", "round_01", f"copy_{copy}"))
    got = evaluate.evaluate(c.eval_fn, params, ticket.masks, c.vgg_params, c.pairs, c.protocol.eval_batch_size)
    assert got["total"] == pytest.approx(row["path"][end], rel=1e-6)
  # Copies that trained on other data orders differ (the default run): the files and report section appear.
  rows = stability.run(finished, rounds=[0, 1], points=3)
  assert [r["round"] for r in rows] == [0, 1]
  assert os.path.exists(os.path.join(finished, stability.CSV))
  from jaxtickets.reports import run_report as report_run
  from jaxtickets.results import tables as results
  back = results.read_stability_csv(os.path.join(finished, stability.CSV))
  assert [r["barrier"] for r in back] == pytest.approx([r["barrier"] for r in rows], rel=1e-5)
  assert [r["barrier_linear"] for r in back] == pytest.approx([r["barrier_linear"] for r in rows], rel=1e-5, abs=1e-9)
  report_run.write_report(finished, grid=False)  # draws stability.png from stability.csv
  assert os.path.exists(os.path.join(finished, stability.FIGURE))
  text = open(os.path.join(finished, "report.md")).read()
  assert "## Stability (linear mode connectivity)" in text and "![stability](stability.png)" in text
  assert f"| 1 | 0 | {rows[1]['sparsity']:.4f} | 0 |" in text


@pytest.mark.e2e
def test_every_point_of_the_path_is_the_loss_of_the_saved_copies_mixed_by_hand(finished):
  """Round 0's copies (other data orders, so they differ): each of 5 points is the held-out loss of
  (1 - t) a + t b on the ticket's mask, mixed here in float64 from the copies stability.py saved."""
  from jaxtickets.store import checkpoint

  (row,) = stability.run(finished, rounds=[0], points=5)
  c = imp.setup(workdir_lib.load_run_settings(finished), finished).compute
  masks = checkpoint.load_ticket(workdir_lib.ticket_dir(finished, "imp", 0, 0)).masks
  a, b = (checkpoint.load_params(workdir_lib.stability_copy_dir(finished, 0, 0, copy)) for copy in "ab")
  assert any(np.any(x != y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

  def mixed(t):
    return jax.tree.map(lambda x, y, m: ((1 - t) * np.float64(x) + t * np.float64(y)).astype(np.float32) * m, a, b,
                        masks)

  want = [evaluate.evaluate(c.eval_fn, mixed(t), masks, c.vgg_params, c.pairs, c.protocol.eval_batch_size)["total"]
          for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
  assert row["path"] == pytest.approx(want, rel=1e-6)
  # Neighbouring points are ~1e-4 apart, far more than that tolerance: a point at the wrong alpha would fail.
  assert min(abs(x - y) for i, x in enumerate(want) for y in want[i + 1:]) > 2e-5 * want[0]


@pytest.mark.e2e
def test_a_path_between_unrelated_random_networks_has_a_barrier(finished):
  c = imp.setup(config_lib.resolve(tiny_config()), finished).compute
  vgg = jax.device_get(c.vgg_params)
  a, b = (jax.device_get(c.model.init(jax.random.PRNGKey(k), vgg)) for k in (11, 12))
  masks = jax.tree.map(lambda x: np.ones(np.shape(x), bool), a)
  losses = stability.path_losses(c, a, b, masks, 5)
  assert stability.barrier(losses)[0] > 0


@pytest.mark.e2e
def test_rounds_that_are_not_finished_are_named(finished):
  with pytest.raises(UserError, match=r"--rounds names round\(s\) 5 that the run in .* has not finished"):
    stability.run(finished, rounds=[5])
  with pytest.raises(UserError, match="holds no run"):
    stability.run(os.path.dirname(finished), rounds=[0])


@pytest.mark.e2e
def test_the_command_line_answers_bad_input_in_one_sentence(tmp_path):
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  run = lambda *a: subprocess.run([sys.executable, "-m", "jaxtickets.stability", *a], cwd=root, capture_output=True,
                                  text=True, timeout=300)
  r = run(f"--workdir={tmp_path}")
  assert r.returncode == 2 and "holds no run (no config.json)" in r.stderr and "Traceback" not in r.stderr
  r = run(f"--workdir={tmp_path}", "--rounds=a,b")
  assert r.returncode == 2 and "--rounds=a,b is not a list of round numbers" in r.stderr


def test_with_a_rewind_step_every_rounds_copies_start_from_theta_k(tmp_path):
  """Round 0's ticket keeps theta_0 (where the dense round began); its copies, like every round's, must start from
  theta_k at step k, the start the pruned rounds rewind to."""
  from types import SimpleNamespace

  from jaxtickets.store import checkpoint

  protocol = config_lib.resolve(tiny_config(imp__rewind_step=2)).protocol
  theta_0 = {"decoder": {"conv": {"kernel": np.full((2, 3), 1.0, np.float32), "bias": np.zeros(3, np.float32)}}}
  theta_2 = jax.tree.map(lambda x: x + 0.5, theta_0)
  for step, params in ((0, theta_0), (2, theta_2)):
    checkpoint.save_params(workdir_lib.theta_dir(str(tmp_path), 1, step), params)
  masks = jax.tree.map(lambda x: np.ones(np.shape(x), bool), theta_0)
  dense = SimpleNamespace(rewind_params=theta_0, masks=masks)
  jobs = stability._copies(protocol, str(tmp_path), dense, 1, 0, same_order=False)
  for job in jobs:
    assert job.start_step == 2 and job.replicate.index == 1
    jax.tree.map(np.testing.assert_array_equal, job.init_params, theta_2)
  assert jobs[0].replicate.seed != jobs[1].replicate.seed
  with pytest.raises(UserError, match=r"has no rewind point theta_2 of replicate 0 .* stopped before step 2"):
    stability._copies(protocol, str(tmp_path), dense, 0, 0, same_order=False)
  # Rewinding to theta_0 (k = 0): the ticket's own start.
  (job, _) = stability._copies(config_lib.resolve(tiny_config()).protocol, str(tmp_path), dense, 1, 0, same_order=True)
  assert job.start_step == 0 and job.init_params is theta_0
