"""The IMP driver end to end at tiny size: replicates, tickets, exact sparsities, branches, rewinding, the tables."""

import csv
import dataclasses
import functools
import os

import jax
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.run import imp, train
from jaxtickets import load_ticket
from jaxtickets.results import stats, tables as results
from jaxtickets.core import sparsity, streams
from helpers import tiny_config

BRANCHES = ("imp", "random_prune", "random_reinit", "oneshot")
ROUNDS, REPLICATES = 2, 2


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """A tiny replicated run with all four branches (the encoder trained, so random_reinit re-draws it), and the
  state each run held when its first train step was called: {(branch, round, replicate): TrainState on the host}."""
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny_config(imp__branches=",".join(BRANCHES), imp__rounds=ROUNDS, imp__replicates=REPLICATES,
                       eval__num_pairs=4, eval__batch_size=4,
                       train__adam_eps=1e-3)  # above rounding noise: the packed run below must give the same masks
  assert config.model.train_encoder
  starts = {}
  train_pack = train.train_pack

  def recording(ctx, jobs):
    def step(state, *args):
      if key(jobs[0]) not in starts:  # the first step only: the state training really began from
        host = jax.device_get(state)
        starts.update({key(job): jax.tree.map(lambda x, i=i: np.asarray(x)[i], host) for i, job in enumerate(jobs)})
      return ctx.compute.packed_step(state, *args)

    return train_pack(dataclasses.replace(ctx, compute=dataclasses.replace(ctx.compute, packed_step=step)), jobs)

  key = lambda job: (job.branch, job.round, job.replicate.index)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train, "train_pack", recording)
    rows = imp.run(config_lib.resolve(config), workdir)
  return workdir, config, rows, starts


@functools.lru_cache(maxsize=None)
def ticket(workdir, branch, round_, rep):
  """A saved ticket, read once per test session: tickets are never rewritten, and Orbax reads are slow."""
  return load_ticket(workdir_lib.ticket_dir(workdir, branch, round_, rep))


def prunable_of(ticket_, config):
  return sparsity.prunable_leaves(ticket_.masks, config.sparsity.scope.split(","), allow_missing_groups=True)


def numpy_prune(params, masks, flags, n):
  """Mask leaves: `masks` less the n smallest |w| of the alive prunable weights, all leaves together.

  Written apart from jaxtickets/core/sparsity.py: one stable argsort over the concatenated leaves, so ties go to the
  earlier leaf and position, as the library promises.
  """
  chosen = [i for i, f in enumerate(jax.tree.leaves(flags)) if f]
  ps, ms = jax.tree.leaves(params), [np.array(m, bool) for m in jax.tree.leaves(masks)]
  scores = np.concatenate([np.where(ms[i], np.abs(np.asarray(ps[i], np.float32)), np.inf).ravel() for i in chosen])
  drop = np.zeros(scores.size, bool)
  drop[np.argsort(scores, kind="stable")[:n]] = True
  assert np.all(np.isfinite(scores[drop]))  # only alive weights go
  for i, part in zip(chosen, np.split(drop, np.cumsum([ms[i].size for i in chosen])[:-1])):
    ms[i][part.reshape(ms[i].shape)] = False
  return ms


def pruned_count(masks, flags):
  return sum(int(m.size - np.count_nonzero(m)) for m, f in zip(jax.tree.leaves(masks), jax.tree.leaves(flags)) if f)


@pytest.mark.e2e
def test_tickets_are_stored_per_replicate(run_dir):
  workdir, _, _, _ = run_dir
  for branch in BRANCHES:
    assert sorted(os.listdir(os.path.join(workdir, "tickets", branch))) == ["rep_0", "rep_1"]
  assert workdir_lib.ticket_dir(workdir, "imp", 2, 1) == os.path.join(workdir, "tickets", "imp", "rep_1", "round_02")
  assert sorted(os.listdir(os.path.join(workdir, "init"))) == ["rep_0", "rep_1"]


