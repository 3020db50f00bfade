"""The export file format: writing and reading the compact ticket files of jaxtickets.export (its docstring has
the layout). Kept apart from the command so that inference reads exports without importing the exporter; the
.npz and .safetensors files themselves are read by jaxtickets.weights."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxtickets.core import sparsity
from jaxtickets.weights import files as weights
from jaxtickets import storage
from jaxtickets.errors import UserError

FORMAT = "jaxtickets-export"
VERSION = 1
EXTENSIONS = (".npz", ".safetensors")
_META_KEY = "__metadata__"


@dataclasses.dataclass
class Exported:
  """What an export file holds, rebuilt."""
  model_name: str
  model_config: dict
  params: dict  # masked, numpy, the saved dtypes
  masks: dict  # bool numpy, params' structure
  vgg_params: dict | None  # None when stylize never reads the VGG
  metadata: dict


def _leaves(tree) -> list[tuple[str, np.ndarray]]:
  return [(sparsity.path_name(kp), np.asarray(v)) for kp, v in jax.tree.leaves_with_path(tree)]


def _check_out(out: str) -> str:
  ext = os.path.splitext(out)[1].lower()
  if ext not in EXTENSIONS:
    raise UserError(f"--out='{out}' has the extension '{ext}': name the file .npz or .safetensors.")
  return ext


def encode(model_name: str, model_config: dict, params, masks, vgg_params=None, source: str = ""):
  """(tensors, metadata, sizes): the export's arrays by name, its metadata, and a byte count per part."""
  leaves_meta, tensors = {}, {}
  sizes = dict(dense=0, values=0, masks=0, unpruned=0, vgg=0, kept=0, pruned=0)
  mask_leaves = dict(_leaves(masks))
  for path, p in tqdm(_leaves(params), desc="export", unit="leaf", disable=None, leave=False):
    m = np.asarray(mask_leaves[path], dtype=bool)
    v32 = p.astype(np.float32)  # exact for float32, bfloat16 and float16 weights
    sizes["dense"] += 4 * p.size
    entry = {"shape": list(p.shape), "dtype": str(p.dtype), "sparse": bool(not m.all())}
    if entry["sparse"]:
      tensors[f"params/{path}.values"] = np.ascontiguousarray(v32.reshape(-1)[m.reshape(-1)])
      tensors[f"params/{path}.mask"] = np.packbits(m.reshape(-1))
      sizes["values"] += tensors[f"params/{path}.values"].nbytes
      sizes["masks"] += tensors[f"params/{path}.mask"].nbytes
      sizes["kept"] += int(m.sum())
      sizes["pruned"] += int(m.size - m.sum())
    else:
      tensors[f"params/{path}"] = np.ascontiguousarray(v32)
      sizes["unpruned"] += v32.nbytes
      sizes["kept"] += int(m.size)
    leaves_meta[path] = entry
  vgg_meta = {}
  for path, v in _leaves(vgg_params) if vgg_params is not None else []:
    tensors[f"vgg/{path}"] = np.ascontiguousarray(v.astype(np.float32))
    vgg_meta[path] = {"shape": list(v.shape), "dtype": str(v.dtype)}
    sizes["vgg"] += tensors[f"vgg/{path}"].nbytes
  sizes["dense"] += sizes["vgg"]
  metadata = {"format": FORMAT, "version": VERSION, "model": model_name, "model_config": model_config,
              "source": source, "params": leaves_meta, "vgg": vgg_meta if vgg_params is not None else None}
  return tensors, metadata, sizes


def write(out: str, tensors: dict, metadata: dict) -> None:
  """Writes the tensors and metadata as .npz or .safetensors, atomically (temporary sibling + rename)."""
  ext = _check_out(out)
  text = json.dumps(metadata, sort_keys=True)
  if ext == ".npz":
    write = lambda tmp: weights.write_npz(tmp, {**tensors, _META_KEY: np.frombuffer(text.encode(), dtype=np.uint8)})
  else:
    write = lambda tmp: safetensors_numpy().save_file(tensors, tmp, metadata={"jaxtickets": text})
  try:
    storage.write_atomically(out, write)
  except OSError as err:
    raise UserError(f"Could not write '{out}' ({err.strerror or err}): choose a writable path.") from None


def safetensors_numpy():
  try:
    import safetensors.numpy  # pylint: disable=g-import-not-at-top  (optional: only .safetensors needs it)
  except ImportError:
    raise UserError("Writing or reading .safetensors needs the 'safetensors' package: pip install safetensors, "
                    "or use .npz.") from None
  return safetensors.numpy


def _read(path: str) -> tuple[dict, dict]:
  """(tensors, metadata) of an export file; anything else is a UserError naming it."""
  ext = _check_out(path)
  if not os.path.isfile(path):
    raise UserError(f"No export file at '{path}': check the path (write one with python -m jaxtickets.export).")
  try:
    if ext == ".npz":
      tensors = weights.read_npz(path)
      text = tensors.pop(_META_KEY).tobytes().decode()
    else:
      tensors, header = weights.read_safetensors(path)
      text = header["jaxtickets"]
    metadata = json.loads(text)
  except UserError:
    raise
  except weights.Unreadable as err:
    raise UserError(f"'{path}' is not a jaxtickets export ({err}); export the ticket again.") from None
  except Exception as err:  # pylint: disable=broad-except  (no metadata, or not JSON)
    raise UserError(f"'{path}' is not a jaxtickets export ({type(err).__name__}: {err}); export the ticket "
                    "again.") from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
    raise UserError(f"'{path}' is not a jaxtickets export (no '{FORMAT}' metadata); export the ticket again.")
  return tensors, metadata


def load_export(path: str) -> Exported:
  """Rebuilds the exact params, masks and (if stored) VGG of an export file."""
  path = os.fspath(path)
  tensors, meta = _read(path)
  params, masks = {}, {}
  try:
    for name, e in meta["params"].items():
      shape, dtype = tuple(e["shape"]), jnp.dtype(e["dtype"])
      size = int(np.prod(shape, dtype=np.int64))
      if e["sparse"]:
        m = np.unpackbits(tensors[f"params/{name}.mask"], count=size).astype(bool)
        flat = np.zeros(size, np.float32)
        flat[m] = tensors[f"params/{name}.values"]
        params[name], masks[name] = flat.reshape(shape).astype(dtype), m.reshape(shape)
      else:
        params[name] = tensors[f"params/{name}"].reshape(shape).astype(dtype)
        masks[name] = np.ones(shape, bool)
    vgg = None
    if meta.get("vgg") is not None:
      vgg = weights.unflatten({n: tensors[f"vgg/{n}"].reshape(e["shape"]).astype(jnp.dtype(e["dtype"]))
                      for n, e in meta["vgg"].items()})
  except (KeyError, ValueError, TypeError) as err:
    raise UserError(f"The export '{path}' is damaged ({type(err).__name__}: {err}); export the ticket "
                    "again.") from None
  return Exported(model_name=meta["model"], model_config=meta["model_config"], params=weights.unflatten(params),
                  masks=weights.unflatten(masks), vgg_params=vgg, metadata=meta)
