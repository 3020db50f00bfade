"""The packed train step compiled ahead of time for a target's devices, with its memory and cost per chip.

A target is the local devices or a TPU topology's abstract devices (jax.experimental.topologies: with libtpu
installed, any machine can compile the real TPU program without a TPU). The step's inputs are abstract
(jax.ShapeDtypeStruct with the run's shardings), so nothing is loaded or placed: the compiled program's memory
analysis says what one chip needs, its cost analysis what one chip computes per step.
"""

import collections
import dataclasses
import os
import re
import time
from typing import Callable

import jax
import jax.numpy as jnp

from jaxtickets.core import parallel
from jaxtickets.run import train
from jaxtickets.errors import UserError
from jaxtickets.models import layers

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
  """The facts of one TPU generation that a plan needs, per chip."""
  name: str  # as topology names spell it: v4, v5e, v5p, v6e
  device_kind: str  # what its JAX devices report
  hbm_bytes: int
  peak_bf16_flops: float
  tensorcores: int  # 2: a pod presents the chip as one device of two cores (megacore)
  dims: int  # the torus's dimensions: the shape a topology name gives


# From the Cloud TPU documentation's page of each version (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): HBM
# capacity, peak bf16 compute and TensorCores per chip. The runtime keeps a little of the HBM for itself, which the
# packing headroom covers.
CHIPS = {
    "v4": Chip("v4", "TPU v4", 32 * GIB, 275e12, 2, 3),
    "v5e": Chip("v5e", "TPU v5 lite", 16 * GIB, 197e12, 1, 2),
    "v5p": Chip("v5p", "TPU v5", 95 * GIB, 459e12, 2, 3),
    "v6e": Chip("v6e", "TPU v6 lite", 32 * GIB, 918e12, 1, 2),
}
# The slice shapes each torus offers: the 2-D chips' listed shapes; the 3-D chips' small shapes, then any with every
# side a multiple of 4 up to the largest pod.
_SHAPES_2D = ((1, 1), (2, 2), (2, 4), (4, 4), (4, 8), (8, 8), (8, 16), (16, 16))
_SMALL_3D = ((2, 2, 1), (2, 2, 2), (2, 2, 4), (2, 4, 4))
_MOST_CHIPS_3D = {"v4": 4096, "v5p": 8960}


@dataclasses.dataclass(frozen=True)
class Target:
  """The devices a step is compiled for, and what one of them offers."""
  name: str  # the topology ('v5e:4x4'), or 'local'
  devices: tuple
  platform: str  # 'tpu', 'gpu', 'cpu': the layers trace their code path for it
  device_kind: str
  memory_bytes: int | None  # per device
  peak_flops: float | None  # per device, bf16; None where unknown (a CPU)
  slices: int = 1

  @property
  def chips(self) -> int:
    return len(self.devices)


def _chips_per_host(shape: tuple[int, ...]) -> tuple[int, int, int]:
  # A host holds a 2x2 block of chips (or the whole slice when smaller); it only decides how the program is split
  # over processes, not what one chip computes.
  full = tuple(shape) + (1,) * (3 - len(shape))
  return tuple(min(s, b) for s, b in zip(full, (2, 2, 1)))


