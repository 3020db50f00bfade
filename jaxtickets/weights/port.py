"""PyTorch state dicts -> Flax params: the VGG19 variants and the released decoders/transforms of the six models.

Every file (read by `weights.read_state_dict`) is matched against a known key layout: the VGG ones in
models/vgg.py, each model's in its own file (`Model.torch_parts`, models.md §1.3, §2.6, §3.6, §4.6, §5.6, §6.6,
§7.6, §9). It is checked strictly: missing keys, unexpected keys and shape mismatches come back together in one
UserError. Conversions: Conv2d OIHW -> HWIO, Linear (O, I) -> (I, O), and a 1x1 conv to whatever the Flax model
holds (a (1, 1, I, O) conv kernel or an (I, O) Dense kernel).

`port` writes the result as a ported directory (weights.save_ported); `weights.load_vgg_weights` reads its 'vgg'
part and `load_init_from` its 'params' part.
"""

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxtickets import models
from jaxtickets.weights import files as weights
from jaxtickets.errors import UserError
from jaxtickets.models import vgg as vgg_lib
from jaxtickets.models.torch_layout import Layer, KeyLayout, Part
from jaxtickets.weights.files import Ported

# ------------------------------------------------------------------------------------------------------------
# State dicts


def strip_module_prefix(state: Mapping[str, Any], notes: list[str], path: str) -> dict[str, Any]:
  """Drops the 'module.' that nn.DataParallel puts before every key."""
  if state and all(k.startswith('module.') for k in state):
    notes.append(f"{os.path.basename(path)}: stripped the 'module.' prefix (a DataParallel state dict).")
    return {k[len('module.'):]: v for k, v in state.items()}
  return dict(state)


# ------------------------------------------------------------------------------------------------------------
# Converting one file


def _torch_shape(flax_shape, linear: bool) -> tuple[int, ...]:
  """The PyTorch weight shape that converts to a Flax kernel of `flax_shape`."""
  if len(flax_shape) == 4:  # (kh, kw, I, O)
    kh, kw, i, o = flax_shape
    return (o, i) if linear else (o, i, kh, kw)
  i, o = flax_shape  # a Dense kernel, also a 1x1 conv run as a Dense on channels
  return (o, i) if linear else (o, i, 1, 1)


def to_flax_kernel(w: np.ndarray, flax_shape) -> np.ndarray:
  """Conv2d OIHW -> HWIO, Linear (O, I) -> (I, O), and either one into a 1x1 conv or a Dense kernel."""
  if w.ndim == 4 and len(flax_shape) == 4:
    return w.transpose(2, 3, 1, 0)
  if w.ndim == 4:  # a 1x1 conv held as a Dense
    return w[:, :, 0, 0].T
  return w.T.reshape(flax_shape)  # a Linear, also into a (1, 1, I, O) conv kernel


def _overlap(state: Mapping[str, Any], layout: KeyLayout) -> int:
  return sum(layout.known(k) for k in state)


def pick_layout(state: Mapping[str, Any], layouts: Sequence[KeyLayout]) -> KeyLayout:
  """The layout that names most of the file's keys (the first one on a tie)."""
  return max(layouts, key=lambda l: _overlap(state, l))


def convert_state(state: Mapping[str, np.ndarray], layout: KeyLayout, layers: Sequence[Layer], target: Mapping,
                  *, path: str, role: str, notes: list[str]) -> dict[str, np.ndarray]:
  """Flat Flax arrays {dst/kernel, dst/bias} for `layers` of `state`, checked strictly against `target`
  (flat {dst/kernel: shape}); every problem goes into one UserError."""
  problems, flat = [], {}
  wanted = set()
  for layer in layers:
    for part, leaf in (('weight', 'kernel'), ('bias', 'bias')):
      key, dst = f'{layer.src}.{part}', f'{layer.dst}/{leaf}'
      wanted.add(key)
      want = tuple(target[dst])
      expected = _torch_shape(want, layer.linear) if leaf == 'kernel' else want
      if key not in state:
        problems.append(f'missing {key}')
      elif tuple(state[key].shape) != expected:
        problems.append(f'{key} has shape {weights.shape_str(state[key].shape)}, '
                        f'expected {weights.shape_str(expected)}')
      else:
        value = np.asarray(state[key], np.float32)
        flat[dst] = to_flax_kernel(value, want) if leaf == 'kernel' else value
  skipped = {}
  for key in state:
    if key in wanted:
      continue
    prefix = next((p for p, _ in layout.skipped if key.startswith(p)), None)
    if prefix is None:
      problems.append(f'unexpected {key}')
    else:
      skipped[prefix] = skipped.get(prefix, 0) + 1
  if problems:
    raise UserError(f"'{path}' ({role}) does not match the {layout.name} layout: {'; '.join(problems)}.")
  by_note: dict[str, list[str]] = {}
  for prefix, note in layout.skipped:
    if prefix in skipped:
      by_note.setdefault(note, []).append(prefix)
  for note, prefixes in by_note.items():
    count = sum(skipped[p] for p in prefixes)
    notes.append(f"{os.path.basename(path)}: skipped {', '.join(p + '*' for p in prefixes)} ({count} tensors; "
                 f'{note}).')
  return flat


