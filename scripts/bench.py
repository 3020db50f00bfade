"""Benchmarks the train step: time and images/s per model, the masking overhead, FLOP/s against the device's
measured matmul peak, the input pipeline against the step's consumption, and (--torch) a PyTorch AdaIN step.

  venv/bin/python scripts/bench.py                              # AdaIN, batch 4, 128 px, float32
  venv/bin/python scripts/bench.py --torch --conv_paths         # + PyTorch reference, + each CPU conv path
  venv/bin/python scripts/bench.py --models=all --steps 3       # every registered model
  JAXTICKETS_TCMALLOC=off venv/bin/python scripts/bench.py --torch  # glibc malloc (tcmalloc is preloaded if found)

Prints a table, then one line 'JSON {...}' with every figure. No asserts: a benchmark reports, it does not judge.
The encoder is frozen by default (as in the original AdaIN and the PyTorch reference); --train_encoder trains it.
"""

import argparse
import functools
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position

from jaxtickets import config as config_lib, data, tcmalloc  # pylint: disable=wrong-import-position
from jaxtickets.run import layout as layout_lib
from jaxtickets.core import parallel, sparsity
from jaxtickets.run import train
from jaxtickets.models import get_model, layers, model_names  # pylint: disable=wrong-import-position
from jaxtickets.models.vgg import channels  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="adain", help="one registered model")
  p.add_argument("--models", default="", help="'all' or a comma-separated list (overrides --model)")
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--size", type=int, default=128, help="crop size in pixels")
  p.add_argument("--steps", type=int, default=5, help="timed steps of each kind (after one warm-up step)")
  p.add_argument("--dtype", default="float32", choices=config_lib.DTYPES)
  p.add_argument("--width", type=float, default=1.0, help="channel multiplier (tiny widths for smoke runs)")
  p.add_argument("--train_encoder", action="store_true", help="train the encoder too (default: frozen)")
  p.add_argument("--torch", action="store_true", help="also time the AdaIN step in PyTorch")
  p.add_argument("--conv_paths", action="store_true",
                 help="also time AdaIN's masked step with each reflect-conv path (plain VALID, SAME, SAME+matmul dW)")
  p.add_argument("--data", default="demo", help="input pipeline source: 'demo' or a folder of images")
  p.add_argument("--pipeline_batches", type=int, default=12)
  p.add_argument("--matmul_size", type=int, default=2048, help="side of the square float32 matmul for the peak")
  p.add_argument("--runs", type=int, default=0,
                 help="also time N independent runs packed in one step (plain vmap, traced one after the other, and "
                      "what config.parallel.runs_per_step=0 chooses) against N one-run steps: runs_speedup")
  return p.parse_args(argv)


# ----------------------------------------------------------------------------- environment


def tcmalloc_status() -> dict:
  """Whether this process runs under tcmalloc, and where the library is on this machine (if anywhere)."""
  loaded = tcmalloc.loaded_library()
  return {"loaded": bool(loaded), "ld_preload": os.environ.get("LD_PRELOAD", ""),
          "library": loaded or tcmalloc.find_library()}


