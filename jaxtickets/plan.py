"""Plans a run before renting a pod: python -m jaxtickets.plan --config=configs/adain.py --topology=v5e:4x4.

Builds the packed train step `main` would run for the config (the same layout choice, mesh, step and inputs), on a
TPU topology's abstract devices, or on the local devices without --topology, compiles it ahead of time and prints
per chip: the bytes it holds against the chip's memory, the FLOPs of one step, the collectives in the program, the
layout, and what the whole protocol costs at the chip's peak (a lower bound: no step runs faster than its FLOPs at
peak) and at a stated utilisation. Nothing is trained or loaded, and no TPU is needed: compiling for a topology
needs libtpu (pip install -e '.[tpu]'). A step's time is not known until it runs on a chip.
"""

import dataclasses
import math

from absl import app, flags, logging
from ml_collections import config_flags

from jaxtickets import errors
from jaxtickets.errors import UserError

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command's flags, defined when it runs (not on import: the commands share flag names such as --config)."""
  flags.DEFINE_string("topology", None, "A TPU topology as JAX names them: v4, v5e, v5p or v6e and a slice shape, "
                      "e.g. v5e:4x4, v5e:16x16, v4:2x2x2, v5p:4x4x4. Default: this machine's devices.")
  flags.DEFINE_integer("num_slices", 1, "Slices of --topology joined over the data-center network (multi-slice).")
  flags.DEFINE_float("utilization", 0.4, "The share of the chip's peak FLOP/s a step is assumed to reach, for the "
                     "second cost estimate (the first assumes the peak).")
  flags.DEFINE_float("peak_tflops", None, "Peak bf16 TFLOP/s per device where the chip table has none (CPU, GPU).")
  config_flags.DEFINE_config_file("config", None, "A config file, e.g. configs/adain.py or configs/adain.py:demo.",
                                  lock_config=True)


@dataclasses.dataclass(frozen=True)
class Plan:
  settings: object  # settings.RunSettings
  target: object  # aot.Target
  layout: object  # layout_lib.Layout
  mesh_shape: tuple[int, int]  # (runs, data)
  compiled: object  # aot.Compiled: the chosen layout's step
  phases: list  # order.Phase
  most_ready: int  # the most trainings any pack has ready
  free_replicates: int  # replicates that fit the same packed steps
  peak_flops: float | None  # per device

  @property
  def packed_steps(self) -> int:
    return sum(p.packs * p.steps for p in self.phases)

  def hours(self, utilisation: float = 1.0) -> float | None:
    """Hours of the whole target for the protocol's packed steps at `utilisation` of the devices' peak."""
    if not self.peak_flops:
      return None
    return self.packed_steps * self.compiled.flops / (self.peak_flops * utilisation) / 3600


def make_plan(config, target, peak_flops: float | None = None) -> Plan:
  """Builds and compiles the step a run of `config` on `target` (an aot.Target) trains with."""
  from jaxtickets.core import parallel  # pylint: disable=g-import-not-at-top
  from jaxtickets.run import aot, train
  from jaxtickets.run import order, layout as layout_lib  # pylint: disable=g-import-not-at-top
  from jaxtickets import config as config_lib
  from jaxtickets.models import get_model  # pylint: disable=g-import-not-at-top

  run = config_lib.checked_settings(config, devices=target.devices, data=False)  # a plan needs no images
  step, protocol, crop = run.step, run.protocol, run.data.crop_size
  model = get_model(run.model.name)(run.model.options)
  tx = train.make_optimizer(step.adam_eps)
  compile_layout = aot.step_compiler(model, step, crop, tx, target.devices, target.platform)
  layout = layout_lib.choose_layout(run.packing, step.batch_size, concurrent=protocol.replicates,
                                    platform=target.platform, devices=target.devices, compile_layout=compile_layout,
                                    memory_bytes=target.memory_bytes, describe=aot.describe_run(model, step, crop))
  compiled = compile_layout(layout.runs_axis, layout.runs_per_device)
  mesh = parallel.make_mesh(layout.runs_axis, devices=target.devices)
  n = layout.runs_per_step
  return Plan(settings=run, target=target, layout=layout,
              mesh_shape=(mesh.shape[parallel.RUNS_AXIS], mesh.shape[parallel.DATA_AXIS]), compiled=compiled,
              phases=order.phases(protocol, step.steps, n), most_ready=order.most_ready(protocol, n),
              free_replicates=order.free_replicates(protocol, step.steps, n),
              peak_flops=peak_flops or target.peak_flops)


def _gib(n: float) -> str:
  return f"{n / (1 << 30):8.2f} GiB"


def _duration(hours: float) -> str:
  if hours >= 1:
    return f"{hours:,.1f} hours"
  if hours * 60 >= 1:
    return f"{hours * 60:.1f} minutes"
  return f"{hours * 3600:.1f} seconds" if hours * 3600 >= 1 else f"{hours * 3.6e6:.3g} milliseconds"


def _chip_hours(n: float) -> str:
  return f"{n:,.1f} chip-hours" if n >= 10 else f"{n:.3g} chip-hours"


