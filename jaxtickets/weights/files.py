"""Weight files on disk: the one module that reads and writes them.

  state dicts     a released PyTorch file: .pth/.pt (and any other name) through torch, imported only then (the
                  optional extra `port`), .safetensors and .npz without torch; `read_state_dict`
  VGG files       Flax-format VGG weights: a flat '.npz' ('conv1_1/kernel' keys), an Orbax params directory, or a
                  ported directory's 'vgg' part; `load_vgg_weights` fits one to the depth a model needs (deeper
                  files are fine: the extra layers are dropped), `load_or_init_vgg` is config.model.vgg_weights,
                  `model_and_vgg` the model and VGG of a run's config (the trainer's and inference's one builder)
  ported dirs     what scripts/port_weights.py writes (`save_ported`, `load_ported`): model.json ({"model",
                  "model_config", "sources", "notes"}) and params/, an Orbax params checkpoint of
                  {"params": {group: tree}, "vgg": tree} (or {"vgg": tree} alone for a VGG-only port)

Each format has one reader here; jaxtickets.tickets.export_format builds the export layout on `read_npz` and
`read_safetensors`, and jaxtickets.weights.port converts what `read_state_dict` gives.
"""

import dataclasses
import json
import os
import pickle
from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import jax
import numpy as np

from jaxtickets import config as config_lib, models, storage
from jaxtickets.core import streams
from jaxtickets.errors import UserError

MODEL_JSON = 'model.json'
PARAMS_DIR = 'params'
# Released PyTorch weights are full width with the reference's frozen VGG encoder: a ported model's config means
# these values where model.json leaves them out.
RELEASED_MODEL = {'width': 1.0, 'train_encoder': False}

_SEP = '/'
# config.model.vgg_weights = 'demo': the loss network scripts/make_demo_vgg.py trains on this machine's shipped
# images, one file per width, checked against its SHA-256 before use (a changed file is not the network the docs
# describe). Width -> SHA-256 of jaxtickets/assets/demo_vgg_w<width>.npz.
DEMO_VGG = config_lib.DEMO_VGG
DEMO_VGG_SHA256 = {
    0.0625: '0d01527cd34d6b8a7c8ed4875f6a581455b79230f747047b3a219441fa350f70',  # the tests' tiny runs
    0.25: 'eb2962a9a6a9dbd49c7d6178607d5f088dd96bc135fb30942997b2af53752556',
}
_FIX = ('set config.model.vgg_weights to a Flax-format VGG file written by scripts/port_weights.py, or leave it '
        'empty for random weights')
_INSTALL = 'pip install "jaxtickets[port]"'
_TORCH_SUFFIXES = ('.pth', '.pt', '.pth.tar', '.safetensors', '.bin', '.ckpt')
_MAX_LISTED = 12  # problems named in one message; the rest are counted