def median_time(fn, reps: int) -> float:
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def matmul_peak(n: int, reps: int = 7) -> float:
  """FLOP/s of a jitted n x n float32 matmul on the default device (median of `reps`)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  mm = jax.jit(jnp.matmul)
  mm(a, b).block_until_ready()
  return 2.0 * n ** 3 / median_time(lambda: mm(a, b).block_until_ready(), reps)


def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# ----------------------------------------------------------------------------- JAX train step


def bench_config(name: str, args):
  """configs/<name>.py at paper scale (its loss weights etc.), with the benchmark's batch, size, dtype and width."""
  path = os.path.join(ROOT, "configs", f"{name}.py")
  if os.path.exists(path):
    spec = importlib.util.spec_from_file_location(f"bench_config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("")
  else:
    config = config_lib.default_config()
    config.model.name = name
  config.model.dtype = args.dtype
  config.model.width = args.width
  config.model.train_encoder = args.train_encoder
  config.train.batch_size = args.batch
  config.data.crop_size = args.size
  config.data.load_size = 2 * args.size  # the reference's 512 -> 256 ratio
  config.data.content = config.data.style = args.data
  config.data.eval_content = config.data.eval_style = "demo"  # no held-out split needed here
  return config


def one_run_step(model, train_config, tx, mesh):
  """train.masked_step jitted for one run, replicated over `mesh`: the step without a pack's run axis."""
  replicated = parallel.replicated(mesh)
  return jax.jit(train.masked_step(model, train_config, tx), donate_argnums=(0,),
                 out_shardings=(replicated, replicated))


def compile_dense_step(model, train_config, tx, mesh, *example_args):
  """one_run_step with the masking traced out (apply_masks = identity): the overhead's baseline."""
  original = sparsity.apply_masks
  sparsity.apply_masks = lambda tree, masks: tree
  try:
    return one_run_step(model, train_config, tx, mesh).lower(*example_args).compile()
  finally:
    sparsity.apply_masks = original


def bench_model(name: str, args, mesh, with_dense: bool = True, extra_runs: dict | None = None) -> dict:
  """Masked (the real train step) and dense step times, interleaved in one loop, and XLA's FLOP count.

  `extra_runs` maps a label to a callable that runs one step of something else and returns its seconds (the
  PyTorch step): it joins the same loop, so its ratio to the JAX step is taken pair by pair under the same load.
  """
  config = bench_config(name, args)
  model = get_model(name)(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(0)))
  params = jax.device_get(model.init(jax.random.PRNGKey(1), vgg))
  prunable = sparsity.prunable_leaves(params, ["encoder", "decoder", "transform"], allow_missing_groups=True)
  prunable = {g: jax.tree.map(lambda p, g=g: p and g in model.trained_groups, sub) for g, sub in prunable.items()}
  masks = sparsity.global_magnitude_prune(params, sparsity.ones_masks(params), prunable, 0.5)
  tx = train.make_optimizer()
  rng = np.random.default_rng(0)
  batch = {k: rng.random((args.batch, args.size, args.size, 3), np.float32) for k in ("content", "style")}
  batch = parallel.shard_batch(batch, mesh)
  vgg_r, masks_r, key = parallel.put_replicated(vgg, mesh), parallel.put_replicated(masks, mesh), jax.random.PRNGKey(2)
  fresh = lambda: train.create_state(params, sparsity.ones_masks(params), 0, tx, mesh, model.trained_groups)

  step = config_lib.resolve(config).step
  t = time.perf_counter()
  masked = one_run_step(model, step, tx, mesh).lower(fresh(), masks_r, vgg_r, batch, key).compile()
  compile_s = time.perf_counter() - t
  flops = cost_flops(masked)
  runs = {"masked": masked}
  if with_dense:
    runs["dense"] = compile_dense_step(model, step, tx, mesh, fresh(), masks_r, vgg_r, batch, key)
  extra_runs = extra_runs or {}
  states = {kind: fresh() for kind in runs}
  times = {kind: [] for kind in [*runs, *extra_runs]}
  metrics = {}
  order = list(times)
  for i in range(args.steps + 1):  # step 0 warms up; the order alternates so no kind always goes first
    for kind in (order if i % 2 else order[::-1]):
      if kind in extra_runs:
        elapsed = extra_runs[kind]()
      else:
        t = time.perf_counter()
        states[kind], metrics[kind] = runs[kind](states[kind], masks_r, vgg_r, batch, key)
        jax.block_until_ready((states[kind].params, metrics[kind]))
        elapsed = time.perf_counter() - t
      if i:
        times[kind].append(elapsed)
  step_s = statistics.median(times["masked"])
  out = {"step_s": step_s, "images_per_s": args.batch / step_s, "flops": flops, "compile_s": compile_s,
         "achieved_flops_per_s": flops / step_s, "step_times": times["masked"],
         "loss": float(jax.device_get(metrics["masked"]["total"]))}
  if with_dense:
    out.update(dense_step_s=statistics.median(times["dense"]), dense_step_times=times["dense"])
    # The median of per-iteration ratios: each pair ran back to back, so a drifting machine load cancels out.
    out["masked_over_dense"] = statistics.median(m / d for m, d in zip(times["masked"], times["dense"]))
  for kind in extra_runs:
    out[f"{kind}_step_times"] = times[kind]
    out[f"masked_over_{kind}"] = statistics.median(m / e for m, e in zip(times["masked"], times[kind]))
  return out