def topology(name: str, num_slices: int = 1) -> Target:
  """The abstract devices of TPU topology `name` ('v5e:4x4', 'v4:2x2x2'), `num_slices` slices of it, one device per
  chip as a pod presents them; a one-sentence UserError for a name or shape the generation does not have."""
  generation, _, shape_text = name.partition(":")
  chip = CHIPS.get(generation)
  if chip is None:
    raise UserError(f"Unknown TPU generation {generation!r} in --topology={name}: use one of {', '.join(CHIPS)} with "
                    "a shape, e.g. v5e:4x4 or v4:2x2x2.")
  if not re.fullmatch(r"\d+(x\d+)*", shape_text):
    raise UserError(f"--topology={name} has no shape: write it as {generation}:" +
                    ("4x4" if chip.dims == 2 else "2x2x2") + f" ({chip.dims} sides separated by x).")
  shape = tuple(int(s) for s in shape_text.split("x"))
  if chip.dims == 2:
    ok = shape in _SHAPES_2D
    offered = ", ".join("x".join(map(str, s)) for s in _SHAPES_2D)
  else:
    ok = len(shape) == 3 and (shape in _SMALL_3D or (all(s % 4 == 0 and s > 0 for s in shape)
                                                     and shape[0] * shape[1] * shape[2] <= _MOST_CHIPS_3D[generation]))
    offered = (", ".join("x".join(map(str, s)) for s in _SMALL_3D) + ", or three multiples of 4 up to "
               f"{_MOST_CHIPS_3D[generation]} chips")
  if not ok:
    raise UserError(f"{generation} has no {shape_text} slice: use one of {offered}.")
  if not (isinstance(num_slices, int) and num_slices >= 1):
    raise UserError(f"--num_slices={num_slices} is not allowed: use a positive number of slices.")
  if _libtpu_missing():
    raise UserError("Compiling for a TPU topology needs libtpu: install the tpu extra, pip install -e '.[tpu]'.")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compiling only: never owns a TPU, so never needs the lock
  from jax.experimental import topologies
  try:
    devices = topologies.get_topology_desc(
        topology_name=f"{generation}:{shape_text}", platform="tpu",
        chip_config_name="megacore" if chip.tensorcores == 2 else "default",
        chips_per_host_bounds=_chips_per_host(shape), num_slices=num_slices).devices
  except Exception as e:  # pylint: disable=broad-except  (libtpu's refusal, as a runtime error)
    raise UserError(f"libtpu cannot describe --topology={name} with {num_slices} slice(s): "
                    f"{str(e).splitlines()[0]}") from e
  return Target(name=name, devices=tuple(devices), platform="tpu", device_kind=devices[0].device_kind,
                memory_bytes=chip.hbm_bytes, peak_flops=chip.peak_bf16_flops, slices=num_slices)


def _libtpu_missing() -> bool:
  import importlib.util
  return importlib.util.find_spec("libtpu") is None


def chip_of(device_kind: str) -> Chip | None:
  return next((c for c in CHIPS.values() if c.device_kind == device_kind), None)


def device_memory(device) -> int | None:
  """The memory one device offers a program: the runtime's limit where it reports one (GPU, TPU), the chip table's
  HBM for a TPU that does not (a compile-only device), the host's RAM for a CPU."""
  try:
    limit = (device.memory_stats() or {}).get("bytes_limit")
    if limit:
      return int(limit)
  except Exception:  # pylint: disable=broad-except  (compile-only and CPU devices have no memory stats)
    pass
  chip = chip_of(device.device_kind)
  if chip is not None:
    return chip.hbm_bytes
  if device.platform == "cpu":
    try:
      return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
      return None
  return None


def local_target() -> Target:
  """Every device of every process, as a run on this machine uses them."""
  devices = tuple(jax.devices())
  first = devices[0]
  chip = chip_of(first.device_kind)
  return Target(name="local", devices=devices, platform=first.platform, device_kind=first.device_kind,
                memory_bytes=device_memory(first), peak_flops=chip.peak_bf16_flops if chip else None,
                slices=len({getattr(d, "slice_index", 0) for d in devices}))


def step_inputs(model, tx, mesh, runs_per_step: int, batch_size: int, crop_size: int) -> tuple:
  """The packed step's arguments (state, masks, vgg_params, batch, keys, ends) as jax.ShapeDtypeStructs with the
  shardings a run gives them (train.train_pack places the real ones): every argument but the loss VGG has a leading
  run axis over 'runs', the batch also splits each run's images over 'data'."""
  key = jax.random.PRNGKey(0)
  vgg = jax.eval_shape(model.init_vgg, key)
  params = jax.eval_shape(model.init, key, vgg)
  trained, _ = train.split_groups(params, model.trained_groups)
  opt_state = jax.eval_shape(tx.init, trained)
  runs, replicated = parallel.runs_sharding(mesh), parallel.replicated(mesh)
  n = runs_per_step

  def per_run(x, dtype=None):
    return jax.ShapeDtypeStruct((n, *x.shape), dtype or x.dtype, sharding=runs)

  scalar = jax.ShapeDtypeStruct((), jnp.int32)
  state = train.TrainState(step=per_run(scalar), params=jax.tree.map(per_run, params),
                           opt_state=jax.tree.map(per_run, opt_state), nan_skips=per_run(scalar),
                           first_bad=per_run(scalar))
  masks = jax.tree.map(lambda x: per_run(x, jnp.bool_), params)
  vgg_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), vgg)
  image = jax.ShapeDtypeStruct((n, batch_size, crop_size, crop_size, 3), jnp.float32,
                               sharding=parallel.packed_batch_sharding(mesh))
  keys = per_run(jax.ShapeDtypeStruct((2,), jnp.uint32))
  return state, masks, vgg_params, {"content": image, "style": image}, keys, per_run(scalar)