# ------------------------------------------------------------------------------------------------------------
# VGG

# torchvision's VGG expects RGB in [0,1] normalised with the ImageNet mean/std (models.md §9).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TORCHVISION_WARNING = (
    "WARNING: {file} is torchvision's VGG19. Its ImageNet mean/std input normalisation is folded exactly into a "
    'synthesised 1x1 conv0 (diag(1/std), bias -mean/std), but it was trained with zero padding and floor '
    'pooling while jaxtickets runs the vgg_normalised layout (reflection padding, ceil pooling), and its '
    'activations are not rescaled like vgg_normalised\'s: features differ at the borders and in scale, so every '
    'loss weight (content, style, identity...) needs retuning; prefer vgg_normalised.pth for the published '
    'models.')


def _tap_of(name: str) -> str:
  """The shallowest feature tap whose encoder holds conv `name` (conv4_2 needs the r51 encoder)."""
  if name == 'conv0':
    return vgg_lib.TAPS[0]
  block, index = (int(p) for p in name[len('conv'):].split('_'))
  return vgg_lib.TAPS[block - 1 if index == 1 else block]


def vgg_shapes(depth: str) -> dict[str, tuple[int, ...]]:
  """Flat {name/kernel: shape} of the full-width VGG encoder up to `depth`."""
  module = vgg_lib.VGGEncoder(depth=depth)
  tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items()}


def convert_vgg(path, *, depth: str | None = None, notes: list[str] | None = None,
                model: str | None = None) -> tuple[dict, dict]:
  """(VGG params tree, source info) from a vgg_normalised, torchvision or LST VGG file.

  The file's own depth (the deepest relu<N>_1 its layers reach) is ported; with `depth` (what a model needs)
  a shallower file is refused and a deeper one truncated.
  """
  path, notes = os.fspath(path), notes if notes is not None else []
  state = strip_module_prefix(weights.read_state_dict(path), notes, path)
  layout = pick_layout(state, vgg_lib.TORCH_LAYOUTS)
  if not _overlap(state, layout):
    first = ', '.join(list(state)[:3])
    raise UserError(f"'{path}' (--vgg) matches no known VGG layout (vgg_normalised 0.weight, torchvision "
                    f'features.0.weight, LST conv1.weight); its first keys are {first}: pass a VGG19 file.')
  present = [l.dst for l in layout.layers if f'{l.src}.weight' in state or f'{l.src}.bias' in state]
  file_depth = max((_tap_of(n) for n in present), key=vgg_lib.TAPS.index, default=vgg_lib.TAPS[0])
  names = set(vgg_lib.vgg_layer_names(file_depth))
  layers = [l for l in layout.layers if l.dst in names]
  # file_depth covers every layer the file has: keys outside `layers` and the skipped tail are unexpected.
  flat = convert_state(state, layout, layers, vgg_shapes(file_depth), path=path, role='--vgg', notes=notes)
  if layout is vgg_lib.TORCHVISION_VGG19:
    flat['conv0/kernel'] = np.diag(1.0 / IMAGENET_STD).astype(np.float32)[None, None]
    flat['conv0/bias'] = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
    notes.append(TORCHVISION_WARNING.format(file=os.path.basename(path)))
  if depth is not None:
    if vgg_lib.TAPS.index(depth) > vgg_lib.TAPS.index(file_depth):
      who = f'the {model} model' if model else 'the model'
      raise UserError(f"'{path}' (--vgg) holds VGG layers only up to relu{file_depth[1]}_1, but {who} needs them "
                      f'up to relu{depth[1]}_1: pass a deeper VGG file (vgg_normalised.pth, or vgg_r51.pth for '
                      'LST).')
    keep = set(vgg_lib.vgg_layer_names(depth))
    flat = {k: v for k, v in flat.items() if k.split('/')[0] in keep}
    file_depth = depth
  info = {'path': os.path.abspath(path), 'sha256': weights.file_sha256(path), 'layout': layout.name,
          'depth': file_depth}
  info.update(_recognised(path, info['sha256'], model, 'vgg', notes))
  return weights.unflatten(flat), info