def bench_runs(name: str, args) -> dict:
  """N runs one after the other (the one-run packed step, N calls) against N runs in packed steps, in one loop.

  runs_speedup = N x (one-run step time) / (time of the packed step(s) for N runs), for the plain jax.vmap over
  the N runs on one device, for the N runs traced one after the other into one program, and for the layout that
  config.parallel.runs_per_step = 0 (auto) chooses on these devices.
  """
  n = args.runs
  config = bench_config(name, args)
  model = get_model(name)(config.model)
  vgg = jax.device_get(model.init_vgg(jax.random.PRNGKey(0)))
  tx = train.make_optimizer()
  rng = np.random.default_rng(0)
  host_batch = {k: rng.random((args.batch, args.size, args.size, 3), np.float32) for k in ("content", "style")}
  params = [jax.device_get(model.init(jax.random.PRNGKey(10 + r), vgg)) for r in range(n)]
  prunable = sparsity.prunable_leaves(params[0], ["encoder", "decoder", "transform"], allow_missing_groups=True)
  prunable = {g: jax.tree.map(lambda p, g=g: p and g in model.trained_groups, sub) for g, sub in prunable.items()}
  masks = [sparsity.global_magnitude_prune(p, sparsity.ones_masks(p), prunable, 0.5) for p in params]
  config.parallel.runs_per_step = 0
  run_settings = config_lib.resolve(config)
  auto = layout_lib.choose_layout(run_settings.packing, run_settings.step.batch_size, concurrent=n)
  layouts = {"one_run": (layout_lib.Layout(1, 1), True), "vmap": (layout_lib.Layout(n, 1), True),
             "traced": (layout_lib.Layout(n, 1), False), "auto": (auto, True)}

  def runner(layout, vmap):
    mesh = parallel.make_mesh(layout.runs_axis)
    step = train.make_packed_step(model, run_settings.step, tx, mesh, layout.runs_per_device, vmap=vmap)
    p = layout.runs_per_step
    calls = -(-n // p)
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    slots = [[(c * p + i) % n for i in range(p)] for c in range(calls)]
    fresh = lambda r: jax.device_get(train.state_dict(train.create_state(
        params[r], masks[r], 0, tx, parallel.make_mesh(jax.device_count()), model.trained_groups)))
    states = [train.state_from_dict(parallel.put_runs(stack([fresh(r) for r in rs]), mesh)) for rs in slots]
    masks_d = [parallel.put_runs(stack([masks[r] for r in rs]), mesh) for rs in slots]
    keys = parallel.put_runs(np.stack([np.asarray(jax.random.PRNGKey(r)) for r in range(p)]), mesh)
    ends = parallel.put_runs(np.full(p, 10 ** 9, np.int32), mesh)
    vgg_r = parallel.put_replicated(vgg, mesh)
    rows = parallel.local_rows(mesh, p, args.batch)
    batch = parallel.assemble_packed_batch({r: {k: v[lo:hi] for k, v in host_batch.items()}
                                            for r, (lo, hi) in rows.items()}, rows, p, args.batch, mesh)

    def run():
      t = time.perf_counter()
      for c in range(calls):
        states[c], metrics = step(states[c], masks_d[c], vgg_r, batch, keys, ends)
      jax.block_until_ready([st.params for st in states])
      return time.perf_counter() - t

    return run

  runs = {}
  for label, (layout, vmap) in layouts.items():
    try:
      runs[label] = runner(layout, vmap)
    except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory for a large plain vmap)
      runs[label] = e
  times = {label: [] for label, r in runs.items() if callable(r)}
  order = list(times)
  for i in range(args.steps + 1):  # the first round compiles and warms up
    for label in (order if i % 2 else order[::-1]):
      elapsed = runs[label]()
      if i:
        times[label].append(elapsed)
  one = statistics.median(times["one_run"])
  out = {"runs": n, "one_run_step_s": one / n, "auto_layout": {"runs_per_step": auto.runs_per_step,
                                                                "runs_axis": auto.runs_axis,
                                                                "runs_per_device": auto.runs_per_device}}
  for label in ("vmap", "traced", "auto"):
    if label not in times:
      out[f"{label}_error"] = f"{type(runs[label]).__name__}: {str(runs[label]).splitlines()[0][:160]}"
      continue
    out[f"{label}_pack_s"] = statistics.median(times[label])
    # Per-iteration ratios: each ran right after the N one-run steps, so a drifting load cancels out.
    out[f"runs_speedup_{label}"] = statistics.median(o / t for o, t in zip(times["one_run"], times[label]))
  out["runs_speedup"] = out.get("runs_speedup_auto", float("nan"))
  return out