@pytest.mark.e2e
def test_imp_prunes_exactly_20_percent_of_the_survivors_each_round(run_dir):
  workdir, config, _, _ = run_dir
  for rep in range(REPLICATES):
    alive = None
    for r in range(ROUNDS + 1):
      t = ticket(workdir, "imp", r, rep)
      report = sparsity.count(t.masks, prunable_of(t, config))
      alive = report["prunable"]["size"] if alive is None else alive - round(config.sparsity.fraction * alive)
      assert report["prunable"]["remaining"] == alive  # pruning counts are exact
      assert t.sparsity["prunable"]["remaining"] == alive
      # Weights outside the mask are exactly zero in the trained weights.
      for p, m in zip(jax.tree.leaves(t.trained_params), jax.tree.leaves(t.masks)):
        assert np.all(np.asarray(p)[~np.asarray(m)] == 0)


@pytest.mark.e2e
def test_imp_masks_are_the_previous_rounds_smallest_survivors_pruned(run_dir):
  """Round r's mask is round r-1's less its round(fraction * alive) smallest trained |w|, computed here in numpy."""
  workdir, config, _, _ = run_dir
  for rep in range(REPLICATES):
    for r in range(1, ROUNDS + 1):
      prev, cur = ticket(workdir, "imp", r - 1, rep), ticket(workdir, "imp", r, rep)
      flags = prunable_of(cur, config)
      alive = sum(int(np.count_nonzero(m)) for m, f in zip(jax.tree.leaves(prev.masks), jax.tree.leaves(flags)) if f)
      want = numpy_prune(prev.trained_params, prev.masks, flags, round(config.sparsity.fraction * alive))
      for a, b in zip(jax.tree.leaves(cur.masks), want):
        np.testing.assert_array_equal(a, b, err_msg=f"rep {rep} round {r}")


@pytest.mark.e2e
def test_every_run_starts_from_its_replicates_theta_0_times_its_mask_with_a_fresh_adam(run_dir):
  """The state the first train step got, against theta_0 drawn again by the seed rule (replicate r: seed + r)."""
  from jaxtickets.weights import files as weights
  from jaxtickets.models import get_model

  workdir, config, _, starts = run_dir
  assert len(starts) == REPLICATES * (1 + len(BRANCHES) * ROUNDS)
  model = get_model("adain")(config.model)
  vgg = weights.load_or_init_vgg(model, config.model.vgg_weights, streams.key(config.seed, streams.Stream.VGG))
  thetas = [jax.device_get(model.init(streams.key(config.seed + rep, streams.Stream.INIT), vgg))
            for rep in range(REPLICATES)]
  for rep, theta_0 in enumerate(thetas):
    for a, b in zip(jax.tree.leaves(ticket(workdir, "imp", ROUNDS, rep).rewind_params), jax.tree.leaves(theta_0)):
      np.testing.assert_array_equal(a, b)  # what the ticket says it rewound to
    for branch in BRANCHES:
      for r in range(0 if branch == "imp" else 1, ROUNDS + 1):
        t, start = ticket(workdir, branch, r, rep), starts[(branch, r, rep)]
        init = t.rewind_params if branch == "random_reinit" else theta_0  # its re-draw: checked in the baselines test
        want = jax.tree.map(lambda p, m: np.where(m, p, 0), init, t.masks)
        assert int(start.step) == 0, (branch, r, rep)
        for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(want)):
          np.testing.assert_array_equal(a, b, err_msg=f"{branch} round {r} rep {rep}")
        assert not any(np.any(x) for x in jax.tree.leaves(start.opt_state))  # Adam's count, mu and nu all zero
  # The decoder's init is the replicate's own; the encoder is the same VGG copy in both.
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(thetas[0]["decoder"]), jax.tree.leaves(thetas[1]["decoder"])))
  for a, b in zip(jax.tree.leaves(thetas[0]["encoder"]), jax.tree.leaves(thetas[1]["encoder"])):
    np.testing.assert_array_equal(a, b)


@pytest.mark.e2e
def test_replicate_r_is_the_run_with_seed_plus_r(run_dir, tmp_path):
  """Replicate 1 of seed 0 and replicate 0 of seed 1 are the same run: init, data order, masks, weights."""
  workdir, config, _, _ = run_dir
  # The VGG is shared by all replicates (it stands for pretrained weights): both runs load the demo loss network.
  assert config.model.vgg_weights == "demo"
  alone = tiny_config(seed=1, imp__branches="imp,random_prune", imp__rounds=1, imp__replicates=1,
                      eval__num_pairs=4, eval__batch_size=4, train__adam_eps=config.train.adam_eps)
  imp.run(config_lib.resolve(alone), str(tmp_path / "run"))
  for branch in ("imp", "random_prune"):
    a, b = ticket(workdir, branch, 1, 1), ticket(str(tmp_path / "run"), branch, 1, 0)
    for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
      np.testing.assert_array_equal(x, y)
    for x, y in zip(jax.tree.leaves(a.trained_params), jax.tree.leaves(b.trained_params)):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
  # The held-out pairs follow config.seed, not the replicate: the other seed scores other pairs, so only the
  # trained weights are compared above.


