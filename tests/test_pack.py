"""Packing: the layout config.parallel asks for, and the straight-line loop that trains a pack of runs."""

import dataclasses

import jax
import numpy as np
import pytest

from jaxtickets.run import imp, preempt, train, layout as layout_lib
from jaxtickets import config as config_lib
from jaxtickets.models import get_model
from jaxtickets.core import sparsity, streams
from helpers import tiny_config


def _layout(monkeypatch, devices, platform="cpu", concurrent=2, **parallel):
  monkeypatch.setattr(jax, "device_count", lambda: devices)
  run = config_lib.resolve(tiny_config(train__batch_size=4, **{f"parallel__{k}": v for k, v in parallel.items()}))
  return layout_lib.choose_layout(run.packing, run.step.batch_size, concurrent=concurrent, platform=platform)


def test_runs_axis_sizes_leave_each_runs_batch_splitting_evenly():
  assert config_lib.runs_axis_sizes(8, 4) == [2, 4, 8]  # 'data' of 4, 2, 1 devices: batch 4 splits over each
  assert config_lib.runs_axis_sizes(8, 3) == [8]
  assert config_lib.runs_axis_sizes(8, 4, runs_per_step=6) == [2]
  assert config_lib.runs_axis_sizes(1, 4) == [1]


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


def test_on_an_accelerator_the_compiled_peak_sizes_the_pack(monkeypatch):
  from jaxtickets.run import aot
  from jaxtickets.errors import UserError
  monkeypatch.setattr(jax, "device_count", lambda: 1)
  asked = []

  def compile_layout(axis, per_device):  # 100 bytes per run and 50 for the program
    asked.append((axis, per_device))
    peak = 50 + 100 * per_device
    return aot.Compiled(argument_bytes=peak // 2, output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0,
                        xla_peak_bytes=peak, flops=1.0, collectives={}, seconds=0.0)

  def choose(memory, **kw):
    run = config_lib.resolve(tiny_config(**kw))
    model = get_model(run.model.name)(run.model.options)
    return layout_lib.choose_layout(run.packing, run.step.batch_size, concurrent=3, platform="gpu",
                                    compile_layout=compile_layout, memory_bytes=memory,
                                    describe=aot.describe_run(model, run.step, run.data.crop_size))
  assert choose(1000) == layout_lib.Layout(3, 1) and asked == [(1, 3)]  # all 3 replicates fit: one compile
  assert choose(300 / aot.HEADROOM) == layout_lib.Layout(2, 1)  # 2 of them fit
  with pytest.raises(UserError, match=r"One run of adain at batch 2, 32 px crops, float32 does not fit a device: needs 150 bytes"):
    choose(100)
  with pytest.raises(UserError, match=r"config.parallel.runs_per_step = 3 puts 3 runs of adain .* but only 2 fit"):
    choose(300 / aot.HEADROOM, parallel__runs_per_step=3)
  asked.clear()
  run = config_lib.resolve(tiny_config())
  assert layout_lib.choose_layout(run.packing, run.step.batch_size, concurrent=3, platform="cpu",
                                  compile_layout=compile_layout, memory_bytes=1) == layout_lib.Layout(1, 1) and not asked  # a CPU trains one run per device


@pytest.fixture(scope="module")
def pack_setup(tmp_path_factory):
  """A run context that trains 2 runs side by side on this one device, 6 steps, checkpoints every 2."""
  workdir = str(tmp_path_factory.mktemp("pack"))
  config = tiny_config(train__steps=6, train__log_every=4, checkpoint__every_steps=2, checkpoint__async_save=False,
                       imp__replicates=2, parallel__runs_per_step=2)
  ctx = imp.setup(config_lib.resolve(config), workdir)
  assert ctx.compute.layout == layout_lib.Layout(2, 1)
  return ctx


def _jobs(ctx):
  c, jobs = ctx.compute, []
  for index in range(2):
    rep = imp.replicate(c.protocol, index)
    params = jax.device_get(c.model.init(streams.key(rep.seed, streams.Stream.INIT), jax.device_get(c.vgg_params)))
    jobs.append(train.Job("imp", 0, rep, params, sparsity.ones_masks(params), start_step=0))
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
    train.train_pack(ctx, jobs)
  ckpts = ctx.output.ckpts
  assert ctx.output.watch.asked == [(1, False), (2, True), (3, False)]  # all processes ask together at saves and logs
  assert ckpts.steps() == [2, 3]
  meta = ckpts.meta(3)
  assert meta["pack_size"] == 2 and [(r["replicate"], r["step"]) for r in meta["runs"]] == [(0, 3), (1, 3)]

  # The same jobs again: both runs resume at step 3 and finish; the checkpoints stay until the caller clears them.
  ctx2, logs2 = _with(pack_setup, str(tmp_path), preempt.PreemptionWatch())
  results = train.train_pack(ctx2, jobs)
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


@pytest.mark.e2e  # a whole pack trained to its stop
def test_a_non_finite_loss_stops_the_pack_and_saves_nothing_after_it(pack_setup, tmp_path, monkeypatch):
  from jaxtickets.data import pipeline

  sample = pipeline._Sample.__call__  # pylint: disable=protected-access

  def poisoned(self, j):  # global samples 4 and 5 = the 3rd step (batch 2) of every run
    out = sample(self, j)
    return dict(out, content=np.full_like(out["content"], np.nan)) if j in (4, 5) else out

  monkeypatch.setattr(pipeline._Sample, "__call__", poisoned)  # pylint: disable=protected-access
  ctx, _ = _with(pack_setup, str(tmp_path), preempt.PreemptionWatch())
  with pytest.raises(train.NonFiniteLoss, match=r"non-finite at step 3 of \[rep 0 imp round 0\].*last good "
                                                r"checkpoint is step 2 in"):
    train.train_pack(ctx, _jobs(ctx))
  assert ctx.output.ckpts.steps() == [2]  # the check at step 4 found the bad step 3 and saved nothing
  ctx.output.close()


def test_the_step_s_abstract_inputs_are_what_the_pack_passes_it(pack_setup, tmp_path):
  """aot.step_inputs (what the planner and the memory sizing compile from) against the real arguments of a pack."""
  from jaxtickets.run import aot
  passed = []

  def recording(*args):
    passed.append(args)
    raise preempt.Preempted(0, "recorded", "test", "")  # one call is all it takes

  ctx, _ = _with(pack_setup, str(tmp_path), preempt.PreemptionWatch())
  c = ctx.compute
  ctx = dataclasses.replace(ctx, compute=dataclasses.replace(c, packed_step=recording))
  with pytest.raises(preempt.Preempted):
    train.train_pack(ctx, _jobs(ctx))
  ctx.output.close()
  real = passed[0]
  abstract = aot.step_inputs(c.model, c.tx, c.mesh, c.layout.runs_per_step, c.step.batch_size,
                             c.data.crop_size)
  assert jax.tree.structure(real) == jax.tree.structure(abstract)
  for got, want in zip(jax.tree.leaves(real), jax.tree.leaves(abstract)):
    assert (got.shape, got.dtype) == (want.shape, want.dtype)
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim), (got.sharding, want.sharding)