CONV_PATHS = {"plain VALID": (False, False), "SAME": (True, False), "SAME + matmul dW": (True, True)}


def bench_conv_paths(args, mesh) -> dict:
  """AdaIN's masked step with each reflect-conv implementation forced on (the CPU default is measured first)."""
  original = layers.conv3x3_reflect
  out = {}
  try:
    for label, (same, matmul) in CONV_PATHS.items():
      layers.conv3x3_reflect = functools.partial(original, same_trick=same, matmul_grad=matmul)
      out[label] = bench_model("adain", args, mesh, with_dense=False)
  finally:
    layers.conv3x3_reflect = original
  return out


# ----------------------------------------------------------------------------- input pipeline


def bench_pipeline(args) -> dict:
  """Samples (content + style pairs) per second out of data.make_train_iterator, after its first batch."""
  config = bench_config(args.model if not args.models else "adain", args)
  dataset = data.make_train_dataset(config_lib.resolve(config).data, args.batch, 0, 1)
  it = data.make_train_iterator(dataset, num_threads=config.data.num_threads, prefetch=config.data.prefetch)
  t = time.perf_counter()
  next(it)
  first_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.pipeline_batches):
    next(it)
  elapsed = time.perf_counter() - t
  return {"samples_per_s": args.pipeline_batches * args.batch / elapsed, "first_batch_s": first_s,
          "num_threads": config.data.num_threads, "prefetch": config.data.prefetch, "source": args.data,
          "load_size": config.data.load_size}


# ----------------------------------------------------------------------------- PyTorch reference


