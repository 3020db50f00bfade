"""Compiling for a target ahead of time (jaxtickets.run.aot) and the planner (jaxtickets.plan).

TPU topologies need libtpu (the tpu extra); their devices are abstract, so nothing here needs a TPU. Compiles are
of tiny AdaIN at 32 px.
"""

import dataclasses
import importlib.util

import pytest

from jaxtickets import config as config_lib
from jaxtickets.core import parallel
from jaxtickets.run import aot
from jaxtickets.run import order, layout as layout_lib
from jaxtickets.errors import UserError

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="needs libtpu: pip install -e '.[tpu]'")


@needs_libtpu
@pytest.mark.parametrize("name, chips, kind", [("v5e:2x2", 4, "TPU v5 lite"), ("v4:2x2x2", 8, "TPU v4"),
                                               ("v5p:2x2x2", 8, "TPU v5"), ("v6e:2x2", 4, "TPU v6 lite")])
def test_topologies_give_one_device_per_chip_and_the_mesh_builds_on_them(name, chips, kind):
  target = aot.topology(name)
  assert target.chips == chips and target.device_kind == kind and target.platform == "tpu"
  assert target.memory_bytes == aot.CHIPS[name.split(":")[0]].hbm_bytes
  mesh = parallel.make_mesh(2, devices=target.devices)
  assert mesh.shape == {parallel.RUNS_AXIS: 2, parallel.DATA_AXIS: chips // 2}


@needs_libtpu
def test_a_mesh_of_several_slices_puts_the_slices_on_the_runs_axis():
  target = aot.topology("v5e:2x2", num_slices=2)
  assert target.chips == 8 and target.slices == 2
  mesh = parallel.make_mesh(2, devices=target.devices)
  assert [{d.slice_index for d in row} for row in mesh.devices] == [{0}, {1}]
  mesh = parallel.make_mesh(1, devices=target.devices)  # one run: its data axis spans both slices
  assert mesh.shape[parallel.DATA_AXIS] == 8


@needs_libtpu
def test_per_core_devices_of_a_two_core_chip_get_a_sentence_not_an_assertion():
  from jax.experimental import topologies
  per_core = topologies.get_topology_desc(topology_name="v4:2x2x2", platform="tpu", chip_config_name="default",
                                          chips_per_host_bounds=(2, 2, 1), num_slices=1).devices
  with pytest.raises(UserError) as e:
    parallel.make_mesh(2, devices=per_core)
  assert "are the TensorCores of 8 chips" in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize("name, words", [
    ("v9:2x2", "Unknown TPU generation 'v9'"),
    ("v5e", "has no shape"),
    ("v5e:3x3", "v5e has no 3x3 slice"),
    ("v5e:2x2x2", "v5e has no 2x2x2 slice"),
    ("v4:2x2", "v4 has no 2x2 slice"),
    ("v4:4x4x6", "v4 has no 4x4x6 slice"),
])
def test_a_topology_the_generation_does_not_have_gets_one_sentence(name, words):
  with pytest.raises(UserError) as e:
    aot.topology(name)
  assert words in str(e.value) and len(str(e.value).splitlines()) == 1


def _compiled(peak: int) -> aot.Compiled:
  return aot.Compiled(argument_bytes=peak // 4, output_bytes=0, alias_bytes=0, temp_bytes=0, code_bytes=0,
                      xla_peak_bytes=peak, flops=1.0, collectives={}, seconds=0.0)


def test_fit_takes_the_most_runs_per_device_whose_compiled_peak_fits_the_headroom():
  asked = []

  def measure(k):  # 50 bytes for the program's fixed part, 100 per run
    asked.append(k)
    return _compiled(50 + 100 * k)

  k, got = aot.fit_runs_per_device(4, measure, memory_bytes=300 / aot.HEADROOM, describe="adain")
  assert (k, got.peak_bytes) == (2, 250) and asked == [4, 1, 2]  # the line through 4 and 1 guesses 2 at once
  asked.clear()
  assert aot.fit_runs_per_device(4, measure, memory_bytes=1000, describe="adain")[0] == 4 and asked == [4]
  assert aot.fit_runs_per_device(4, measure, memory_bytes=None, describe="adain")[0] == 4  # unknown memory: as asked


def test_a_run_that_does_not_fit_one_device_gets_one_sentence_naming_it_and_the_bytes():
  with pytest.raises(UserError) as e:
    aot.fit_runs_per_device(2, lambda k: _compiled(1000 * k), memory_bytes=800,
                            describe="adain at batch 8, 256 px crops, bfloat16")
  msg = str(e.value)
  assert len(msg.splitlines()) == 1
  assert "One run of adain at batch 8, 256 px crops, bfloat16 does not fit a device: needs 1,000 bytes" in msg
  assert "of the 800 bytes" in msg


def test_a_step_the_compiler_cannot_fit_counts_as_not_fitting_and_its_refusal_is_the_reason():
  def measure(k):  # the compiler fits one run's kernels in the core's vector memory, not two
    if k > 1:
      raise aot.CompileOutOfMemory("vmem", "18.45M", "16.00M")
    return _compiled(100)

  assert aot.fit_runs_per_device(3, measure, memory_bytes=1000, describe="adaattn")[0] == 1
  with pytest.raises(aot.RunDoesNotFit) as e:
    aot.fit_runs_per_device(2, lambda k: measure(k + 1), memory_bytes=1000, describe="adaattn at batch 8")
  assert str(e.value).startswith("One run of adaattn at batch 8 does not fit a device: the compiler ran out of the "
                                 "device's VMEM (the step needs 18.45MB of its 16.00MB); spread each run's batch")
  text = ("INTERNAL: RET_CHECK failure ... CompilationResultProto='Ran out of memory in memory space vmem. Used 18.45M "
          "of 16.00M vmem. Exceeded vmem capacity by 2.45M.")
  assert aot._OUT_OF_MEMORY.search(text).groups() == ("vmem", "18.45M", "16.00M")  # pylint: disable=protected-access


def _per_device_limit(images: int):
  """compile_layout for 8 devices and batch 8 whose compiler refuses more than `images` images per device."""
  def compile_layout(runs_axis, runs_per_device):
    if runs_per_device * 8 // (8 // runs_axis) > images:
      raise aot.CompileOutOfMemory("vmem", "18.45M", "16.00M")
    return _compiled(100)
  return compile_layout


def test_auto_packing_splits_each_run_s_batch_over_more_devices_when_one_run_does_not_fit():
  from helpers import tiny_config

  from jaxtickets.run import layout as layout_lib
  from jaxtickets.models import get_model
  run = config_lib.resolve(tiny_config(train__batch_size=8))
  describe = aot.describe_run(get_model(run.model.name)(run.model.options), run.step, run.data.crop_size)
  choose = lambda limit: layout_lib.choose_layout(run.packing, run.step.batch_size, concurrent=3, platform="tpu",
                                                  devices=list(range(8)), compile_layout=_per_device_limit(limit),
                                                  memory_bytes=1 << 30, describe=describe)
  # 3 replicates: 4 runs x 2 data (4 images a device) first; at most 2 images a device, 2 x 4 with one run each.
  assert choose(8) == layout_lib.Layout(4, 4) and choose(2) == layout_lib.Layout(2, 2)
  assert not choose(8).why and choose(2).why == ("with each run's batch over 2 device(s), one run did not fit: the "
                                                 "compiler ran out of the device's VMEM (the step needs 18.45MB of "
                                                 "its 16.00MB)")
  with pytest.raises(UserError) as e:
    choose(0)
  msg = str(e.value)
  assert msg.startswith("One run of adain at batch 8, 32 px crops, float32 fits no layout of the 8 devices (each "
                        "run's batch over 2, 4, 8 of them; with the most: the compiler ran out of the device's VMEM")
  assert len(msg.splitlines()) == 1


def test_collectives_are_counted_from_the_program_text():
  text = ("%a = f32[4] all-reduce(f32[4] %x), replica_groups={}\n%b = all-gather-start(%y)\n%c = all-gather-done(%b)\n"
          "%d = f32[2] collective-permute(%z)\n%e = f32[2] add(%all-reduce.1, %d)")
  assert aot.collectives(text) == {"all-gather": 1, "all-reduce": 1, "collective-permute": 1}


# The TPU compiles check the planner's mechanics (bytes, FLOPs, collectives, packing by memory), not what the model
# learns: a fixed encoder halves the program the compiler sees, and 16 px crops shorten the compile again
# (measured in docs/tests.md).
TPU_TINY = {"model__train_encoder": False, "data__crop_size": 16, "data__load_size": 20}
# Packing by memory needs a peak that grows with the runs a chip holds: at 16 px the compiler's layout for two
# vmapped runs peaks below one run's, at 24 px above it.
TPU_PACKING = {"model__train_encoder": False, "data__crop_size": 24, "data__load_size": 28}


def _tiny_compiler(target, **overrides):
  from helpers import tiny_config

  from jaxtickets import config as config_lib
  from jaxtickets.run import train
  from jaxtickets.models import get_model
  run = config_lib.resolve(tiny_config(**overrides))
  model = get_model(run.model.name)(run.model.options)
  tx = train.make_optimizer(run.step.adam_eps)
  return aot.step_compiler(model, run.step, run.data.crop_size, tx, target.devices, target.platform)


@pytest.mark.e2e  # compiles two packed steps
def test_two_runs_per_device_need_about_twice_the_working_memory_and_flops_of_one():
  compile_layout = _tiny_compiler(aot.local_target())
  one, two = compile_layout(1, 1), compile_layout(1, 2)
  assert one.argument_bytes > 0 and one.working_bytes > 0 and one.flops > 0
  assert 1.6 < two.working_bytes / one.working_bytes < 2.6
  assert 1.6 < two.argument_bytes / one.argument_bytes < 2.4
  assert 1.8 < two.flops / one.flops < 2.3


@needs_libtpu
@pytest.mark.e2e  # a TPU compile
@pytest.mark.parametrize("name, runs_axis", [("v5e:2x2", 2), ("v4:2x2x2", 4)])
def test_the_step_compiles_for_a_topology_with_its_bytes_flops_and_gradient_all_reduce(name, runs_axis):
  target = aot.topology(name)
  got = _tiny_compiler(target, **TPU_TINY)(runs_axis, 1)  # each run's batch of 2 over 2 chips
  assert got.argument_bytes > 0 and got.working_bytes > 0 and got.code_bytes > 0 and got.flops > 0
  assert got.peak_bytes < target.memory_bytes
  assert got.collectives.get("all-reduce", 0) >= 1  # each run's gradients, summed over its 2 chips


def test_the_schedule_counts_each_phase_s_busy_slots():
  from helpers import tiny_config

  run = config_lib.resolve(tiny_config(imp__replicates=3, imp__rounds=3,
                                      imp__branches="imp,random_prune,random_reinit", imp__rewind_step=1))
  protocol, steps = run.protocol, run.step.steps
  phases = order.phases(protocol, steps, runs_per_step=4)
  # IMP's rounds take 3 of each pack's 4 slots; a round-r baseline takes the fourth beside round r+1.
  assert [(p.trainings, p.packs, p.steps, p.slots) for p in phases] == [(3, 1, 3, 4), (11, 3, 2, 12), (16, 4, 2, 16)]
  assert [round(p.utilisation, 2) for p in phases] == [0.75, 0.92, 1.0]
  assert order.most_ready(protocol, runs_per_step=4) == 4 and order.most_ready(protocol, runs_per_step=32) == 9
  assert [(p.trainings, p.packs) for p in order.phases(protocol, steps, runs_per_step=1)] == [(3, 3), (9, 9), (18, 18)]


def test_a_big_slice_s_idle_slots_are_named_with_the_replicates_they_would_hold_for_free():
  from helpers import tiny_config

  # The paper's shape: 10 rounds, IMP and random pruning. At 32 slots a pack never has more than 3 IMP runs and 3
  # baselines ready; 16 replicates (16 + 16 ready) still take the dense pack, 10 IMP packs and one more.
  run = config_lib.resolve(tiny_config(imp__replicates=3, imp__rounds=10, imp__branches="imp,random_prune"))
  protocol, steps = run.protocol, run.step.steps
  assert order.most_ready(protocol, 32) == 6 and order.free_replicates(protocol, steps, 32) == 16
  assert order.free_replicates(protocol, steps, 4) == 3  # 4 slots are full already: a 4th replicate adds packs
  packed = lambda reps: sum(p.packs * p.steps for p in order.phases(protocol, steps, 32, reps))
  assert packed(16) == packed(3) == 12 * steps < packed(17)


def test_cost_text_keeps_its_digits_at_every_scale():
  from jaxtickets import plan
  got = [plan._duration(h) for h in (2.5, 0.5, 0.5 / 60, 2.1e-6)]  # pylint: disable=protected-access
  assert got == ["2.5 hours", "30.0 minutes", "30.0 seconds", "7.56 milliseconds"]
  assert [plan._chip_hours(n) for n in (3603.94, 0.000123)] == ["3,603.9 chip-hours", "0.000123 chip-hours"]  # pylint: disable=protected-access


@pytest.mark.e2e  # compiles the local step
def test_the_local_plan_prints_the_table():
  from helpers import tiny_config

  from jaxtickets import plan
  got = plan.make_plan(tiny_config(), aot.local_target())
  assert got.layout.runs_per_step == 1 and got.compiled.flops > 0 and got.compiled.peak_bytes > 0
  text = plan.format_plan(got)
  for words in ("Per device, one packed step", "host memory", "peak", "FLOPs per step", "collectives in the program",
                "busy slots / slots", "not in the chip table: pass --peak_tflops"):
    assert words in text
  priced = plan.format_plan(plan.make_plan(tiny_config(), aot.local_target(), peak_flops=1e11))
  # The same plan as a 32-slot pod would have it: the idle slots are named, with what they could hold.
  run = config_lib.resolve(tiny_config(imp__replicates=3, imp__rounds=10, imp__branches="imp,random_prune"))
  p, steps = run.protocol, run.step.steps
  wide = dataclasses.replace(got, settings=run, layout=layout_lib.Layout(32, 32), mesh_shape=(32, 1),
                             phases=order.phases(p, steps, 32), most_ready=order.most_ready(p, 32),
                             free_replicates=order.free_replicates(p, steps, 32))
  text = plan.format_plan(wide)
  assert "No pack ever has more than 6 of its 32 slots busy" in text and "'runs' axis of 6 (6 devices" in text
  assert "imp.replicates=16 trains in as many packed steps" in text
  assert "IMP rounds 1-10 + 27 baselines beside" in text and "30/320 = 9%" not in text
  assert "Cost at the peak of 0.1 TFLOP/s per chip (a lower bound)" in priced and "Cost at 40% of the peak" in priced


@needs_libtpu
@pytest.mark.e2e  # TPU compiles
def test_the_planner_compiles_for_v5e_2x2_and_prints_the_table():
  from helpers import tiny_config

  from jaxtickets import plan
  # The program of the topology test's v5e:2x2 compile (2 runs over 2 x 2 chips): the planner reuses that compile.
  got = plan.make_plan(tiny_config(imp__replicates=2, **TPU_TINY), aot.topology("v5e:2x2"))
  assert got.mesh_shape == (2, 2) and got.layout.runs_per_step == 2
  text = plan.format_plan(got)
  for words in ("Per chip, one packed step (of 16.0 GiB HBM)", "all-reduce x1", "Cost at the peak of 197 TFLOP/s"):
    assert words in text


@needs_libtpu
@pytest.mark.e2e
def test_auto_packing_fits_runs_per_device_to_the_hbm_and_refuses_a_run_that_does_not_fit(monkeypatch):
  import dataclasses

  from helpers import tiny_config

  from jaxtickets import plan
  config = tiny_config(imp__replicates=2, **TPU_PACKING)  # one chip: auto packing asks for both replicates on it
  roomy = plan.make_plan(config, aot.topology("v5e:1x1"))
  assert roomy.layout.runs_per_device == 2
  two = roomy.compiled.peak_bytes
  # An HBM that holds one run but not two (the chip table is where the planner reads a chip's memory).
  v5e = aot.CHIPS["v5e"]
  monkeypatch.setitem(aot.CHIPS, "v5e", dataclasses.replace(v5e, hbm_bytes=int((two - 1) / aot.HEADROOM)))
  small = plan.make_plan(config, aot.topology("v5e:1x1"))
  assert small.layout.runs_per_device == 1 and small.compiled.peak_bytes < two
  monkeypatch.setitem(aot.CHIPS, "v5e", dataclasses.replace(v5e, hbm_bytes=small.compiled.peak_bytes // 2))
  with pytest.raises(UserError) as e:
    plan.make_plan(config, aot.topology("v5e:1x1"))
  msg = str(e.value)
  assert len(msg.splitlines()) == 1
  assert "One run of adain at batch 2, 24 px crops, float32 does not fit a device: needs" in msg and f"{small.compiled.peak_bytes:,} bytes" in msg


@pytest.mark.e2e  # the command line, as a subprocess
@pytest.mark.parametrize("args, words", [
    (["--topology=v5e:3x3"], "error: v5e has no 3x3 slice"),
    (["--topology=v7x:2x2"], "error: Unknown TPU generation 'v7x'"),
    (["--utilization=2"], "error: --utilization=2.0 is not a share of the peak"),
    (["--config.train.batch_size=0"], "error: config.train.batch_size = 0 is not allowed"),
])
def test_bad_input_ends_in_one_sentence_and_exit_status_2(args, words):
  import subprocess
  import sys

  from helpers import ROOT, cli_env
  r = subprocess.run([sys.executable, "-m", "jaxtickets.plan", "--config=configs/adain.py", *args], cwd=ROOT,
                     env=cli_env(), capture_output=True, text=True, timeout=120)
  assert r.returncode == 2, r.stdout + r.stderr
  assert words in r.stderr and len([l for l in r.stderr.splitlines() if l.startswith("error:")]) == 1