# ------------------------------------------------------------------------------------------------------------
# Whole models


def _recognised(path: str, sha256: str, model: str | None, role: str, notes: list[str]) -> dict:
  """The released file a hash names ({'release', 'verified'}; a note says it), refusing one of another slot."""
  from jaxtickets.weights import releases  # pylint: disable=import-outside-toplevel
  found = releases.recognise(path, sha256, model, role)
  if found:
    notes.append(f"{os.path.basename(path)}: recognised {found['release']} by its SHA-256 ({found['verified']}).")
  return found


def _check_width(model_config: Mapping, what: str) -> None:
  width = model_config.get('width', 1.0)
  if width != 1.0:
    raise UserError(f'{what} has width {width!r}, but released PyTorch weights are full width: set '
                    'config.model.width=1.0 to use them.')


def model_param_shapes(model) -> dict[str, tuple[int, ...]]:
  """Flat {group/.../kernel: shape} of the model's trainable params (no 'encoder' group)."""
  key = jax.random.key(0)
  vgg = jax.eval_shape(model.init_vgg, key)
  tree = jax.eval_shape(model.init, key, vgg)
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items() if not k.startswith('encoder/')}


def _parts(model) -> dict[str, tuple[Part, ...]]:
  """The model's released files by role ('decoder', 'transform'), from its own file's `torch_parts`."""
  if not model.torch_parts:
    raise UserError(f'The {model.name} model has no released PyTorch weights to port: omit --model for a '
                    'VGG-only port.')
  return {role: tuple(model.torch_parts.get(role, ())) for role in ('decoder', 'transform')}


def check_coverage(model, shapes: Mapping[str, Any]) -> None:
  """Raises RuntimeError when the model's `torch_parts` and its Flax params disagree (a renamed layer)."""
  filled = set()
  for part in (p for parts in _parts(model).values() for p in parts):
    for layer in part.layouts[0].layers:
      filled |= {f'{part.dst}/{layer.dst}/kernel', f'{part.dst}/{layer.dst}/bias'}
  unfilled, stray = sorted(set(shapes) - filled), sorted(filled - set(shapes))
  if unfilled or stray:
    raise RuntimeError(f'The PyTorch layout of {model.name} (its torch_parts) is out of date: Flax params not '
                       f'filled {unfilled}; layout entries the model lacks {stray}.')


def _part_target(shapes: Mapping[str, Any], dst: str) -> dict[str, Any]:
  n = len(dst) + 1
  return {k[n:]: v for k, v in shapes.items() if k.startswith(dst + '/')}


def _check_counts(name: str, parts: Sequence[Part], role: str, files: Sequence[str]) -> tuple[Part, ...]:
  """The model's `parts` for `role` ('--decoder', '--transform'), once the number of files fits them."""
  examples = ', '.join(p.example for p in parts)
  if len(files) != len(parts):
    if not parts:
      raise UserError(f'The {name} model has no {role} weights: drop {role}.')
    if not files:
      raise UserError(f'The {name} model needs {role}=FILE ({examples}) as well.')
    raise UserError(f'The {name} model needs {len(parts)} {role} file(s) ({examples}), got {len(files)}: pass '
                    f'each with its own {role}=FILE.')
  return tuple(parts)


def _assign(name: str, parts: Sequence[Part], files: Sequence[str], states: Sequence[Mapping], role: str):
  """Pairs each released file with the part whose layouts name most of its keys."""
  examples = ', '.join(p.example for p in parts)
  if len(parts) == 1:
    return [(parts[0], files[0], states[0])]
  pairs, taken = [], {}
  for f, state in zip(files, states):
    scores = [max(_overlap(state, l) for l in p.layouts) for p in parts]
    best = int(np.argmax(scores))
    if scores[best] == 0:
      raise UserError(f"'{f}' ({role}) matches none of the {name} {role} layouts ({examples}): check the file.")
    if best in taken:
      raise UserError(f"'{taken[best]}' and '{f}' ({role}) both look like {parts[best].example}: pass each of "
                      f'{examples} once.')
    taken[best] = f
    pairs.append((parts[best], f, state))
  return pairs