@pytest.mark.e2e
def test_baselines_take_imps_counts_and_what_they_promise(run_dir):
  workdir, config, _, _ = run_dir
  for rep in range(REPLICATES):
    dense = ticket(workdir, "imp", 0, rep)
    theta_0 = checkpoint.load_params(os.path.join(workdir, "init", f"rep_{rep}", "theta_0"))
    for r in range(1, ROUNDS + 1):
      ref, rp = ticket(workdir, "imp", r, rep), ticket(workdir, "random_prune", r, rep)
      ri, one = ticket(workdir, "random_reinit", r, rep), ticket(workdir, "oneshot", r, rep)
      for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(rp.masks)):
        assert a.sum() == b.sum()  # same per-layer counts
      assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(rp.masks)))
      for a, b in zip(jax.tree.leaves(ref.masks), jax.tree.leaves(ri.masks)):
        np.testing.assert_array_equal(a, b)
      # random_reinit re-draws every trained group, the encoder included: no kernel equals theta_0's.
      for group in ("encoder", "decoder"):
        for path, a, b in zip(sparsity.leaf_paths(ri.rewind_params[group]), jax.tree.leaves(ri.rewind_params[group]),
                              jax.tree.leaves(theta_0[group])):
          if path.endswith("kernel"):
            assert not np.allclose(a, b), f"{group}/{path} was not re-drawn"
      # oneshot: the dense round's trained weights pruned once, globally, by IMP round r's exact count.
      flags = prunable_of(ref, config)
      want = numpy_prune(dense.trained_params, dense.masks, flags, pruned_count(ref.masks, flags))
      assert not any(np.any(~m) for m in jax.tree.leaves(dense.masks))
      for a, b in zip(jax.tree.leaves(one.masks), want):
        np.testing.assert_array_equal(a, b, err_msg=f"oneshot round {r} rep {rep}")


@pytest.mark.e2e
def test_results_csv_has_a_row_per_branch_round_and_replicate(run_dir):
  workdir, _, rows, _ = run_dir
  with open(os.path.join(workdir, "results.csv")) as f:
    table = list(csv.DictReader(f))
  got = {(r["branch"], int(r["round"]), int(r["replicate"])) for r in table}
  want = {("imp", 0, rep) for rep in range(REPLICATES)} | {
      (b, r, rep) for b in BRANCHES for r in range(1, ROUNDS + 1) for rep in range(REPLICATES)}
  assert got == want and len(rows) == len(table) == len(want)
  assert {"sparsity_encoder", "sparsity_decoder", "sparsity_inference"} <= set(table[0])
  assert "sparsity_transform" not in table[0]  # AdaIN has no transform parameters
  dense = {r["replicate"]: float(r["total"]) for r in table if r["round"] == "0"}
  for r in table:
    # Each row is compared with its own replicate's dense round.
    assert float(r["relative_to_dense"]) == pytest.approx(float(r["total"]) / dense[r["replicate"]] - 1, abs=1e-5)
    # The encoder is trained, so the inference network is the params: both sparsities agree.
    assert float(r["sparsity_inference"]) == pytest.approx(float(r["sparsity_total"]), abs=1e-6)
    t = ticket(workdir, r["branch"], int(r["round"]), int(r["replicate"]))
    for group in ("encoder", "decoder"):
      leaves = jax.tree.leaves(t.masks[group])
      pruned = sum(int(m.size - m.sum()) for m in leaves) / sum(m.size for m in leaves)
      assert float(r[f"sparsity_{group}"]) == pytest.approx(pruned, abs=1e-6)