def flatten(tree: Mapping) -> dict[str, Any]:
  """{'a': {'b': {'kernel': x}}} -> {'a/b/kernel': x}; anything that is not a mapping is a leaf."""
  flat = traverse_util.flatten_dict(dict(tree), is_leaf=lambda _, x: not isinstance(x, Mapping))
  for path in flat:
    for key in path:
      if _SEP in str(key):
        raise ValueError(f'Parameter name {str(key)!r} contains {_SEP!r}, which flat keys use as the separator.')
  return {_SEP.join(map(str, path)): value for path, value in flat.items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
  """{'a/b/kernel': x} -> {'a': {'b': {'kernel': x}}}, the inverse of `flatten`."""
  return traverse_util.unflatten_dict(dict(flat), sep=_SEP)


def shape_str(shape) -> str:
  """(3,3,64,4): a shape as messages write it."""
  return '(' + ','.join(str(int(d)) for d in shape) + ')'


# ------------------------------------------------------------------------------------------------------------
# Readers, one per file format


class Unreadable(Exception):
  """A file that is not of the reader's format; the message says why (callers name the file and the fix)."""

  def __init__(self, reason: str, damaged: bool = False):
    super().__init__(reason)
    self.damaged = damaged  # it opened as the format, but its contents could not be read


def _why(err: BaseException) -> str:
  """'TypeName: the first sentence of the message' (cut to a line's length)."""
  first = (str(err).strip().splitlines() or [''])[0].split('. ')[0]
  first = first if len(first) <= 120 else first[:117] + '...'
  return f'{type(err).__name__}: {first}' if first else type(err).__name__


def read_npz(path, keys=None) -> dict[str, np.ndarray]:
  """The named arrays of an .npz archive (with `keys`, those of them it holds: the rest are not read)."""
  try:
    npz = np.load(path, allow_pickle=False)
  except Exception as err:  # zipfile.BadZipFile, ValueError, OSError, EOFError, ...
    raise Unreadable(_why(err)) from None
  if not hasattr(npz, 'files'):  # a plain .npy array
    raise Unreadable('it holds a single array')
  with npz:
    held = set(npz.files)
    names = npz.files if keys is None else [k for k in keys if k in held]
    try:
      return {k: npz[k] for k in names}
    except Exception as err:  # a damaged member: zipfile.BadZipFile (CRC), EOFError, ValueError
      raise Unreadable(_why(err), damaged=True) from None


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(the named arrays, the header's metadata) of a .safetensors file."""
  try:
    import safetensors  # pylint: disable=import-outside-toplevel  (a dependency, but only these files need it)
  except ImportError:
    raise UserError(f"Reading '{path}' needs the safetensors package: pip install safetensors.") from None
  try:
    with safetensors.safe_open(os.fspath(path), framework='np') as f:
      return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
  except Exception as err:  # SafetensorError, or numpy's complaint about a dtype it lacks (bfloat16)
    raise Unreadable(_why(err)) from None


def _numpy(value: Any) -> np.ndarray:
  """A torch tensor or array as numpy; floating tensors (also float16/bfloat16) become float32."""
  if hasattr(value, 'detach'):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _tensor_dict(obj: Any, path: str) -> dict[str, Any]:
  """The mapping of named tensors inside a loaded torch object (a state dict, or one under 'state_dict' etc.)."""
  if isinstance(obj, Mapping):
    if obj and all(hasattr(v, 'shape') for v in obj.values()):
      return dict(obj)
    for key in ('state_dict', 'model', 'net', 'params'):
      if isinstance(obj.get(key), Mapping):
        return _tensor_dict(obj[key], path)
  what = f'a {type(obj).__name__}' if not isinstance(obj, Mapping) else 'a dict without tensors'
  raise UserError(f"'{path}' holds {what}, not a state dict of named tensors: save `module.state_dict()` and "
                  'port that file.')


def _read_torch(path: str) -> dict[str, np.ndarray]:
  """The state dict of a PyTorch checkpoint, read safely (tensors only)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"Reading '{path}' needs PyTorch: {_INSTALL} (or convert the file to .safetensors or .npz "
                    'where torch is installed).') from None
  with open(path, 'rb') as f:
    head = f.read(4)
  if not (head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'):  # a zip archive or a legacy pickle
    raise Unreadable(f'it starts with {head!r}, not a zip archive or a pickle')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as err:
    if 'weights_only' not in str(err):
      raise Unreadable(_why(err)) from None
    raise UserError(f"'{path}' holds Python objects besides tensors, which the safe loader (torch.load with "
                    'weights_only=True) refuses: load it in PyTorch, save only the state dict '
                    '(torch.save(model.state_dict(), FILE)) and port that file.') from None
  except Exception as err:  # torch raises many types for a damaged file (RuntimeError, EOFError, ...)
    raise Unreadable(_why(err)) from None
  return {str(k): _numpy(v) for k, v in _tensor_dict(obj, path).items()}


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Named arrays of a .pth/.pt (torch), .safetensors or .npz file, floating ones as float32 numpy."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise UserError(f"Weights file '{path}' {what}: pass the path of a .pth, .safetensors or .npz file.")
  if path.endswith('.safetensors'):
    what, read = 'a readable .safetensors file', lambda p: read_safetensors(p)[0]
  elif path.endswith('.npz'):
    what, read = 'a readable .npz archive of named arrays', read_npz
  else:
    what, read = 'a readable PyTorch checkpoint', _read_torch
  try:
    state = read(path)
  except Unreadable as err:
    raise UserError(f"'{path}' is not {what} ({err}): pass the checkpoint file itself (not a web page, a text "
                    'file or a partly downloaded file).') from None
  if not state:
    raise UserError(f"'{path}' holds no tensors: pass a state dict of the model's weights.")
  return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v) for k, v in state.items()}


# ------------------------------------------------------------------------------------------------------------
# Ported directories


@dataclasses.dataclass
class Ported:
  """A ported model or VGG: what a ported directory holds and what model.stylize takes (params, vgg)."""
  model: str | None  # None for a VGG-only port
  model_config: dict | None
  params: dict | None  # {group: tree}; None for a VGG-only port
  vgg: dict | None  # None only in a directory that holds no 'vgg' part
  sources: dict
  notes: list[str]


def is_ported(path) -> bool:
  """Whether `path` is a directory written by `save_ported`."""
  return os.path.isfile(os.path.join(os.fspath(path), MODEL_JSON))


def save_ported(ported: Ported, out, *, overwrite: bool = False) -> None:
  """Writes out/model.json and out/params ({"params": ..., "vgg": ...} or {"vgg": ...})."""
  from jaxtickets.store import checkpoint  # pylint: disable=import-outside-toplevel  (Orbax is slow to import)
  out = os.fspath(out)
  taken = [n for n in (MODEL_JSON, PARAMS_DIR) if os.path.exists(os.path.join(out, n))]
  if taken and not overwrite:
    raise UserError(f"'{out}' already holds ported weights ({', '.join(taken)}): pass --overwrite to replace "
                    'them or choose another --out.')
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out '{out}' is a file: choose a directory.")
  tree = {'vgg': ported.vgg} if ported.params is None else {'params': ported.params, 'vgg': ported.vgg}
  checkpoint.save_params(os.path.join(out, PARAMS_DIR), tree, overwrite=overwrite)
  checkpoint.save_json(os.path.join(out, MODEL_JSON), {
      'model': ported.model, 'model_config': ported.model_config, 'sources': ported.sources,
      'notes': ported.notes})


def _params_dir(path: str) -> str | None:
  """The Orbax params directory of a ported directory (or the path itself when it is one)."""
  from jaxtickets.store import checkpoint  # pylint: disable=import-outside-toplevel
  # A ported directory's params/ is a whole checkpoint; a plain checkpoint's params/ is only its item folder.
  for candidate in (os.path.join(path, PARAMS_DIR), path):
    if checkpoint.params_exist(candidate):
      return candidate
  if os.path.exists(os.path.join(path, MODEL_JSON)):
    return os.path.join(path, PARAMS_DIR)  # damaged: load_params names the file
  return None


def load_ported(path, *, need_model: bool = False) -> Ported:
  """What a directory written by `save_ported` holds (a bare params checkpoint of that tree names no model, which
  `need_model` refuses for model weights)."""
  from jaxtickets.store import checkpoint  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  params_dir = _params_dir(path) if os.path.isdir(path) else None
  if params_dir is None:
    raise UserError(f"'{path}' is not a directory of ported weights ({MODEL_JSON} + {PARAMS_DIR}/): write one with "
                    'python scripts/port_weights.py --model=<name> --vgg=FILE ... --out=DIR.')
  meta_path = os.path.join(path, MODEL_JSON)
  meta = checkpoint.load_json(meta_path) if os.path.exists(meta_path) else {}
  meta = meta if isinstance(meta, dict) else {}  # not a JSON object: it names no model
  tree = checkpoint.load_params(params_dir)
  if not tree or set(tree) - {'params', 'vgg'}:
    raise UserError(f"The params checkpoint in '{path}' holds {sorted(tree)}, not 'params' and 'vgg': port the "
                    'weights again.')
  model = meta.get('model')
  if (model is not None and not isinstance(model, str)) or (need_model and 'params' in tree and model is None):
    raise UserError(f"'{meta_path}' has no \"model\" name: write it as "
                    '{"model": NAME, "model_config": {...}}.')
  return Ported(model, meta.get('model_config'), tree.get('params'), tree.get('vgg'), meta.get('sources') or {},
                meta.get('notes') or [])


# ------------------------------------------------------------------------------------------------------------
# VGG files


def save_vgg_weights(path, params, *, overwrite: bool = False) -> None:
  """Writes `params` as a '.npz' (flat keys) when the path ends in .npz, else as an Orbax params directory."""
  path = os.fspath(path)
  if not path.endswith('.npz'):
    from jaxtickets.store import checkpoint  # pylint: disable=import-outside-toplevel  (only the directory needs Orbax)
    checkpoint.save_params(path, params, overwrite=overwrite)
    return
  if os.path.exists(path) and not overwrite:
    raise UserError(f"VGG weights already exist at '{path}'; pass overwrite=True to replace them or choose "
                    'another path.')
  arrays = {k: np.asarray(v) for k, v in flatten(params).items()}
  storage.write_atomically(path, lambda tmp: write_npz(tmp, arrays))


def write_npz(path: str, arrays: dict) -> None:
  """An .npz archive np.load reads, byte for byte the same for the same arrays (np.savez stamps each member with the
  time of writing, so the same weights would hash differently)."""
  import zipfile  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as archive:
    for name in sorted(arrays):
      info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
      with archive.open(info, 'w', force_zip64=True) as member:
        np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)


def _read_vgg_npz(path: str, wanted) -> dict[str, np.ndarray]:
  try:
    return read_npz(path, wanted)
  except Unreadable as err:
    if err.damaged:
      raise UserError(f"VGG weights '{path}' are damaged ({err}); {_FIX}.") from None
    raise UserError(f"VGG weights '{path}' are not an .npz archive of named arrays nor an Orbax checkpoint "
                    f'directory ({err}); {_FIX}.') from None


def _read_vgg_dir(path: str) -> dict[str, Any]:
  """Flat arrays of an Orbax params directory or of a ported directory; a ported tree {'vgg': ...,
  'params': ...} gives its 'vgg' part."""
  from jaxtickets.store import checkpoint  # pylint: disable=import-outside-toplevel
  params_dir = _params_dir(path)
  if params_dir is None:
    raise UserError(f"VGG weights directory '{path}' is not an Orbax params checkpoint nor a directory written "
                    f'by scripts/port_weights.py; {_FIX}.')
  tree = checkpoint.load_params(params_dir)  # a damaged one gets load_params' message naming the file
  if 'vgg' in tree and 'conv0' not in tree:
    return flatten(tree['vgg'])
  if 'params' in tree and 'conv0' not in tree and 'conv0' not in tree['params']:
    raise UserError(f"'{path}' holds ported model weights without a 'vgg' part; port the VGG file too "
                    f'(--vgg) or {_FIX}.')
  return flatten(tree)


def _read_vgg(path: str, wanted) -> dict[str, np.ndarray]:
  """Flat arrays from an .npz file, an Orbax params directory or a ported directory."""
  if os.path.isdir(path):
    return _read_vgg_dir(path)
  if path.endswith(_TORCH_SUFFIXES):
    raise UserError(f"VGG weights '{path}' are a PyTorch-format file: port them first with python "
                    'scripts/port_weights.py --vgg=FILE --out=DIR and set config.model.vgg_weights=DIR.')
  return _read_vgg_npz(path, wanted)


def _strip_params(flat: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
  """Drops a common leading 'params/' (a whole Flax variables dict) so both sides compare by layer name."""
  prefix = f'params{_SEP}'
  if flat and all(k.startswith(prefix) for k in flat):
    return {k[len(prefix):]: v for k, v in flat.items()}, True
  return dict(flat), False


def demo_vgg_path(width: float) -> str:
  """Where the demo loss network of this width lives inside the package."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets', f'demo_vgg_w{float(width):g}.npz')


def file_sha256(path: str) -> str:
  """The hex SHA-256 of a file's bytes, read in blocks."""
  import hashlib  # pylint: disable=import-outside-toplevel
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def resolve_demo_vgg(width: float) -> str:
  """The checked path of the demo loss network at `width`; UserError when there is none or it is not the one made."""
  widths = ', '.join(f'{w:g}' for w in sorted(DEMO_VGG_SHA256))
  if float(width) not in DEMO_VGG_SHA256:
    raise UserError(f"config.model.vgg_weights = 'demo' exists at width {widths} only, not {float(width):g}: set "
                    f'--config.model.width={widths.split(",")[0]}, or make one with python scripts/make_demo_vgg.py '
                    f'--width={float(width):g}.')
  path = demo_vgg_path(width)
  if not os.path.isfile(path):
    raise UserError(f"The demo loss network '{path}' is missing: reinstall jaxtickets, or make it with python "
                    f'scripts/make_demo_vgg.py --width={float(width):g}.')
  got, want = file_sha256(path), DEMO_VGG_SHA256[float(width)]
  if got != want:
    raise UserError(f"The demo loss network '{path}' has SHA-256 {got[:12]}..., not the {want[:12]}... the "
                    "package records: it was changed or damaged; reinstall jaxtickets (or, after remaking it on "
                    "purpose, record the new hash in jaxtickets/weights/files.py's DEMO_VGG_SHA256).")
  return path


def _file_width(got: Mapping[str, Any], want: Mapping[str, Any]) -> float | None:
  """The width multiplier of a VGG file whose layers are the model's at another width (every kernel the model needs
  present, each scaled by one factor), else None: a wrong width is then named with the flag that fixes it."""
  key = 'conv1_1/kernel'
  if key not in got or key not in want or any(k not in got for k in want if k.endswith('/kernel')):
    return None
  width = got[key].shape[-1] / 64.0  # conv1_1 has 64 channels at full width
  model_width = want[key].shape[-1] / 64.0
  if width == model_width:
    return None
  scale = width / model_width
  for k, spec in want.items():
    if k.endswith('/kernel') and k != 'conv0/kernel':
      cin, cout = spec.shape[-2:]
      fcin, fcout = got[k].shape[-2:]
      if fcout != max(1, round(cout * scale)) or (cin != 3 and fcin != max(1, round(cin * scale))):
        return None
  return width


def load_vgg_weights(path, expected) -> dict:
  """Reads VGG weights that fit `expected` (a tree whose leaves have .shape), as float32 numpy arrays."""
  path = os.fspath(path)
  path = storage.local_copy(path) if storage.is_url(path) else path  # a gs:// VGG: read from this host's copy
  if not path or not os.path.exists(path):
    raise UserError(f"VGG weights file '{path}' does not exist; {_FIX}.")
  want, wrapped = _strip_params(flatten(expected))
  got = _read_vgg(path, list(want) + [f'params{_SEP}{k}' for k in want])
  got, _ = _strip_params(got)
  problems = []
  for key, spec in want.items():
    if key not in got:
      problems.append(f'missing {key}')
    elif tuple(got[key].shape) != tuple(spec.shape):
      problems.append(f'{key} has shape {shape_str(got[key].shape)}, expected {shape_str(spec.shape)}')
  if problems:
    width = _file_width(got, want)
    if width is not None:
      has, needs = got['conv1_1/kernel'].shape[-1], want['conv1_1/kernel'].shape[-1]
      raise UserError(f"VGG weights '{path}' are a VGG at width {width:g} (conv1_1 has {has} channels), not the "
                      f"model's {needs}: set --config.model.width={width:g}.")
    more = len(problems) - _MAX_LISTED
    listed = '; '.join(problems[:_MAX_LISTED]) + (f'; and {more} more' if more > 0 else '')
    raise UserError(f"VGG weights '{path}' do not fit the model: {listed}; {_FIX}.")
  params = unflatten({k: np.asarray(got[k], np.float32) for k in want})
  return {'params': params} if wrapped else params


def load_or_init_vgg(model, path: str, key) -> dict:
  """The VGG params from `path` (config.model.vgg_weights), or random ones drawn with `key` when it is empty,
  with a loud warning."""
  if path == DEMO_VGG:
    deepest = max(model.loss_depth, model.encoder_depth)  # 'r11' < ... < 'r51' as strings too
    if deepest > 'r41':
      raise UserError(f"config.model.vgg_weights = 'demo' stops at relu4_1, but {model.name} reads {deepest}: give "
                      'ported VGG weights (scripts/port_weights.py), or leave it empty for a random VGG.')
    path = resolve_demo_vgg(model.width)
  if path:
    return load_vgg_weights(path, jax.eval_shape(model.init_vgg, key))
  if jax.process_index() == 0:  # one warning per run, not one per host
    print('WARNING: config.model.vgg_weights is empty, so the VGG encoder and loss network are RANDOM: the run '
          'exercises the pipeline but its results are not meaningful for style transfer. Fetch and port the '
          'released VGG with python -m jaxtickets.weights fetch vgg and set --config.model.vgg_weights=weights/vgg.',
          flush=True)
  return jax.device_get(model.init_vgg(key))


def model_and_vgg(spec) -> tuple[Any, dict]:
  """The model a settings.ModelSpec builds and its VGG params, loaded or drawn from the spec's seed's VGG stream:
  the trainer and inference build both here, so a ticket is used with the model and the random stand-in VGG it was
  trained with."""
  model = models.get_model(spec.name)(spec.options)
  return model, load_or_init_vgg(model, spec.vgg_weights, streams.key(spec.seed, streams.Stream.VGG))


# ------------------------------------------------------------------------------------------------------------
# A run's VGG: what it trained with (its workdir's vgg.json), and finding it again from anywhere


def vgg_sha256(path: str) -> str:
  """The SHA-256 a run records for its VGG: a file's bytes; a ported directory's source file (model.json), so a copy
  or a re-port of the same release has the same hash; another directory's files, in name order."""
  import hashlib  # pylint: disable=import-outside-toplevel
  path = storage.local_copy(path) if storage.is_url(path) else path
  if os.path.isfile(path):
    return file_sha256(path)
  if not os.path.isdir(path):
    raise UserError(f"VGG weights '{path}' do not exist; {_FIX}.")
  meta = os.path.join(path, MODEL_JSON)
  if os.path.isfile(meta):
    with open(meta) as f:
      sha = ((json.load(f).get('sources') or {}).get('vgg') or {}).get('sha256')
    if sha:
      return sha
  digest = hashlib.sha256()
  for root, dirs, names in os.walk(path):
    dirs.sort()
    for name in sorted(names):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode() + b'\0' + file_sha256(full).encode())
  return digest.hexdigest()


def describe_vgg(vgg_weights: str, width: float) -> dict:
  """{'vgg_weights', 'path', 'sha256', 'release', 'verified'} of a config.model.vgg_weights: the released file its
  hash names (jaxtickets.weights.releases) and how that is known ('published', 'pinned'), or why it is not."""
  from jaxtickets.weights import releases  # pylint: disable=import-outside-toplevel
  rec = {'vgg_weights': vgg_weights, 'path': '', 'sha256': '', 'release': '', 'verified': ''}
  if not vgg_weights:
    return {**rec, 'verified': 'random: no VGG weights'}
  if vgg_weights == DEMO_VGG:
    path = resolve_demo_vgg(width)  # hashed there, and equal to the recorded hash
    return {**rec, 'path': path, 'sha256': DEMO_VGG_SHA256[float(width)], 'release': 'the demo loss network',
            'verified': 'published'}
  path = storage.absolute(vgg_weights)
  rec.update(path=path, sha256=vgg_sha256(path))
  found, how = releases.identify(rec['sha256'])
  if found is not None:
    return {**rec, 'release': found.title, 'verified': how}
  meta = os.path.join(storage.local_copy(path) if storage.is_url(path) else path, MODEL_JSON)
  said = ''
  if os.path.isfile(meta):  # e.g. 'unverified: --allow_unverified', written by the fetch that ported it
    with open(meta) as f:
      said = ((json.load(f).get('sources') or {}).get('vgg') or {}).get('verified', '')
  return {**rec, 'verified': said or 'unverified: not a released file'}


def vgg_record_note(workdir: str) -> str:
  """'; SHA-256 `...`, <the released file> (<how verified>)' for the report's VGG line ('' without a record)."""
  from jaxtickets.store import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  rec = workdir_lib.load_vgg_record(workdir)
  if not rec.get('sha256'):
    return ''
  if rec.get('vgg_weights') == DEMO_VGG:
    return f"; SHA-256 `{rec['sha256']}` (the one jaxtickets/weights/files.py records for it)"
  what = rec.get('release') or 'not a released file'
  how = rec.get('verified') or 'unverified'
  if how in ('published', 'pinned'):
    how = {'published': 'verified: the published SHA-256',
           'pinned': 'the SHA-256 pinned on first use or by hand, not a published one'}[how]
  return f"; SHA-256 `{rec['sha256']}`, {what} ({how})"


def locate_run_vgg(given: str, workdir: str, log=print) -> str:
  """config.model.vgg_weights, or where the run in `workdir` found it when it is a relative path that does not exist
  from here (its vgg.json: the absolute path, or the path from the directory it was launched from), so the same
  command resumes from any directory or host. The file's identity is its SHA-256, which
  store.workdir.check_resume_vgg holds the resumed run to."""
  from jaxtickets.store import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  if (not given or given == DEMO_VGG or os.path.isabs(given) or storage.is_url(given) or os.path.exists(given)
      or not storage.isfile(workdir_lib.vgg_record_path(workdir))):
    return given
  rec = workdir_lib.load_vgg_record(workdir)
  tried = [rec.get('path'), rec.get('launch_dir') and os.path.join(rec['launch_dir'], given)]
  found = next((p for p in tried if p and storage.exists(p)), None)
  if found is None:
    return given  # validation names the missing file
  log(f"config.model.vgg_weights = {given!r} is not here; using {found!r}, where the run in '{workdir}' found it.")
  return found


def resolve_run_vgg(spec, workdir: str, override: str | None = None, allow_mismatch: bool = False) -> str:
  """The vgg_weights of a run's settings.ModelSpec as a path that works from here, checked against the run's
  record.

  `override` (--vgg_weights) points elsewhere; else the recorded absolute path, then the configured path taken
  relative to the directory the run was launched from or to the workdir (a relative path in config.json is the
  launch directory's, not the caller's), then, for runs made before the record, to the current directory.
  """
  from jaxtickets.store import workdir as workdir_lib  # pylint: disable=import-outside-toplevel
  rec = workdir_lib.load_vgg_record(workdir)
  given = spec.vgg_weights
  if override:
    path = override if override == DEMO_VGG else storage.absolute(override)
  elif not given or given == DEMO_VGG or os.path.isabs(given) or storage.is_url(given):
    path = given
  else:
    tried = [p for p in (rec.get('path'), rec.get('launch_dir') and os.path.join(rec['launch_dir'], given),
                         os.path.join(workdir, given), None if rec else os.path.abspath(given)) if p]
    path = next((p for p in tried if os.path.exists(p)), None)
    if path is None:
      raise UserError(f"The run's VGG weights {given!r} are not at {' nor '.join(dict.fromkeys(tried))}: pass "
                      '--vgg_weights=PATH to point at them.')
  if rec:
    got = describe_vgg(path, spec.width)['sha256'] if path else ''
    if got != rec.get('sha256', '') and not allow_mismatch:
      raise UserError(f"VGG weights {path or 'none'!r} have SHA-256 {got or 'none (a random VGG)'}, not the "
                      f"{rec.get('sha256') or 'none (a random VGG)'} the run recorded in "
                      f"{workdir_lib.vgg_record_path(workdir)}: pass --vgg_weights=PATH of the file it trained "
                      'with, or --allow_vgg_mismatch to go on with these.')
  return path