def convert(model: str | None = None, *, vgg, decoder=None, transforms: Sequence = (),
            model_config: Mapping | None = None) -> Ported:
  """Converts released PyTorch files into Flax params; with `vgg` alone (or no `model`) a VGG-only port."""
  notes: list[str] = []
  transforms = [os.fspath(t) for t in transforms]
  if model is None:
    if decoder is not None or transforms:
      raise UserError('Porting a --decoder or --transform needs --model=<name> (adain, sanet, lst, manet, adaattn '
                      'or mccnet).')
    tree, info = convert_vgg(vgg, notes=notes)
    return Ported(None, None, None, tree, {'vgg': info}, notes)
  cfg = {'name': model, **weights.RELEASED_MODEL, **dict(model_config or {})}
  _check_width(cfg, f'The {model} model to port into')
  flax_model = models.build(model, cfg)
  vgg_only = decoder is None and not transforms
  roles = (('--decoder', [] if decoder is None else [os.fspath(decoder)]), ('--transform', transforms))
  parts_of = {}
  if not vgg_only:  # the file counts are checked before any file is read
    by_role = _parts(flax_model)
    parts_of = {role: _check_counts(model, by_role[role[2:]], role, files) for role, files in roles}
  # Named by hash before anything is read: a released file in another model's slot stops here.
  hashes = {f: weights.file_sha256(f) for _, files in roles for f in files if os.path.isfile(f)}
  found = {f: _recognised(f, hashes[f], model, role[2:], notes) for role, files in roles for f in files
           if f in hashes}
  depth = max(flax_model.encoder_depth, flax_model.loss_depth, key=vgg_lib.TAPS.index)
  vgg_tree, vgg_info = convert_vgg(vgg, depth=depth, notes=notes, model=model)
  sources = {'vgg': vgg_info}
  if vgg_only:
    return Ported(model, cfg, None, vgg_tree, sources, notes)
  shapes = model_param_shapes(flax_model)
  check_coverage(flax_model, shapes)
  flat: dict[str, np.ndarray] = {}
  for role, files in roles:
    parts = parts_of[role]
    states = [strip_module_prefix(weights.read_state_dict(f), notes, f) for f in files]
    for part, f, state in _assign(model, parts, files, states, role):
      layout = pick_layout(state, part.layouts)
      got = convert_state(state, layout, layout.layers, _part_target(shapes, part.dst), path=f, role=role,
                          notes=notes)
      flat.update({f'{part.dst}/{k}': v for k, v in got.items()})
      sources.setdefault(role[2:], []).append({'path': os.path.abspath(f), 'sha256': hashes[f],
                                                'layout': layout.name, 'into': part.dst, **found.get(f, {})})
  return Ported(model, cfg, weights.unflatten(flat), vgg_tree, sources, notes)


# ------------------------------------------------------------------------------------------------------------
# Ported directories: writing one, and config.model.init_from


def port(model: str | None = None, *, vgg, decoder=None, transforms: Sequence = (), out,
         model_config: Mapping | None = None, overwrite: bool = False) -> Ported:
  """`convert` then `weights.save_ported`: what scripts/port_weights.py runs."""
  ported = convert(model, vgg=vgg, decoder=decoder, transforms=transforms, model_config=model_config)
  weights.save_ported(ported, out, overwrite=overwrite)
  return ported


def load_init_from(path, model, params: Mapping) -> dict:
  """`params` (a model's theta_0 tree) with every group the ported directory holds replaced by its weights.

  For config.model.init_from: the released decoder/transform become theta_0; an 'encoder' group (a trainable
  VGG copy) stays as given. Model name, width, groups and every shape are checked.
  """
  path = os.fspath(path)
  if model.width != 1.0:
    raise UserError(f"config.model.init_from '{path}' holds released full-width weights, but config.model.width is "
                    f'{model.width!r}: set config.model.width=1.0.')
  ported = weights.load_ported(path)
  if ported.model not in (None, model.name):
    raise UserError(f"config.model.init_from '{path}' holds {ported.model} weights, but config.model.name is "
                    f"{model.name!r}: port the {model.name} files or change the model.")
  if ported.params is None:
    raise UserError(f"config.model.init_from '{path}' holds VGG weights only: port the model's decoder/transform "
                    'too (--decoder, --transform), or use it as config.model.vgg_weights.')
  have, want = weights.flatten(ported.params), weights.flatten(dict(params))
  needed = {k: v for k, v in want.items() if not k.startswith('encoder/')}
  problems = [f'missing {k}' for k in needed if k not in have]
  problems += [f'unexpected {k}' for k in have if k not in want]
  problems += [f'{k} has shape {weights.shape_str(have[k].shape)}, expected {weights.shape_str(np.shape(v))}'
               for k, v in needed.items() if k in have and tuple(have[k].shape) != tuple(np.shape(v))]
  if problems:
    raise UserError(f"config.model.init_from '{path}' does not fit the {model.name} model: {'; '.join(problems)}.")
  flat = {k: (np.asarray(have[k], np.float32) if k in needed else v) for k, v in want.items()}
  return weights.unflatten(flat)