@pytest.mark.e2e
def test_summary_csv_has_intervals_and_verdicts_by_the_rule(run_dir):
  """summary.csv counts the collapsed runs the tickets record and leaves them out; the intervals and the verdict
  rule are checked on the same tickets with the collapse marks cleared, since 3 steps from a random start leave
  most of these networks collapsed (a black output, a reconstruction below a flat image)."""
  workdir, config, _, _ = run_dir
  with open(os.path.join(workdir, "summary.csv")) as f:
    table = list(csv.DictReader(f))
  assert {(r["branch"], int(r["round"])) for r in table} == {("imp", 0)} | {
      (b, r) for b in BRANCHES for r in range(1, ROUNDS + 1)}
  dead = lambda branch, round_, rep: ticket(workdir, branch, round_, rep).metrics["collapsed"]
  for r in table:
    round_ = int(r["round"])
    dense_dead = [rep for rep in range(REPLICATES) if dead("imp", 0, rep)]
    assert int(r["dense_collapsed"]) == len(dense_dead) and int(r["pairs"]) == 4
    if round_ == 0:
      assert r["verdict"] == "" and int(r["replicates"]) == REPLICATES - len(dense_dead)
      continue
    live = [rep for rep in range(REPLICATES) if rep not in dense_dead]
    used = [rep for rep in live if not dead(r["branch"], round_, rep)]
    assert (int(r["replicates"]), int(r["collapsed"])) == (len(used), len(live) - len(used))
    if len(used) < 2:
      assert r["verdict"] == "inconclusive"
  tol = config.imp.match_tolerance
  rows = [dict(r, collapsed=None) for r in results.collect_rows(workdir)]
  for r in results.summarize(rows, tol):
    if r["round"] == 0:
      assert r["verdict"] == ""
      continue
    assert r["replicates"] == REPLICATES and r["pairs"] == 4
    low, high, est = r["ci_low"], r["ci_high"], r["relative_to_dense"]
    assert low <= est <= high
    want = "matches" if high < tol else "does not match" if low > tol else "inconclusive"
    assert r["verdict"] == want
    # The estimate is the geometric mean of ticket / dense over replicates and pairs (every combination here has
    # one crop, so each pair is its own unit), from the tickets' per-pair losses.
    losses = [ticket(workdir, r["branch"], r["round"], rep).metrics["per_pair"]["total"] for rep in (0, 1)]
    dense = [ticket(workdir, "imp", 0, rep).metrics["per_pair"]["total"] for rep in (0, 1)]
    assert est == pytest.approx(np.exp(np.mean(np.log(np.array(losses) / np.array(dense)))) - 1, abs=1e-6)
    assert "content_relative" in r and "style_ci_high" in r
    if r["branch"] == "imp":
      assert "vs_imp" not in r
    else:
      assert r["vs_imp_verdict"] in ("imp better", "imp worse", "inconclusive")
      assert r["vs_imp_ci_low"] <= r["vs_imp"] <= r["vs_imp_ci_high"]
  summary = checkpoint.load_json(os.path.join(workdir, "summary.json"))
  assert summary["replicates"] == [0, 1] and set(summary["highest_matching"]) == set(BRANCHES)
  dense_dead = [rep for rep in range(REPLICATES) if dead("imp", 0, rep)]
  assert len(summary["collapsed"]) == sum(int(r["collapsed"]) for r in table) + len(dense_dead)


def test_one_replicate_never_gives_a_verdict_beyond_inconclusive():
  rows = []
  for rep, total in [(0, [1.0, 1.1, 0.9])]:
    rows.append(dict(branch="imp", replicate=rep, round=0, sparsity_prunable=0.0, sparsity_total=0.0,
                     sparsity_inference=0.0, total=1.0, per_pair={"total": total}))
    rows.append(dict(branch="imp", replicate=rep, round=1, sparsity_prunable=0.2, sparsity_total=0.2,
                     sparsity_inference=0.2, total=2.0, per_pair={"total": [2 * t for t in total]}))
  summary = results.summarize(rows, 0.02)
  assert summary[1]["verdict"] == stats.INCONCLUSIVE and summary[1]["relative_to_dense"] == pytest.approx(1.0)


