"""Packing: the layout config.parallel asks for, and the straight-line loop that trains a pack of runs."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxtickets import imp, pack, parallel, preempt, sparsity, streams
from helpers import tiny_config


def _layout(monkeypatch, devices, platform="cpu", concurrent=2, **parallel):
  monkeypatch.setattr(jax, "device_count", lambda: devices)
  config = tiny_config(train__batch_size=4, **{f"parallel__{k}": v for k, v in parallel.items()})
  return pack.choose_layout(config, concurrent=concurrent, platform=platform)


def test_runs_axis_sizes_leave_each_runs_batch_splitting_evenly():
  assert parallel.runs_axis_sizes(8, 4) == [2, 4, 8]  # 'data' of 4, 2, 1 devices: batch 4 splits over each
  assert parallel.runs_axis_sizes(8, 3) == [8]
  assert parallel.runs_axis_sizes(8, 4, runs_per_step=6) == [2]
  assert parallel.runs_axis_sizes(1, 4) == [1]


@pytest.mark.parametrize("devices, platform, concurrent, parallel, want", [
    (1, "cpu", 3, {}, (1, 1)),  # one CPU device: one run at a time, never a slower grouped convolution
    (8, "cpu", 2, {}, (2, 2)),  # the round's 2 replicates over 2 x 4 devices
    (8, "cpu", 3, {}, (4, 4)),  # 3 replicates: the next size that holds them
    (8, "cpu", 16, {}, (8, 8)),  # more runs than devices: one per device
    (1, "gpu", 3, {}, (3, 1)),  # an accelerator packs a round's replicates on one device (vmapped)
    (8, "cpu", 2, {"pack_runs": False}, (1, 1)),
    (8, "cpu", 2, {"runs_per_step": 4}, (4, 4)),
    (1, "cpu", 2, {"runs_per_step": 4}, (4, 1)),  # asked for: 4 vmapped on the one device
])
def test_choose_layout(monkeypatch, devices, platform, concurrent, parallel, want):
  layout = _layout(monkeypatch, devices, platform, concurrent, **parallel)
  assert (layout.runs_per_step, layout.runs_axis) == want
  assert layout.runs_per_device * layout.runs_axis == layout.runs_per_step


@pytest.fixture(scope="module")
def pack_setup(tmp_path_factory):
  """A run context that trains 2 runs side by side on this one device, 6 steps, checkpoints every 2."""
  workdir = str(tmp_path_factory.mktemp("pack"))
  config = tiny_config(train__steps=6, train__log_every=4, checkpoint__every_steps=2, checkpoint__async_save=False,
                       imp__replicates=2, parallel__runs_per_step=2)
  ctx = imp.setup(config, workdir)
  assert ctx.compute.layout == pack.Layout(2, 1)
  return ctx


def _jobs(ctx):
  c, jobs = ctx.compute, []
  for index in range(2):
    rep = imp.replicate(c.config, index)
    params = jax.device_get(c.model.init(streams.key(rep.seed, streams.Stream.INIT), jax.device_get(c.vgg_params)))
    jobs.append(pack.Job("imp", 0, rep, params, sparsity.ones_masks(params), start_step=0))
  return jobs


class _Watch:
  """Stops after `at`, like a SIGTERM arriving then; records what the loop asked."""

  def __init__(self, at):
    self.at, self.asked, self.reason = at, [], None

  def __call__(self, step, synced):
    self.asked.append((step, synced))
    if step == self.at:
      self.reason = "SIGTERM"
    return self.reason is not None


def _with(ctx, workdir, watch):
  logs = []
  output = dataclasses.replace(ctx.output, workdir=workdir, watch=watch, log=logs.append)
  return imp.with_run_state(dataclasses.replace(ctx, output=output)), logs


@pytest.mark.e2e
def test_a_preemption_saves_every_run_of_the_pack_and_raises(pack_setup, tmp_path):
  ctx, logs = _with(pack_setup, str(tmp_path), _Watch(at=3))
  jobs = _jobs(ctx)
  with pytest.raises(preempt.Preempted, match=r"Stopped by SIGTERM at step 3 of a pack of 2 runs; the checkpoint is "
                                               r"step 3 in '.*state'"):
    pack.train(ctx, jobs)
  ckpts = ctx.output.ckpts
  assert ctx.output.watch.asked == [(1, False), (2, True), (3, False)]  # all processes ask together at saves and logs
  assert ckpts.steps() == [2, 3]
  meta = ckpts.meta(3)
  assert meta["pack_size"] == 2 and [(r["replicate"], r["step"]) for r in meta["runs"]] == [(0, 3), (1, 3)]

  # The same jobs again: both runs resume at step 3 and finish; the checkpoints stay until the caller clears them.
  ctx2, logs2 = _with(pack_setup, str(tmp_path), preempt.PreemptionWatch())
  results = pack.train(ctx2, jobs)
  assert [r.nan_skips for r in results] == [0, 0] and [r.end_step for r in results] == [6, 6]
  assert all(r.early_bird_step is None and r.early_bird_history is None for r in results)
  assert sum("resuming at step 3 from its checkpoint" in line for line in logs2) == 2
  assert any("[rep 1 imp round 0] step 6/6" in line and "[2 runs side by side]" in line for line in logs2)
  assert ctx2.output.ckpts.steps() == [2, 3, 4]
  # The two runs are different runs (their own init and data order), not one trained twice.
  a, b = (jax.tree.leaves(r.params) for r in results)
  assert any(not np.allclose(x, y) for x, y in zip(a, b))
  ctx.output.close()
  ctx2.output.close()


def test_a_non_finite_loss_stops_the_pack_and_saves_nothing_after_it(pack_setup, tmp_path, monkeypatch):
  from jaxtickets import data, train

  sample = data._Sample.__call__  # pylint: disable=protected-access

  def poisoned(self, j):  # global samples 4 and 5 = the 3rd step (batch 2) of every run
    out = sample(self, j)
    return dict(out, content=np.full_like(out["content"], np.nan)) if j in (4, 5) else out

  monkeypatch.setattr(data._Sample, "__call__", poisoned)  # pylint: disable=protected-access
  ctx, _ = _with(pack_setup, str(tmp_path), preempt.PreemptionWatch())
  with pytest.raises(train.NonFiniteLoss, match=r"non-finite at step 3 of \[rep 0 imp round 0\].*last good "
                                                r"checkpoint is step 2 in"):
    pack.train(ctx, _jobs(ctx))
  assert ctx.output.ckpts.steps() == [2]  # the check at step 4 found the bad step 3 and saved nothing
  ctx.output.close()