_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


def collectives(hlo_text: str) -> dict[str, int]:
  """How many of each collective op a compiled program's HLO text holds (an async pair counts once)."""
  found = re.findall(r"\b(" + "|".join(_COLLECTIVES) + r")(?:-start)?\(", hlo_text)
  return dict(sorted(collections.Counter(found).items()))


@dataclasses.dataclass(frozen=True)
class Compiled:
  """One device's share of a compiled step: bytes and FLOPs per step, and its collectives."""
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs that reuse a donated argument's buffer
  temp_bytes: int  # as the compiler reports it (XLA TPU reports 0 for some programs; see live_bytes)
  code_bytes: int
  xla_peak_bytes: int  # the compiler's own peak of live buffers (TPU, GPU; the CPU backend does not compute it)
  flops: float
  collectives: dict
  seconds: float  # lowering and compiling

  @property
  def live_bytes(self) -> int:
    """The most buffer bytes live at once: the compiler's peak, or where it reports less (the CPU backend), the
    arguments, temporaries and the outputs that do not reuse a donated argument's buffer."""
    return max(self.xla_peak_bytes,
               self.argument_bytes + self.temp_bytes + max(0, self.output_bytes - self.alias_bytes))

  @property
  def working_bytes(self) -> int:
    """What the step needs beyond its arguments: activations, gradients, new optimizer state."""
    return self.live_bytes - self.argument_bytes

  @property
  def peak_bytes(self) -> int:
    """What the device must hold: the live buffers and the program's code (on a TPU, in HBM too)."""
    return self.live_bytes + self.code_bytes


class CompileOutOfMemory(UserError):
  """The compiler could not fit the step into one of the device's memories: its HBM, or a core's vector memory
  (VMEM: 16 MiB on a v4 TensorCore, which one fused kernel of a big per-chip batch can outgrow)."""

  def __init__(self, space: str, used: str = "", capacity: str = ""):
    self.space = space
    super().__init__(f"the compiler ran out of the device's {space.upper()}"
                     + (f" (the step needs {used}B of its {capacity}B)" if used and capacity else ""))


class RunDoesNotFit(UserError):
  """Not even one run fits a device, for `reason` (a clause: the bytes it needs, or the compiler's refusal)."""

  def __init__(self, describe: str, reason: str):
    self.describe, self.reason = describe, reason
    super().__init__(f"One run of {describe} does not fit a device: {reason}; spread each run's batch over more "
                     "devices (fewer runs side by side), lower config.train.batch_size or config.data.crop_size, or "
                     "train in bfloat16 (config.train.dtype).")


# XLA TPU's words for a program that does not fit one of the chip's memories.
_OUT_OF_MEMORY = re.compile(r"Ran out of memory in memory space (\w+)\.\s*(?:Used ([\d.]+\w*) of ([\d.]+\w*))?")


def _no_persistent_cache(off: bool):
  """Turns JAX's persistent compilation cache off for programs of compile-only devices: it writes them, but cannot
  load them back without a client of their platform (a warning per read, and disk spent for nothing)."""
  import contextlib
  if not off:
    return contextlib.nullcontext()
  try:
    from jax._src import config as jax_config  # pylint: disable=g-import-not-at-top  (private: guarded)
    return jax_config.enable_compilation_cache(False)
  except (ImportError, AttributeError, TypeError):
    return contextlib.nullcontext()


def compile_step(step, inputs: tuple, platform: str) -> Compiled:
  """`step` (a jitted function) lowered for `inputs` (ShapeDtypeStructs with shardings) and compiled, its layers
  traced for `platform`."""
  start = time.perf_counter()
  with layers.target_platform(platform):
    lowered = step.lower(*inputs)
  with _no_persistent_cache(platform != jax.default_backend()):
    try:
      executable = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError, JaxRuntimeError: the type moved)
      found = _OUT_OF_MEMORY.search(str(e))
      if found is None:
        raise
      raise CompileOutOfMemory(found.group(1), found.group(2) or "", found.group(3) or "") from None
  seconds = time.perf_counter() - start
  memory = executable.memory_analysis()
  cost = executable.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
    cost = cost[0] if cost else {}
  return Compiled(argument_bytes=int(memory.argument_size_in_bytes), output_bytes=int(memory.output_size_in_bytes),
                  alias_bytes=int(memory.alias_size_in_bytes), temp_bytes=int(memory.temp_size_in_bytes),
                  code_bytes=int(memory.generated_code_size_in_bytes),
                  xla_peak_bytes=int(getattr(memory, "peak_memory_in_bytes", 0) or 0),
                  flops=float((cost or {}).get("flops", 0.0)),
                  collectives=collectives(executable.as_text() or ""), seconds=seconds)


