"""How many runs train side by side in one step, over which devices: the pack's layout, sized by compiled memory
on accelerators."""

import dataclasses
import math

import jax

from jaxtickets import config as config_lib
from jaxtickets.errors import UserError
from jaxtickets.run import aot


@dataclasses.dataclass(frozen=True)
class Layout:
  """`runs_per_step` runs per step, over a 'runs' mesh axis of `runs_axis` devices (the rest is 'data')."""
  runs_per_step: int
  runs_axis: int
  why: str = dataclasses.field(default="", compare=False)  # why auto packing left its first choice, if it did

  @property
  def runs_per_device(self) -> int:
    return self.runs_per_step // self.runs_axis


def choose_layout(packing, batch_size: int, concurrent: int, platform: str | None = None, devices=None,
                  compile_layout=None, memory_bytes: int | None = None, describe: str = "the model") -> Layout:
  """The pack for a run of `batch_size` per step on `devices` (default: every device) of `platform` (default: JAX's
  default backend), as its settings.Packing asks.

  One run at a time without packing; else packing.runs_per_step, or (0, auto) enough 'runs' devices for the
  `concurrent` runs a round has (its replicates), with data parallelism over the rest, and on accelerators several
  runs per device (vmapped). On CPU a device trains one run at a time: vmapped conv weights become grouped
  convolutions, which XLA's CPU backend runs slower than one run after the other.

  On an accelerator, given `compile_layout(runs_axis, runs_per_device) -> aot.Compiled` and a device's
  `memory_bytes`, the compiled step's peak sizes the pack (`describe` names the run in its sentences): auto takes the
  most runs per device, up to the round's need, that fit aot.HEADROOM of the memory, and where not even one run fits
  (or its step does not compile for lack of a memory), splits each run's batch over more devices; a run that fits no
  layout, or an asked-for runs_per_step that does not fit, gets one sentence before anything trains.
  """
  n, batch = (jax.device_count() if devices is None else len(devices)), batch_size
  platform = platform or jax.default_backend()
  requested = packing.runs_per_step
  if requested == 1:
    layout = Layout(1, 1)
  elif requested > 1:
    layout = Layout(requested, max(config_lib.runs_axis_sizes(n, batch, requested)))
  else:
    sizes = config_lib.runs_axis_sizes(n, batch)
    axis = next((a for a in sizes if a >= concurrent), sizes[-1])
    per_device = 1 if platform == "cpu" else max(1, math.ceil(concurrent / axis))
    layout = Layout(axis * per_device, axis)
  if compile_layout is None or platform == "cpu" or not memory_bytes:
    return layout
  fit = lambda axis, want: aot.fit_runs_per_device(want, lambda k: compile_layout(axis, k), memory_bytes, describe)[0]
  if requested >= 1:
    fits = fit(layout.runs_axis, layout.runs_per_device)
    if fits < layout.runs_per_device:
      raise UserError(f"config.parallel.runs_per_step = {requested} puts {layout.runs_per_device} runs of {describe} "
                      f"on each device, but only {fits} fit its memory: use 0 (auto) or at most "
                      f"{layout.runs_axis * fits}.")
    return layout
  # Auto: where one run does not fit a device, each run's batch over more devices (a smaller 'runs' axis) puts less
  # of it on each; a compile that outgrows a core's vector memory is fixed the same way.
  axes = [layout.runs_axis] + [a for a in reversed(config_lib.runs_axis_sizes(n, batch)) if a < layout.runs_axis]
  last, last_axis = None, None
  for axis in axes:
    try:
      runs = axis * fit(axis, max(1, math.ceil(concurrent / axis)))
    except aot.RunDoesNotFit as e:
      if len(axes) == 1:
        raise
      last, last_axis = e, axis
      continue
    why = (f"with each run's batch over {n // last_axis} device(s), one run did not fit: {last.reason}"
           if last is not None else "")
    return Layout(runs, axis, why=why)
  raise UserError(f"One run of {describe} fits no layout of the {n} devices (each run's batch over "
                  f"{', '.join(str(n // a) for a in axes)} of them; with the most: {last.reason}): lower "
                  "config.train.batch_size or config.data.crop_size, or train in bfloat16 (config.train.dtype).")