def torch_adain_step(args):
  """The AdaIN training step in PyTorch: frozen vgg_normalised to r41, the mirrored decoder, Adam on the decoder.

  Returns (run, info): run() does one step and returns its seconds (the first call is the warm-up).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  threads = os.cpu_count()
  torch.set_num_threads(threads)
  use_cuda = jax.default_backend() == "gpu" and torch.cuda.is_available()
  device = torch.device("cuda" if use_cuda else "cpu")
  ch = lambda c: channels(c, args.width)

  def conv(ci, co):
    return [nn.ReflectionPad2d(1), nn.Conv2d(ci, co, 3), nn.ReLU()]

  pool = lambda: nn.MaxPool2d(2, 2, ceil_mode=True)
  slices = nn.ModuleList([
      nn.Sequential(nn.Conv2d(3, 3, 1), *conv(3, ch(64))),  # -> r11
      nn.Sequential(*conv(ch(64), ch(64)), pool(), *conv(ch(64), ch(128))),  # -> r21
      nn.Sequential(*conv(ch(128), ch(128)), pool(), *conv(ch(128), ch(256))),  # -> r31
      nn.Sequential(*conv(ch(256), ch(256)), *conv(ch(256), ch(256)), *conv(ch(256), ch(256)), pool(),
                    *conv(ch(256), ch(512))),  # -> r41
  ]).to(device)
  for p in slices.parameters():
    p.requires_grad_(False)
  up = lambda: nn.Upsample(scale_factor=2, mode="nearest")
  decoder = nn.Sequential(
      *conv(ch(512), ch(256)), up(), *conv(ch(256), ch(256)), *conv(ch(256), ch(256)), *conv(ch(256), ch(256)),
      *conv(ch(256), ch(128)), up(), *conv(ch(128), ch(128)), *conv(ch(128), ch(64)), up(),
      *conv(ch(64), ch(64)), nn.ReflectionPad2d(1), nn.Conv2d(ch(64), 3, 3)).to(device)
  opt = torch.optim.Adam(decoder.parameters(), lr=1e-4)

  def taps(x):
    out = []
    for s in slices:
      x = s(x)
      out.append(x)
    return out

  def mean_std(f, eps=1e-5):
    b, c = f.shape[:2]
    v = f.reshape(b, c, -1)
    return v.mean(2), (v.var(2) + eps).sqrt()

  def step(content, style):
    with torch.no_grad():
      fs = taps(style)
      fc = taps(content)[-1]
      mc, sc = mean_std(fc)
      ms, ss = mean_std(fs[-1])
      t = ss[..., None, None] * (fc - mc[..., None, None]) / sc[..., None, None] + ms[..., None, None]
    g = taps(decoder(t))
    loss_c = nn.functional.mse_loss(g[-1], t)
    loss_s = 0.0
    for a, b in zip(g, fs):
      (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
      loss_s = loss_s + nn.functional.mse_loss(ma, mb) + nn.functional.mse_loss(sa, sb)
    loss = loss_c + 10.0 * loss_s
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  rng = np.random.default_rng(0)
  content, style = (torch.from_numpy(rng.random((args.batch, 3, args.size, args.size), np.float32)).to(device)
                    for _ in range(2))
  autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
  sync = torch.cuda.synchronize if use_cuda else (lambda: None)

  def timed():
    t = time.perf_counter()
    with autocast:
      loss = step(content, style)
    float(loss.detach())
    sync()
    return time.perf_counter() - t

  return timed, {"threads": torch.get_num_threads(), "version": torch.__version__, "device": str(device)}


# ----------------------------------------------------------------------------- report


def fmt_table(result: dict) -> str:
  peak = result["peak_flops_per_s"]
  head = (f"{'model':<26}{'step s':>9}{'img/s':>8}{'dense s':>9}{'mask/dense':>11}{'GFLOP':>8}{'GFLOP/s':>9}"
          f"{'of peak':>8}{'compile s':>10}")
  lines = [head, "-" * len(head)]

  def row(label, m):
    dense = f"{m['dense_step_s']:>9.3f}{m['masked_over_dense']:>11.3f}" if "dense_step_s" in m else f"{'-':>9}{'-':>11}"
    lines.append(f"{label:<26}{m['step_s']:>9.3f}{m['images_per_s']:>8.2f}{dense}{m['flops'] / 1e9:>8.1f}"
                 f"{m['achieved_flops_per_s'] / 1e9:>9.1f}{m['achieved_flops_per_s'] / peak:>8.1%}"
                 f"{m['compile_s']:>10.1f}")

  for name, m in result["models"].items():
    if "error" in m:
      lines.append(f"{name:<26}  skipped: {m['error']}")
    else:
      row(name, m)
  for label, m in result.get("conv_paths", {}).items():
    row(f"adain [{label}]", m)
  lines.append("")
  lines.append(f"matmul peak ({result['args']['matmul_size']}^2 float32, best of before/after the models): "
               f"{peak / 1e9:.1f} GFLOP/s (before {result['matmul_peak_flops_per_s'] / 1e9:.1f}, "
               f"after {result['matmul_peak_after_flops_per_s'] / 1e9:.1f})")
  pipe = result.get("pipeline")
  if pipe and "ratio" in pipe:
    lines.append(f"input pipeline: {pipe['samples_per_s']:.1f} samples/s ({pipe['num_threads']} threads, "
                 f"{pipe['source']} at {pipe['load_size']} px) vs the step's {pipe['consumption_per_s']:.2f} "
                 f"samples/s: {pipe['ratio']:.1f}x")
  tr = result.get("torch")
  if tr:
    lines.append(f"PyTorch {tr['version']} AdaIN step ({tr['threads']} threads, {tr['device']}): {tr['step_s']:.3f} s;"
                 f" JAX/PyTorch = {tr['jax_over_torch']:.2f} (median of step-by-step ratios)")
  pk = result.get("packing")
  if pk:
    auto = pk["auto_layout"]
    lines.append(f"packing {pk['runs']} runs (one run alone: {pk['one_run_step_s']:.3f} s/step): runs_speedup "
                 + ", ".join(f"{label} {pk[f'runs_speedup_{label}']:.2f}" if f"runs_speedup_{label}" in pk
                             else f"{label} failed ({pk[f'{label}_error']})" for label in ("vmap", "traced", "auto"))
                 + f" (auto = {auto['runs_per_step']} per step, {auto['runs_axis']} on 'runs' x "
                   f"{auto['runs_per_device']} per device)")
  tc = result["tcmalloc"]
  lines.append(f"tcmalloc: {'loaded' if tc['loaded'] else 'NOT loaded'}"
               f" (library on this machine: {tc['library'] or 'none found; scripts/install_tcmalloc.sh'})")
  return "\n".join(lines)


def main(argv=None):
  args = parse_args(argv)
  if args.models == "all":
    names = list(model_names())
  elif args.models:
    names = [n.strip() for n in args.models.split(",") if n.strip()]
  else:
    names = [args.model]
  mesh = parallel.make_mesh()
  device = jax.devices()[0]
  result = {"args": vars(args), "backend": jax.default_backend(), "device": getattr(device, "device_kind", str(device)),
            "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "machine": platform.processor(),
            "jax": jax.__version__, "tcmalloc": tcmalloc_status(),
            "matmul_grad_on_cpu": layers.MATMUL_GRAD_ON_CPU}
  result["matmul_peak_flops_per_s"] = matmul_peak(args.matmul_size)
  torch_run, torch_info = torch_adain_step(args) if args.torch else (None, None)
  result["models"] = {}
  for name in names:
    try:
      extra = {"torch": torch_run} if torch_run and name == "adain" else None
      result["models"][name] = bench_model(name, args, mesh, extra_runs=extra)
    except Exception as e:  # pylint: disable=broad-except  (a model mid-development must not stop the others)
      result["models"][name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"}
  if args.conv_paths:
    result["conv_paths"] = bench_conv_paths(args, mesh)
  if args.runs:
    result["packing"] = bench_runs(names[0], args)
    result["runs_speedup"] = result["packing"]["runs_speedup"]
  # Re-measured after the models so a drifting machine shows up as two different peaks.
  result["matmul_peak_after_flops_per_s"] = matmul_peak(args.matmul_size)
  result["peak_flops_per_s"] = max(result["matmul_peak_flops_per_s"], result["matmul_peak_after_flops_per_s"])
  first = next((m for m in result["models"].values() if "step_s" in m), None)
  try:
    pipe = bench_pipeline(args)
    if first:
      pipe["consumption_per_s"] = args.batch / first["step_s"]
      pipe["ratio"] = pipe["samples_per_s"] / pipe["consumption_per_s"]
    result["pipeline"] = pipe
  except Exception as e:  # pylint: disable=broad-except
    result["pipeline_error"] = f"{type(e).__name__}: {e}"
  if args.torch:
    adain = result["models"].get("adain", {})
    if "torch_step_times" in adain:  # timed step by step alongside the JAX step
      times = adain["torch_step_times"]
      ratio = adain["masked_over_torch"]
    else:  # AdaIN itself was not benchmarked (or failed): time PyTorch alone
      torch_run()
      times, ratio = [torch_run() for _ in range(args.steps)], float("nan")
    result["torch"] = dict(torch_info, step_s=statistics.median(times), step_times=times, jax_over_torch=ratio)
  for m in list(result["models"].values()) + list(result.get("conv_paths", {}).values()):
    if "step_s" in m:
      m["fraction_of_peak"] = m["achieved_flops_per_s"] / result["peak_flops_per_s"]
  print(fmt_table(result))
  print("JSON " + json.dumps(result, default=float))
  return result


if __name__ == "__main__":
  tcmalloc.preload()  # JAXTICKETS_TCMALLOC=off measures glibc malloc
  main()