# Compiled steps by everything that decides the program: a plan tries several layouts, and plans of one process
# (the planner's tables, a memory check repeated with another chip table) share their compiles, which take minutes.
_COMPILED: dict[tuple, Compiled] = {}


def step_compiler(model, step, crop_size: int, tx, devices, platform: str) -> Callable[[int, int], Compiled]:
  """compile(runs_axis, runs_per_device): the packed step a run with settings.StepSettings `step` on `crop_size` px
  crops trains with (train.make_packed_step on parallel.make_mesh over `devices`), compiled for `platform` from
  step_inputs; each program compiled once per process."""
  program = (model, train.step_settings(step), tx, platform, tuple(repr(d) for d in devices), step.batch_size,
             crop_size)

  def compile_layout(runs_axis: int, runs_per_device: int) -> Compiled:
    key = (*program, runs_axis, runs_per_device)
    if key not in _COMPILED:
      mesh = parallel.make_mesh(runs_axis, devices=devices)
      packed = train.make_packed_step(model, step, tx, mesh, runs_per_device)
      inputs = step_inputs(model, tx, mesh, runs_axis * runs_per_device, step.batch_size, crop_size)
      _COMPILED[key] = compile_step(packed, inputs, platform)
    return _COMPILED[key]

  return compile_layout


def layout_sizing(model, step, crop_size: int, tx) -> dict:
  """layout.choose_layout's sizing arguments for a run (settings.StepSettings `step`, `crop_size` px crops) on every
  device: on an accelerator its compiled step, a device's memory and the run's description; on the CPU none (a CPU
  device trains one run at a time, and its memory is the host's)."""
  devices = jax.devices()
  platform = devices[0].platform
  if platform == "cpu":
    return {}
  return dict(devices=devices, platform=platform,
              compile_layout=step_compiler(model, step, crop_size, tx, devices, platform),
              memory_bytes=device_memory(jax.local_devices()[0]), describe=describe_run(model, step, crop_size))


def describe_run(model, step, crop_size: int) -> str:
  """'adain at batch 8, 256 px crops, bfloat16': a run as the layout's sentences name it."""
  return f"{model.name} at batch {step.batch_size}, {crop_size} px crops, {jax.numpy.dtype(model.dtype).name}"


HEADROOM = 0.85  # of a device's memory a plan may fill: the runtime, fragmentation and the data pipeline need the rest


def fit_runs_per_device(want: int, measure: Callable[[int], Compiled], memory_bytes: int | None,
                        describe: str, headroom: float = HEADROOM) -> tuple[int, Compiled]:
  """The most runs per device, up to `want`, whose compiled step (measure(k)) fits `headroom` of `memory_bytes`
  and compiles at all (measure may raise CompileOutOfMemory), with that step; a one-sentence UserError when not even
  one run fits (`describe` names the run: model, batch, crop, dtype).

  A step's peak grows about linearly in its runs (each brings its params, optimizer state and activations), so
  after the first miss a line through two compiles guesses the answer and compiles confirm it.
  """
  budget = float("inf") if memory_bytes is None else headroom * memory_bytes

  def attempt(k: int):
    """(the compiled step if it fits, else None; what was found: the Compiled, or the compiler's refusal)."""
    try:
      got = measure(k)
    except CompileOutOfMemory as e:
      return None, e
    return (got if got.peak_bytes <= budget else None), got

  fit, got = attempt(want)
  if fit is not None:
    return want, fit
  fit_one, one = (fit, got) if want == 1 else attempt(1)
  if fit_one is None:
    raise RunDoesNotFit(describe, str(one) if isinstance(one, CompileOutOfMemory) else
                        f"needs {one.peak_bytes:,} bytes ({one.peak_bytes / GIB:.2f} GiB) per device, more than "
                        f"{headroom:.0%} of the {memory_bytes:,} bytes ({memory_bytes / GIB:.1f} GiB) a device offers")
  k = want - 1
  if isinstance(got, Compiled):
    per_run = max(1.0, (got.peak_bytes - one.peak_bytes) / (want - 1))
    k = int(min(want - 1, max(1, (budget - one.peak_bytes) // per_run + 1)))
  while k > 1:
    fit, _ = attempt(k)
    if fit is not None:
      return k, fit
    k -= 1
  return 1, fit_one