def _flop(n: float) -> str:
  for unit, size in (("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
    if n >= size:
      return f"{n / size:,.1f} {unit}"
  return f"{n:,.0f} FLOP"


def format_plan(plan: Plan, utilisation: float = 0.4) -> str:
  """The plan as the command prints it."""
  c, t, lay, comp = plan.settings, plan.target, plan.layout, plan.compiled
  dtype = c.model.dtype
  memory = t.memory_bytes
  where = f"{t.name}: " if t.name != "local" else "this machine: "
  lines = [
      f"Plan: {c.model.name} at width {c.model.width:g} in {dtype}, batch {c.step.batch_size}, "
      f"{c.data.crop_size} px crops, on {where}{t.chips} {t.device_kind} device(s)"
      + (f" in {t.slices} slices" if t.slices > 1 else "") + f", compiled for {t.platform} in {comp.seconds:.0f} s.",
      f"Layout: {lay.runs_per_step} run(s) per step on a {plan.mesh_shape[0]} runs x {plan.mesh_shape[1]} data mesh "
      f"({lay.runs_per_device} run(s) per device; each run's batch of {c.step.batch_size} over "
      f"{plan.mesh_shape[1]} device(s))" + (f"; {lay.why}." if lay.why else "."),
      "",
      ("Per chip" if t.platform == "tpu" else "Per device") + ", one packed step"
      + (f" (of {memory / (1 << 30):.1f} GiB " + ("HBM" if t.platform != "cpu" else "host memory") + ")"
         if memory else "") + ":",
  ]
  rows = [("arguments (params, Adam, masks, VGG, batch)", comp.argument_bytes),
          ("working (activations, gradients, new state)", comp.working_bytes),
          ("program code", comp.code_bytes),
          ("peak", comp.peak_bytes)]
  for name, value in rows:
    share = f"  {value / memory:6.1%}" if memory else ""
    lines.append(f"  {name:<46} {value:>15,} bytes {_gib(value)}{share}")
  lines.append(f"  (compiler's own figures: arguments {comp.argument_bytes:,}, temporaries {comp.temp_bytes:,}, "
               f"outputs {comp.output_bytes:,} of which {comp.alias_bytes:,} reuse donated arguments)")
  lines.append(f"  FLOPs per step: {_flop(comp.flops)}")
  found = ", ".join(f"{k} x{v}" for k, v in comp.collectives.items()) or "none"
  lines.append(f"  collectives in the program: {found}")
  i = c.protocol
  lines += ["", f"Protocol: the dense round and {i.rounds} pruned rounds of {c.step.steps:,} steps (rewinding to step "
            f"{i.rewind_step}), {i.replicates} replicates, branches {', '.join(i.branches)}; as the order packs "
            "them:"]
  lines.append(f"  {'phase':<40} {'trainings':>9} {'packs':>6} {'steps/pack':>11} {'busy slots / slots':>20}")
  for p in plan.phases:
    lines.append(f"  {p.name:<40} {p.trainings:>9} {p.packs:>6} {p.steps:>11,} "
                 f"{f'{p.trainings}/{p.slots} = {p.utilisation:.0%}':>20}")
  lines.append(f"  {plan.packed_steps:,} packed steps in all.")
  if plan.most_ready < lay.runs_per_step:
    axis = math.ceil(plan.most_ready / lay.runs_per_device)
    lines.append(f"  No pack ever has more than {plan.most_ready} of its {lay.runs_per_step} slots busy (a replicate's "
                 f"rounds are sequential): a 'runs' axis of {axis} ({axis * plan.mesh_shape[1]} devices at the same "
                 "data split) would train the same packs in the same time.")
  if plan.free_replicates > i.replicates:
    lines.append(f"  The idle slots hold more replicates for no more time: imp.replicates={plan.free_replicates} "
                 "trains in as many packed steps.")
  at_peak = plan.hours()
  if at_peak is None:
    lines.append(f"Cost: the peak FLOP/s of a {t.device_kind} is not in the chip table: pass --peak_tflops to price "
                 "the protocol.")
  else:
    chips = t.chips
    lines.append(f"Cost at the peak of {plan.peak_flops / 1e12:g} TFLOP/s per chip (a lower bound): "
                 f"{_duration(at_peak)} of the whole target, {_chip_hours(at_peak * chips)}.")
    slow = plan.hours(utilisation)
    lines.append(f"Cost at {utilisation:.0%} of the peak: {_duration(slow)}, {_chip_hours(slow * chips)}.")
  lines.append("A step's real time needs a chip: these figures bound it, they do not measure it.")
  return "\n".join(lines)


def main(argv):
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  from jaxtickets.run import aot  # pylint: disable=g-import-not-at-top

  def work():
    config = FLAGS.config
    if config is None:
      raise UserError("Pass a config: python -m jaxtickets.plan --config=configs/adain.py --topology=v5e:4x4")
    if not 0 < FLAGS.utilization <= 1:
      raise UserError(f"--utilization={FLAGS.utilization} is not a share of the peak: use a number in (0, 1].")
    if FLAGS.peak_tflops is not None and FLAGS.peak_tflops <= 0:
      raise UserError(f"--peak_tflops={FLAGS.peak_tflops} is not allowed: use a positive number.")
    if FLAGS.topology:
      import jax  # pylint: disable=g-import-not-at-top
      # A plan for a topology compiles only: it must not take this machine's own accelerator from a run using it.
      jax.config.update("jax_platforms", "cpu")
      target = aot.topology(FLAGS.topology, FLAGS.num_slices)
    else:
      target = aot.local_target()
    return make_plan(config, target, FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops else None)

  plan = errors.run_command(work, "jaxtickets.plan", argv)
  print(format_plan(plan, FLAGS.utilization))


if __name__ == "__main__":
  from jaxtickets import config as config_lib_flags  # pylint: disable=g-import-not-at-top
  define_flags()
  app.run(main, flags_parser=config_lib_flags.parse_flags)