@pytest.mark.e2e
def test_layer_cap_and_layerwise_oneshot_follow_the_config(run_dir):
  workdir, config, _, _ = run_dir
  dense = ticket(workdir, "imp", 0, 0)
  prunable = prunable_of(dense, config)
  capped = config_lib.resolve(tiny_config(sparsity__layer_cap=0.1)).protocol.pruning
  masks = dense.masks
  for _ in range(3):
    masks = sparsity.prune(capped, dense.trained_params, masks, prunable)
  for e in sparsity.count(masks, prunable)["layers"].values():
    assert e["size"] - e["remaining"] <= int(0.1 * e["size"])
  layerwise = config_lib.resolve(tiny_config(sparsity__method="layerwise")).protocol.pruning
  imp_masks = sparsity.prune(layerwise, dense.trained_params, dense.masks, prunable)
  one = sparsity.oneshot_masks(layerwise, dense.trained_params, imp_masks, prunable)
  for a, b, f in zip(jax.tree.leaves(one), jax.tree.leaves(imp_masks), jax.tree.leaves(prunable)):
    assert a.sum() == b.sum()  # IMP's count in every layer, positions from the dense weights
  np.testing.assert_array_equal(jax.tree.leaves(one)[1], jax.tree.leaves(
      sparsity.prune_like(dense.trained_params, prunable, imp_masks))[1])


@pytest.mark.e2e
def test_packed_runs_give_the_same_masks_and_table_as_one_run_at_a_time(run_dir, tmp_path, capsys):
  """The same config with 2 runs per step (vmapped on this one device): the same runs, so the same tickets.

  Sized down to replicate 0 and two baselines (a run's ticket does not depend on the replicates or branches beside
  it). The packs are then [dense], [IMP 1], [IMP 2 + random_prune 1], [random_reinit 1 + random_prune 2],
  [random_reinit 2]: a round's baseline trains beside IMP's next round, and runs of two branches share a step."""
  workdir, config, _, _ = run_dir
  branches = ("imp", "random_prune", "random_reinit")
  packed = config_from(config, parallel__runs_per_step=2, imp__replicates=1, imp__branches=",".join(branches))
  imp.run(config_lib.resolve(packed), str(tmp_path))
  out = capsys.readouterr().out
  assert "Packing: up to 2 runs side by side per step" in out
  together = lambda a, b: any(a in chunk and b in chunk for chunk in out.split("[2 runs side by side]"))
  assert together("[rep 0 imp round 2] step 3/3", "[rep 0 random_prune round 1] step 3/3")
  assert together("[rep 0 random_reinit round 1] step 3/3", "[rep 0 random_prune round 2] step 3/3")
  read = lambda d: list(csv.DictReader(open(os.path.join(d, "results.csv"))))
  columns = [k for k in read(workdir)[0] if k.startswith(("sparsity", "remaining"))] + ["branch", "replicate", "round"]
  ours = [{k: r[k] for k in columns} for r in read(workdir) if r["branch"] in branches and r["replicate"] == "0"]
  assert [{k: r[k] for k in columns} for r in read(str(tmp_path))] == ours and len(ours) == 7
  for branch in branches:
    for round_ in range(0 if branch == "imp" else 1, ROUNDS + 1):
      a, b = ticket(workdir, branch, round_, 0), ticket(str(tmp_path), branch, round_, 0)
      for x, y in zip(jax.tree.leaves(a.masks), jax.tree.leaves(b.masks)):
        np.testing.assert_array_equal(x, y, err_msg=f"{branch} round {round_}")
      assert b.metrics["total"] == pytest.approx(a.metrics["total"], rel=1e-4)


def config_from(config, **overrides):
  c = config.copy_and_resolve_references()
  for key, value in overrides.items():
    section, name = key.split("__")
    c[section][name] = value
  return c


@pytest.mark.e2e
def test_target_sparsity_stops_imp_at_the_first_round_that_reaches_it(tmp_path, capsys):
  """Rounds prune 20% of the survivors: 0.2 after round 1, 0.36 after round 2. A target of 0.3 ends IMP (and its
  baselines) at round 2 of the 5 asked for."""
  config = tiny_config(imp__rounds=5, imp__target_sparsity=0.3, imp__branches="imp,random_prune",
                       eval__num_pairs=4, eval__batch_size=4)  # run_dir's eval program
  rows = imp.run(config_lib.resolve(config), str(tmp_path))
  assert sorted((r["branch"], r["round"]) for r in rows) == [("imp", 0), ("imp", 1), ("imp", 2), ("random_prune", 1),
                                                             ("random_prune", 2)]
  reached = [ticket(str(tmp_path), "imp", r, 0).sparsity["prunable"]["sparsity"] for r in (1, 2)]
  assert reached[0] < 0.3 <= reached[1] and reached == pytest.approx([0.2, 0.36], abs=1e-3)
  for branch, first in (("imp", 0), ("random_prune", 1)):
    assert sorted(os.listdir(os.path.join(tmp_path, "tickets", branch, "rep_0"))) == [
        f"round_{r:02d}" for r in range(first, 3)]
    assert not checkpoint.ticket_exists(workdir_lib.ticket_dir(str(tmp_path), branch, 3, 0))
  out = capsys.readouterr().out
  assert f"[rep 0] reached the target sparsity 0.3000 at round 2 ({reached[1]:.4f})." in out
  assert "round 3]" not in out and "reached the target" not in out.split("[rep 0 imp round 2] eval")[0]


