"""Tickets back to PyTorch: the files each model's upstream test script loads, in the upstream key layout.

  python -m jaxtickets.export --format=torch --ticket=DIR --out=OUTDIR

writes one .pth per released file of the model, under the name the upstream scripts load it by: AdaIN's
decoder.pth, SANet's decoder_iter_500000.pth and transformer_iter_500000.pth, LST's dec_r41.pth and r41.pth,
MANet's and MCCNet's decoder/ma_module/mcc_module_iter_160000.pth, AdaAttN's latest_net_{decoder,transformer,
adaattn_3}.pth, plus the encoder the ticket stylizes with (vgg_normalised.pth; LST's vgg_r41.pth). Pruned weights
are zeros, so a ticket runs in the upstream code unchanged.

The mapping is the one jaxtickets.weights.port reads, run backwards from the same tables (each model's `torch_parts` and
`torch_encoder`, models/torch_layout.py): HWIO -> OIHW, (I, O) -> (O, I), a 1x1 conv held as a Dense back to
(O, I, 1, 1). The upstream scripts load strictly, so layers the upstream module holds but never runs are written
as zeros: each layout's `zeros` (the VGG's conv5_2..conv5_4, MCCNet's MCCN.h) and, in vgg_normalised.pth, the VGG
layers past the model's encoder depth (the scripts load the whole VGG19 and then cut it at relu4_1 or relu5_1).
"""

import os
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets.weights import files as weights, port
from jaxtickets import storage
from jaxtickets.errors import UserError
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.torch_layout import KeyLayout

FORMATS = ("jaxtickets", "torch")


class TorchFiles(dict):
  """{file name: state dict of float32 numpy arrays}; `unused[file]` lists the key prefixes written as zeros for
  layers the upstream module holds but never runs (so the size table does not count them as pruned)."""

  def __init__(self):
    super().__init__()
    self.unused: dict[str, list[str]] = {}


def to_torch_kernel(kernel, linear: bool) -> np.ndarray:
  """Inverse of port.to_flax_kernel: HWIO -> OIHW, and an (I, O) or (1, 1, I, O) kernel back to Linear (O, I) or
  a 1x1 Conv2d (O, I, 1, 1)."""
  k = np.asarray(kernel, np.float32)
  if k.ndim == 4 and not linear:
    w = k.transpose(3, 2, 0, 1)
  else:
    i, o = k.shape[-2:]
    w = k.reshape(i, o).T
    w = w if linear else w[:, :, None, None]
  expected = port._torch_shape(k.shape, linear)  # pylint: disable=protected-access  (the reading side's rule)
  assert w.shape == expected, (k.shape, linear, w.shape, expected)
  return np.ascontiguousarray(w)


def layout_state(layout: KeyLayout, flat: Mapping[str, np.ndarray], shapes: Mapping[str, tuple], *,
                 zero_missing: bool = False) -> tuple[dict[str, np.ndarray], list[str]]:
  """(state dict, the keys' prefixes written as zeros) of one file in `layout`.

  `flat` holds {dst/kernel, dst/bias} arrays; `shapes` the Flax shapes of every layer the layout may name (for the
  zeros). A layout layer missing from `flat` is an error unless `zero_missing`.
  """
  state, zeroed = {}, []

  def put(src: str, dst: str, linear: bool, values: bool) -> None:
    kernel, bias = f"{dst}/kernel", f"{dst}/bias"
    if values:
      state[f"{src}.weight"] = to_torch_kernel(flat[kernel], linear)
      state[f"{src}.bias"] = np.asarray(flat[bias], np.float32)
    else:
      state[f"{src}.weight"] = np.zeros(port._torch_shape(shapes[kernel], linear), np.float32)  # pylint: disable=protected-access
      state[f"{src}.bias"] = np.zeros(shapes[bias], np.float32)
      zeroed.append(src)

  used = set()
  for layer in layout.layers:
    have = f"{layer.dst}/kernel" in flat
    if not have and not zero_missing:
      raise RuntimeError(f"The {layout.name} layout names {layer.dst}, which the params lack.")
    put(layer.src, layer.dst, layer.linear, have)
    used |= {f"{layer.dst}/kernel", f"{layer.dst}/bias"} if have else set()
  for layer in layout.zeros:
    put(layer.src, layer.dst, layer.linear, False)
  stray = sorted(set(flat) - used)
  if stray:
    raise RuntimeError(f"The {layout.name} layout has no key for {stray}.")
  return state, zeroed


def _vgg_shapes(width: float) -> dict[str, tuple]:
  """Flat Flax shapes of the whole VGG19 up to relu5_1 at `width` (the zeros' shapes)."""
  module = vgg_lib.VGGEncoder(depth=vgg_lib.TAPS[-1], width=width)
  tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))["params"]
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items()}


