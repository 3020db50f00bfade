"""Flax-format VGG weights on disk: a flat '.npz' ('conv1_1/kernel' keys), an Orbax params directory, or a
directory written by scripts/port_weights.py (model.json + params/, whose 'vgg' part is read).

scripts/port_weights.py turns PyTorch state dicts into such files; `load_vgg_weights` fits one to the depth a model
needs (deeper files are fine: the extra layers are dropped).
"""

import os
import zipfile
from collections.abc import Mapping
from typing import Any

from flax import traverse_util
import numpy as np

from jaxtickets.errors import UserError

_SEP = '/'
_FIX = ('set config.model.vgg_weights to a Flax-format VGG file written by scripts/port_weights.py, or leave it '
        'empty for random weights')
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


def save_vgg_weights(path, params, *, overwrite: bool = False) -> None:
  """Writes `params` as a '.npz' (flat keys) when the path ends in .npz, else as an Orbax params directory."""
  path = os.fspath(path)
  if not path.endswith('.npz'):
    from jaxtickets import checkpoint  # Orbax is slow to import; only the directory format needs it.
    checkpoint.save_params(path, params, overwrite=overwrite)
    return
  if os.path.exists(path) and not overwrite:
    raise UserError(f"VGG weights already exist at '{path}'; pass overwrite=True to replace them or choose "
                    'another path.')
  os.makedirs(os.path.dirname(os.path.abspath(path)) or '.', exist_ok=True)
  arrays = {k: np.asarray(v) for k, v in flatten(params).items()}
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'wb') as f:  # a file object, so numpy does not append another '.npz'
      np.savez(f, **arrays)
    os.replace(tmp, path)  # atomic: readers see the old file or the whole new one
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _read_npz(path: str, wanted) -> dict[str, np.ndarray]:
  """The wanted arrays of an .npz (reading only those); anything but an .npz is a UserError."""
  not_npz = f"VGG weights '{path}' are not an .npz archive of named arrays nor an Orbax checkpoint directory"
  try:
    npz = np.load(path, allow_pickle=False)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError):
    raise UserError(f'{not_npz}; {_FIX}.') from None
  if not hasattr(npz, 'files'):  # a plain .npy array
    raise UserError(f'{not_npz} (it holds a single array); {_FIX}.')
  try:
    with npz:
      keys = set(npz.files)
      return {k: npz[k] for k in wanted if k in keys}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
    raise UserError(f"VGG weights '{path}' are damaged ({type(err).__name__}: {err}); {_FIX}.") from None


_TORCH_SUFFIXES = ('.pth', '.pt', '.pth.tar', '.safetensors', '.bin', '.ckpt')


def _read_dir(path: str) -> dict[str, Any]:
  """Flat arrays of an Orbax params directory or of a ported directory (its params/ checkpoint); a ported
  tree {'vgg': ..., 'params': ...} gives its 'vgg' part."""
  from jaxtickets import checkpoint
  ported = os.path.join(path, 'params')
  # A ported directory's params/ is a whole checkpoint; a plain checkpoint's params/ is only its item folder.
  if checkpoint.params_exist(ported) or os.path.exists(os.path.join(path, 'model.json')):
    tree = checkpoint.load_params(ported)  # a damaged one gets load_params' message naming the file
  elif checkpoint.params_exist(path):
    tree = checkpoint.load_params(path)
  else:
    raise UserError(f"VGG weights directory '{path}' is not an Orbax params checkpoint nor a directory written "
                    f'by scripts/port_weights.py; {_FIX}.')
  if 'vgg' in tree and 'conv0' not in tree:
    return flatten(tree['vgg'])
  if 'params' in tree and 'conv0' not in tree and 'conv0' not in tree['params']:
    raise UserError(f"'{path}' holds ported model weights without a 'vgg' part; port the VGG file too "
                    f'(--vgg) or {_FIX}.')
  return flatten(tree)


def _read(path: str, wanted) -> dict[str, np.ndarray]:
  """Flat arrays from an .npz file, an Orbax params directory or a ported directory."""
  if os.path.isdir(path):
    return _read_dir(path)
  if path.endswith(_TORCH_SUFFIXES):
    raise UserError(f"VGG weights '{path}' are a PyTorch-format file: port them first with python "
                    'scripts/port_weights.py --vgg=FILE --out=DIR and set config.model.vgg_weights=DIR.')
  return _read_npz(path, wanted)


def _strip_params(flat: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
  """Drops a common leading 'params/' (a whole Flax variables dict) so both sides compare by layer name."""
  prefix = f'params{_SEP}'
  if flat and all(k.startswith(prefix) for k in flat):
    return {k[len(prefix):]: v for k, v in flat.items()}, True
  return dict(flat), False


def _shape(shape) -> str:
  return '(' + ','.join(str(int(d)) for d in shape) + ')'


def load_vgg_weights(path, expected) -> dict:
  """Reads VGG weights that fit `expected` (a tree whose leaves have .shape), as float32 numpy arrays."""
  path = os.fspath(path)
  if not path or not os.path.exists(path):
    raise UserError(f"VGG weights file '{path}' does not exist; {_FIX}.")
  want, wrapped = _strip_params(flatten(expected))
  got = _read(path, list(want) + [f'params{_SEP}{k}' for k in want])
  got, _ = _strip_params(got)
  problems = []
  for key, spec in want.items():
    if key not in got:
      problems.append(f'missing {key}')
    elif tuple(got[key].shape) != tuple(spec.shape):
      problems.append(f'{key} has shape {_shape(got[key].shape)}, expected {_shape(spec.shape)}')
  if problems:
    more = len(problems) - _MAX_LISTED
    listed = '; '.join(problems[:_MAX_LISTED]) + (f'; and {more} more' if more > 0 else '')
    raise UserError(f"VGG weights '{path}' do not fit the model: {listed}; {_FIX}.")
  params = unflatten({k: np.asarray(got[k], np.float32) for k in want})
  return {'params': params} if wrapped else params