@pytest.mark.e2e
def test_rerun_skips_finished_rounds(run_dir, capsys):
  workdir, config, _, _ = run_dir
  imp.run(config_lib.resolve(config), workdir)
  out = capsys.readouterr().out
  assert "[rep 1 oneshot round 2] already done" in out and "step 1/3" not in out


@pytest.mark.e2e
def test_rewind_to_step_k_restores_theta_k_and_restarts_the_schedule(tmp_path, capsys):
  config = tiny_config(imp__rounds=1, imp__rewind_step=2, train__steps=4)
  imp.run(config_lib.resolve(config), str(tmp_path))
  theta_0 = checkpoint.load_params(os.path.join(tmp_path, "init", "rep_0", "theta_0"))
  theta_k = checkpoint.load_params(os.path.join(tmp_path, "init", "rep_0", "theta_2"))
  t1 = ticket(str(tmp_path), "imp", 1, 0)
  for a, b in zip(jax.tree.leaves(t1.rewind_params), jax.tree.leaves(theta_k)):
    np.testing.assert_array_equal(a, b)
  assert any(np.any(a != b) for a, b in zip(jax.tree.leaves(theta_k), jax.tree.leaves(theta_0)))
  assert t1.metrics["steps"] == 2 and t1.metrics["rewind_step"] == 2  # steps k..T of the schedule
  assert "[rep 0 imp round 1] step 3/4" in capsys.readouterr().out


@pytest.mark.e2e
def test_vgg_weights_file_is_the_loss_network_and_encoder_init(tmp_path):
  from jaxtickets.weights import files as weights
  from jaxtickets.models import get_model

  config = tiny_config(imp__rounds=0, train__steps=1)
  model = get_model("adain")(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(42)))
  vgg = jax.tree.map(lambda x: np.asarray(x) * 1.5, vgg)  # unlike any seed's random init
  path = str(tmp_path / "vgg.npz")
  weights.save_vgg_weights(path, vgg)
  config.model.vgg_weights = path
  imp.run(config_lib.resolve(config), str(tmp_path / "run"))
  theta_0 = checkpoint.load_params(os.path.join(tmp_path, "run", "init", "rep_0", "theta_0"))
  for name, layer in theta_0["encoder"].items():
    np.testing.assert_array_equal(layer["kernel"], vgg[name]["kernel"])


def test_inference_sparsity_counts_a_fixed_encoders_vgg_as_dense_weights(tmp_path):
  from jaxtickets.models import vgg as vgg_lib

  c = imp.setup(config_lib.resolve(tiny_config(model__train_encoder=False)), str(tmp_path)).compute
  frozen = vgg_lib.truncate(jax.device_get(c.vgg_params), c.model.encoder_depth)
  assert c.frozen_inference_size == sum(int(np.size(a)) for a in jax.tree.leaves(frozen)) > 0
  params = jax.device_get(c.model.init(jax.random.PRNGKey(0), jax.device_get(c.vgg_params)))
  assert set(params) == {"decoder"}
  masks = sparsity.global_magnitude_prune(params, sparsity.ones_masks(params), c.prunable, 0.5)
  report = imp.sparsity_report(c, masks, params)
  pruned = report["total"]["size"] - report["total"]["remaining"]
  assert report["inference"]["size"] == report["total"]["size"] + c.frozen_inference_size
  assert report["inference"]["sparsity"] == pytest.approx(pruned / report["inference"]["size"])
  assert report["groups"]["decoder"]["sparsity"] == pytest.approx(report["total"]["sparsity"])