def torch_files(model, params: Mapping, vgg_params: Mapping | None = None, masks: Mapping | None = None
                ) -> tuple[TorchFiles, list[str]]:
  """(TorchFiles: {file name: state dict of float32 numpy arrays}, notes) of `model`'s params in the upstream
  layout.

  The encoder file holds params['encoder'] when the encoder was trained, else `vgg_params` (the frozen VGG the
  ticket stylizes with) cut at the model's encoder depth; neither given: no encoder file. `masks` (params' structure)
  zero the pruned weights; params a ticket's Stylizer holds are masked already.
  """
  if masks is not None:
    params = jax.tree.map(lambda p, m: np.where(np.asarray(m, bool), np.asarray(p), 0), dict(params), dict(masks))
  flat = {k: np.asarray(v, np.float32) for k, v in weights.flatten(dict(params)).items()}
  port.check_coverage(model, {k: v.shape for k, v in flat.items() if not k.startswith("encoder/")})
  files, notes = TorchFiles(), []
  for role in ("decoder", "transform"):
    for part in model.torch_parts.get(role, ()):
      n = len(part.dst) + 1
      sub = {k[n:]: v for k, v in flat.items() if k.startswith(part.dst + "/")}
      files[part.example], zeroed = layout_state(part.layouts[0], sub, {k: v.shape for k, v in sub.items()})
      files.unused[part.example] = zeroed
  if "encoder" in params:
    encoder = params["encoder"]
  elif vgg_params is not None:
    encoder = vgg_lib.truncate(dict(vgg_params), model.encoder_depth)
  else:
    encoder = None
  if encoder is not None:
    part = model.torch_encoder
    enc_flat = {k: np.asarray(v, np.float32) for k, v in weights.flatten(dict(encoder)).items()}
    files[part.example], zeroed = layout_state(part.layouts[0], enc_flat, _vgg_shapes(model.width),
                                               zero_missing=True)
    files.unused[part.example] = zeroed
    if zeroed:
      keys = zeroed[0] + ".*" + (f" to {zeroed[-1]}.*" if len(zeroed) > 1 else "")
      notes.append(f"{part.example}: keys {keys} (the layers past relu{model.encoder_depth[1]}_1) are zeros; the "
                   "upstream scripts load the whole VGG19 and cut it there, so they never run.")
  for part in (p for parts in model.torch_parts.values() for p in parts):
    if part.layouts[0].zeros:
      notes.append(f"{part.example}: {', '.join(l.src + '.*' for l in part.layouts[0].zeros)} are zeros (the upstream "
                   "module defines them but its forward pass never uses them).")
  if model.width != 1.0:
    notes.append(f"The model has width {model.width!r}: the upstream scripts build full-width modules, so these "
                 "files load there only from a width-1.0 run.")
  return files, notes


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel  (optional: only this format needs it)
  except ImportError:
    raise UserError('--format=torch needs PyTorch to write .pth files: pip install "jaxtickets[port]".') from None
  return torch


def check_out_dir(out: str) -> None:
  if os.path.isfile(out) or os.path.splitext(out)[1].lower() in (".npz", ".safetensors", ".pth", ".pt"):
    raise UserError(f"--out='{out}' is a file name, but --format=torch writes several .pth files: pass a folder.")


def write(out_dir: str, files: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
  """Writes each state dict as OUT_DIR/<name> with torch.save (each file atomically); returns the paths."""
  torch = _torch()
  check_out_dir(out_dir)
  paths = []
  try:
    os.makedirs(out_dir, exist_ok=True)
    for name, state in files.items():
      tensors = {k: torch.from_numpy(np.ascontiguousarray(v, np.float32)) for k, v in state.items()}
      path = os.path.join(out_dir, name)
      storage.write_atomically(path, lambda tmp, t=tensors: torch.save(t, tmp))
      paths.append(path)
  except OSError as err:
    raise UserError(f"Could not write into '{out_dir}' ({err.strerror or err}): choose a writable folder.") from None
  return paths


def summary(files: Mapping[str, Mapping[str, np.ndarray]], out_dir: str) -> str:
  """A table of the files: the ticket's weights in each, how many of them are pruned (zeros), and the zeros of the
  layers the upstream module holds but never runs."""
  unused = getattr(files, "unused", {})
  rows = []
  for name, state in files.items():
    filler = {f"{p}.{leaf}" for p in unused.get(name, ()) for leaf in ("weight", "bias")}
    n = sum(v.size for k, v in state.items() if k not in filler)
    zeros = sum(int(np.count_nonzero(v == 0)) for k, v in state.items() if k not in filler)
    extra = sum(state[k].size for k in filler)
    rows.append((name, len(state), n, f"{zeros / max(n, 1):.1%}", f"{extra:,}" if extra else "-",
                 os.path.getsize(os.path.join(out_dir, name))))
  width = max(len("file"), *(len(r[0]) for r in rows))
  head = f"{'file':<{width}}  {'tensors':>7}  {'weights':>11}  {'zeros':>6}  {'unused layers':>13}  {'bytes':>11}"
  lines = [head, "-" * len(head)]
  lines += [f"{a:<{width}}  {t:>7}  {n:>11,}  {z:>6}  {e:>13}  {b:>11,}" for a, t, n, z, e, b in rows]
  return "\n".join(lines)


def export_ticket(ticket_dir: str, out_dir: str, which: str = "trained", **stylizer_kwargs):
  """Writes the ticket's masked weights as upstream .pth files into `out_dir`; returns (files, notes)."""
  from jaxtickets.tickets import inference  # pylint: disable=import-outside-toplevel  (the exporter's heavy half)

  check_out_dir(out_dir)
  _torch()  # fail before any work
  st = inference.Stylizer.from_ticket(ticket_dir, which, **stylizer_kwargs)
  files, notes = torch_files(st.model, st.params, st.vgg_params, st.masks)
  write(out_dir, files)
  return files, notes
