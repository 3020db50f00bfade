"""The IMP driver end to end at tiny size: tickets, sparsities, branches, determinism, rewinding."""

import csv
import os

import jax
import numpy as np
import pytest

from jaxtickets import checkpoint, imp, load_ticket, sparsity
from conftest import tiny_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(imp__branches="imp,random_prune,random_reinit,oneshot")
  rows = imp.run(config, workdir)
  return workdir, config, rows


def prunable_of(ticket, config):
  return sparsity.prunable_leaves(ticket.masks, config.sparsity.scope.split(","), allow_missing_groups=True)


def test_imp_sparsities_follow_0_8_powers(run_dir):
  workdir, config, _ = run_dir
  for r, expected in [(0, 0.0), (1, 0.2), (2, 0.36), (3, 0.488)]:
    t = load_ticket(os.path.join(workdir, "tickets", "imp", f"round_{r:02d}"))
    report = sparsity.count(t.masks, prunable_of(t, config))
    n_layers = len(report["layers"])
    size = report["prunable"]["size"]
    assert abs(report["prunable"]["sparsity"] - expected) <= n_layers / size
    assert t.sparsity["prunable"]["sparsity"] == pytest.approx(report["prunable"]["sparsity"])
    # Weights outside the mask are exactly zero in the trained and rewound-and-masked weights.
    for p, m in zip(jax.tree.leaves(t.trained_params), jax.tree.leaves(t.masks)):
      assert np.all(np.asarray(p)[~np.asarray(m)] == 0)


def test_imp_masks_are_nested_and_smallest_magnitudes_go(run_dir):
  workdir, config, _ = run_dir
  prev = load_ticket(os.path.join(workdir, "tickets", "imp", "round_01"))
  cur = load_ticket(os.path.join(workdir, "tickets", "imp", "round_02"))
  prunable = prunable_of(cur, config)
  alive_prev, alive_cur, mags = [], [], []
  for m0, m1, w, pr in zip(jax.tree.leaves(prev.masks), jax.tree.leaves(cur.masks),
                           jax.tree.leaves(prev.trained_params), jax.tree.leaves(prunable)):
    assert not np.any(m1 & ~m0)  # never revived
    if pr:
      alive_prev.append(m0.ravel()); alive_cur.append(m1.ravel()); mags.append(np.abs(w).ravel())
  m0, m1, w = map(np.concatenate, (alive_prev, alive_cur, mags))
  removed, kept = w[m0 & ~m1], w[m1]
  assert removed.max() <= kept.min()


def test_rewind_restores_theta_0_times_mask(run_dir):
  workdir, _, _ = run_dir
  theta_0 = checkpoint.load_params(os.path.join(workdir, "init", "theta_0"))
  t = load_ticket(os.path.join(workdir, "tickets", "imp", "round_02"))
  for a, b in zip(jax.tree.leaves(t.rewind_params), jax.tree.leaves(theta_0)):
    np.testing.assert_array_equal(a, b)


def test_branches_use_imp_sparsity(run_dir):
  workdir, config, _ = run_dir
  for r in (1, 2, 3):
    ref = load_ticket(os.path.join(workdir, "tickets", "imp", f"round_{r:02d}"))
    rp = load_ticket(os.path.join(workdir, "tickets", "random_prune", f"round_{r:02d}"))
    ri = load_ticket(os.path.join(workdir, "tickets", "random_reinit", f"round_{r:02d}"))
    one = load_ticket(os.path.join(workdir, "tickets", "oneshot", f"round_{r:02d}"))
    for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(rp.masks)):
      assert a.sum() == b.sum()  # same per-layer counts
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(rp.masks)))
    for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(ri.masks)):
      np.testing.assert_array_equal(a, b)
    assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(ref.rewind_params), jax.tree.leaves(ri.rewind_params)))
    assert abs(one.sparsity["prunable"]["sparsity"] - ref.sparsity["prunable"]["sparsity"]) < 1e-3


def test_results_csv_has_a_row_per_branch_and_round(run_dir):
  workdir, _, rows = run_dir
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  got = {(r["branch"], int(r["round"])) for r in table}
  want = {("imp", r) for r in range(4)} | {(b, r) for b in ("random_prune", "random_reinit", "oneshot")
                                          for r in (1, 2, 3)}
  assert got == want
  dense = [r for r in table if r["round"] == "0"][0]
  for r in table:
    rel = float(r["total"]) / float(dense["total"]) - 1
    assert float(r["relative_to_dense"]) == pytest.approx(rel, abs=1e-5)
    assert (r["matches"] == "True") == (rel <= 0.02 + 1e-9)
  assert len(rows) == len(table)


def test_second_identical_run_gives_identical_masks(run_dir, tmp_path):
  workdir, config, _ = run_dir
  config2 = tiny_config(imp__branches="imp,random_prune", imp__rounds=2)
  imp.run(config2, str(tmp_path))
  for branch, r in [("imp", 1), ("imp", 2), ("random_prune", 2)]:
    a = load_ticket(os.path.join(workdir, "tickets", branch, f"round_{r:02d}"))
    b = load_ticket(os.path.join(tmp_path, "tickets", branch, f"round_{r:02d}"))
    for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
      np.testing.assert_array_equal(x, y)


def test_rerun_skips_finished_rounds(run_dir, capsys):
  workdir, config, _ = run_dir
  imp.run(config, workdir)
  out = capsys.readouterr().out
  assert "already done" in out and "step 1/3" not in out


def test_rewind_to_step_k_restores_theta_k_and_restarts_the_schedule(tmp_path, capsys):
  config = tiny_config(imp__rounds=1, imp__rewind_step=2, train__steps=4)
  imp.run(config, str(tmp_path))
  theta_0 = checkpoint.load_params(os.path.join(tmp_path, "init", "theta_0"))
  theta_k = checkpoint.load_params(os.path.join(tmp_path, "init", "theta_2"))
  t1 = load_ticket(os.path.join(tmp_path, "tickets", "imp", "round_01"))
  for a, b, a0 in zip(jax.tree.leaves(t1.rewind_params), jax.tree.leaves(theta_k), jax.tree.leaves(theta_0)):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(theta_k), jax.tree.leaves(theta_0)))
  assert t1.metrics["steps"] == 2  # steps k..T of the schedule
  assert "[imp round 1] step 3/4" in capsys.readouterr().out


def test_vgg_weights_file_is_the_loss_network_and_encoder_init(tmp_path):
  from jaxtickets import weights
  from jaxtickets.models import get_model

  config = tiny_config(imp__rounds=0, train__steps=1)
  model = get_model("adain")(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(42)))
  vgg = jax.tree.map(lambda x: np.asarray(x) * 1.5, vgg)  # unlike any seed's random init
  path = str(tmp_path / "vgg.npz")
  weights.save_vgg_weights(path, vgg)
  config.model.vgg_weights = path
  imp.run(config, str(tmp_path / "run"))
  theta_0 = checkpoint.load_params(os.path.join(tmp_path, "run", "init", "theta_0"))
  for name, layer in theta_0["encoder"].items():
    np.testing.assert_array_equal(layer["kernel"], vgg[name]["kernel"])
