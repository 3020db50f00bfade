"""PyTorch state dicts -> Flax params: the VGG19 variants and the released decoders/transforms of the six models.

Readers: .pth/.pt (and any other name) through torch, imported only then (the optional extra `port`);
.safetensors and .npz without torch. Every file is matched against a known key layout (models.md §1.3, §2.6,
§3.6, §4.6, §5.6, §6.6, §7.6, §9) and checked strictly: missing keys, unexpected keys and shape mismatches
come back together in one UserError. Conversions: Conv2d OIHW -> HWIO, Linear (O, I) -> (I, O), and a 1x1
conv to whatever the Flax model holds (a (1, 1, I, O) conv kernel or an (I, O) Dense kernel).

A ported directory (`save`) holds model.json ({"model", "model_config", "sources"}) and params, an Orbax params
checkpoint of {"params": {group: tree}, "vgg": tree} (or {"vgg": tree} alone for a VGG-only port).
`weights.load_vgg_weights` reads its 'vgg' part; `load_init_from` its 'params' part.
"""

import dataclasses
import hashlib
import os
import pickle
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxtickets.errors import UserError

MODEL_JSON = 'model.json'
PARAMS_DIR = 'params'
_INSTALL = 'pip install "jaxtickets[port]"'

# ------------------------------------------------------------------------------------------------------------
# Reading state dicts


def _fail(path: str, what: str, err: BaseException | None = None) -> UserError:
  """One sentence naming an unreadable file (with the first line of the reader's reason, if any)."""
  reason = ''
  if err is not None:
    first = (str(err).strip().splitlines() or [''])[0].split('. ')[0]  # the first sentence
    first = first if len(first) <= 120 else first[:117] + '...'
    reason = f' ({type(err).__name__}: {first})' if first else f' ({type(err).__name__})'
  return UserError(f"'{path}' is not {what}{reason}: pass the checkpoint file itself (not a web page, a "
                   'text file or a partly downloaded file).')


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
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"Reading '{path}' needs PyTorch: {_INSTALL} (or convert the file to .safetensors or .npz "
                    'where torch is installed).') from None
  with open(path, 'rb') as f:
    head = f.read(4)
  if not (head.startswith(b'PK\x03\x04') or head[:1] == b'\x80'):  # a zip archive or a legacy pickle
    raise _fail(path, f'a PyTorch checkpoint (it starts with {head!r}, not a zip archive or a pickle)')
  try:
    obj = torch.load(path, map_location='cpu', weights_only=True)
  except pickle.UnpicklingError as err:
    if 'weights_only' not in str(err):
      raise _fail(path, 'a readable PyTorch checkpoint', err) from None
    raise UserError(f"'{path}' holds Python objects besides tensors, which the safe loader (torch.load with "
                    'weights_only=True) refuses: load it in PyTorch, save only the state dict '
                    '(torch.save(model.state_dict(), FILE)) and port that file.') from None
  except Exception as err:  # torch raises many types for a damaged file (RuntimeError, EOFError, ...)
    raise _fail(path, 'a readable PyTorch checkpoint', err) from None
  return {str(k): _numpy(v) for k, v in _tensor_dict(obj, path).items()}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"Reading '{path}' needs the safetensors package: {_INSTALL}.") from None
  try:
    return dict(load_file(path))
  except Exception as err:  # SafetensorError, or numpy's complaint about a dtype it lacks (bfloat16)
    raise _fail(path, 'a readable .safetensors file', err) from None


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    npz = np.load(path, allow_pickle=False)
    if not hasattr(npz, 'files'):
      raise ValueError('it holds a single array')
    with npz:
      return {k: npz[k] for k in npz.files}
  except (ValueError, OSError, EOFError) as err:
    raise _fail(path, 'a readable .npz archive of named arrays', err) from None
  except Exception as err:  # zipfile.BadZipFile and friends
    raise _fail(path, 'a readable .npz archive of named arrays', err) from None


def read_state_dict(path) -> dict[str, np.ndarray]:
  """Named arrays of a .pth/.pt (torch), .safetensors or .npz file, floating ones as float32 numpy."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    what = 'is a directory' if os.path.isdir(path) else 'does not exist'
    raise UserError(f"Weights file '{path}' {what}: pass the path of a .pth, .safetensors or .npz file.")
  if path.endswith('.safetensors'):
    state = _read_safetensors(path)
  elif path.endswith('.npz'):
    state = _read_npz(path)
  else:
    state = _read_torch(path)
  if not state:
    raise UserError(f"'{path}' holds no tensors: pass a state dict of the model's weights.")
  return {k: (v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) else v) for k, v in state.items()}


def strip_module_prefix(state: Mapping[str, Any], notes: list[str], path: str) -> dict[str, Any]:
  """Drops the 'module.' that nn.DataParallel puts before every key."""
  if state and all(k.startswith('module.') for k in state):
    notes.append(f"{os.path.basename(path)}: stripped the 'module.' prefix (a DataParallel state dict).")
    return {k[len('module.'):]: v for k, v in state.items()}
  return dict(state)


# ------------------------------------------------------------------------------------------------------------
# Key layouts


@dataclasses.dataclass(frozen=True)
class Layer:
  """One PyTorch layer: `src` is its key prefix (src.weight, src.bias), `dst` its Flax path ('a/b')."""
  src: str
  dst: str
  linear: bool = False  # nn.Linear (O, I) rather than nn.Conv2d (O, I, kh, kw)


@dataclasses.dataclass(frozen=True)
class Layout:
  """A file's key layout: its layers plus known harmless extras (key prefix, note) that are skipped."""
  name: str
  layers: tuple[Layer, ...]
  skipped: tuple[tuple[str, str], ...] = ()

  def known(self, key: str) -> bool:
    return (any(key in (f'{l.src}.weight', f'{l.src}.bias') for l in self.layers)
            or any(key.startswith(p) for p, _ in self.skipped))


# The VGG conv layers in order, as vgg.VGGEncoder names them, up to conv5_1 (no model reads past relu5_1).
_VGG_NAMES = ('conv0', 'conv1_1', 'conv1_2', 'conv2_1', 'conv2_2', 'conv3_1', 'conv3_2', 'conv3_3', 'conv3_4',
              'conv4_1', 'conv4_2', 'conv4_3', 'conv4_4', 'conv5_1')
_VGG_TAIL = 'conv5_2..conv5_4: no model reads past relu5_1'


def _vgg_layout(name, srcs, tail, skipped=()):
  names = _VGG_NAMES[len(_VGG_NAMES) - len(srcs):]  # torchvision has no conv0
  tail_note = tuple((f'{p}.', _VGG_TAIL) for p in tail)
  return Layout(name, tuple(Layer(s, d) for s, d in zip(srcs, names)), tail_note + tuple(skipped))


VGG_NORMALISED = _vgg_layout('vgg_normalised', ('0', '2', '5', '9', '12', '16', '19', '22', '25', '29', '32',
                                                '35', '38', '42'), ('45', '48', '51'))
TORCHVISION_VGG19 = _vgg_layout(
    'torchvision vgg19', tuple(f'features.{i}' for i in (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28)),
    ('features.30', 'features.32', 'features.34'),
    (('classifier.', "torchvision's fully connected classifier: not part of the encoder"),))
LST_VGG = _vgg_layout('LST vgg_r41/vgg_r51', tuple(f'conv{i}' for i in range(1, 15)), ())
VGG_LAYOUTS = (VGG_NORMALISED, TORCHVISION_VGG19, LST_VGG)

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

# The decoder of AdaIN, SANet, MANet, MCCNet (Sequential keys) and LST's dec_r41 (attributes), models.md §1.2.
_DECODER_NAMES = ('conv4_1', 'conv3_4', 'conv3_3', 'conv3_2', 'conv3_1', 'conv2_2', 'conv2_1', 'conv1_2',
                  'conv1_1')
DECODER = Layout('decoder (Sequential)', tuple(
    Layer(str(i), d) for i, d in zip((1, 5, 8, 11, 14, 18, 21, 25, 28), _DECODER_NAMES)))
LST_DECODER = Layout('LST dec_r41', tuple(Layer(f'conv{i}', d) for i, d in zip(range(11, 20), _DECODER_NAMES)))


def _block(prefix: str, dst: str, convs=('f', 'g', 'h', 'out_conv')) -> tuple[Layer, ...]:
  return tuple(Layer(f'{prefix}.{c}' if prefix else c, f'{dst}/{c}' if dst else c) for c in convs)


SANET_TRANSFORM = Layout('SANet transformer', _block('sanet4_1', 'sanet4_1') + _block('sanet5_1', 'sanet5_1')
                         + (Layer('merge_conv', 'merge_conv'),))
MCCNET_TRANSFORM = Layout(
    'MCCNet mcc_module', _block('MCCN', '', ('f', 'g', 'out_conv')) + (Layer('MCCN.fc', 'fc', linear=True),),
    (('MCCN.h.', 'MCCNet defines MCCN.h but its forward pass never uses it'),))


def _lst_cnn(name: str) -> tuple[Layer, ...]:
  convs = tuple(Layer(f'{name}.convs.{i}', f'{name}/convs_{i}') for i in (0, 2, 4))
  return convs + (Layer(f'{name}.fc', f'{name}/fc', linear=True),)


LST_TRANSFORM = Layout('LST r41 (MulLayer)', _lst_cnn('snet') + _lst_cnn('cnet')
                       + (Layer('compress', 'compress'), Layer('unzip', 'unzip')))
MANET_TRANSFORM = Layout('MANet ma_module', _block('CSA', 'CSA') + _block('SSA', 'SSA') + _block('CA', 'CA'))
ADAATTN_DECODER = Layout('AdaAttN decoder', (Layer('decoder_layer_1.1', 'decoder_layer_1_1'),) + tuple(
    Layer(f'decoder_layer_2.{i}', f'decoder_layer_2_{i}') for i in (1, 4, 7, 10, 14, 17, 21, 24)))
ADAATTN_TRANSFORMER = Layout('AdaAttN transformer', _block('attn_adain_4_1', 'attn_adain_4_1', 'fgh')
                             + _block('attn_adain_5_1', 'attn_adain_5_1', 'fgh')
                             + (Layer('merge_conv', 'merge_conv'),))
ADAATTN_3 = Layout('AdaAttN adaattn_3', _block('', '', 'fgh'))


@dataclasses.dataclass(frozen=True)
class Part:
  """One released file of a model: where it lands in params ('decoder', 'transform/transformer') and the key
  layouts it may come in (the best-matching one is checked)."""
  dst: str
  layouts: tuple[Layout, ...]
  example: str  # the released file name, for messages


_DEC = Part('decoder', (DECODER, LST_DECODER), 'decoder.pth')
MODEL_PARTS: dict[str, dict[str, tuple[Part, ...]]] = {
    'adain': {'decoder': (_DEC,), 'transform': ()},
    'sanet': {'decoder': (dataclasses.replace(_DEC, example='decoder_iter_500000.pth'),),
              'transform': (Part('transform', (SANET_TRANSFORM,), 'transformer_iter_500000.pth'),)},
    'lst': {'decoder': (Part('decoder', (LST_DECODER, DECODER), 'dec_r41.pth'),),
            'transform': (Part('transform', (LST_TRANSFORM,), 'r41.pth'),)},
    'manet': {'decoder': (dataclasses.replace(_DEC, example='decoder_iter_160000.pth'),),
              'transform': (Part('transform', (MANET_TRANSFORM,), 'ma_module_iter_160000.pth'),)},
    'adaattn': {'decoder': (Part('decoder', (ADAATTN_DECODER,), 'latest_net_decoder.pth'),),
                'transform': (Part('transform/transformer', (ADAATTN_TRANSFORMER,), 'latest_net_transformer.pth'),
                              Part('transform/adaattn_3', (ADAATTN_3,), 'latest_net_adaattn_3.pth'))},
    'mccnet': {'decoder': (dataclasses.replace(_DEC, example='decoder_iter_160000.pth'),),
               'transform': (Part('transform', (MCCNET_TRANSFORM,), 'mcc_module_iter_160000.pth'),)},
}


# ------------------------------------------------------------------------------------------------------------
# Converting one file


def _shape(shape) -> str:
  return '(' + ','.join(str(int(d)) for d in shape) + ')'


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


def _overlap(state: Mapping[str, Any], layout: Layout) -> int:
  return sum(layout.known(k) for k in state)


def pick_layout(state: Mapping[str, Any], layouts: Sequence[Layout]) -> Layout:
  """The layout that names most of the file's keys (the first one on a tie)."""
  return max(layouts, key=lambda l: _overlap(state, l))


def convert_state(state: Mapping[str, np.ndarray], layout: Layout, layers: Sequence[Layer], target: Mapping,
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
        problems.append(f'{key} has shape {_shape(state[key].shape)}, expected {_shape(expected)}')
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


def _tap_of(name: str) -> str:
  """The shallowest feature tap whose encoder holds conv `name` (conv4_2 needs the r51 encoder)."""
  from jaxtickets.models import vgg as vgg_lib  # pylint: disable=import-outside-toplevel
  if name == 'conv0':
    return vgg_lib.TAPS[0]
  block, index = (int(p) for p in name[len('conv'):].split('_'))
  return vgg_lib.TAPS[block - 1 if index == 1 else block]


def vgg_shapes(depth: str) -> dict[str, tuple[int, ...]]:
  """Flat {name/kernel: shape} of the full-width VGG encoder up to `depth`."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  from jaxtickets.models import vgg as vgg_lib  # pylint: disable=import-outside-toplevel
  module = vgg_lib.VGGEncoder(depth=depth)
  tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items()}


def convert_vgg(path, *, depth: str | None = None, notes: list[str] | None = None,
                model: str | None = None) -> tuple[dict, dict]:
  """(VGG params tree, source info) from a vgg_normalised, torchvision or LST VGG file.

  The file's own depth (the deepest relu<N>_1 its layers reach) is ported; with `depth` (what a model needs)
  a shallower file is refused and a deeper one truncated.
  """
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  from jaxtickets.models import vgg as vgg_lib  # pylint: disable=import-outside-toplevel
  path, notes = os.fspath(path), notes if notes is not None else []
  state = strip_module_prefix(read_state_dict(path), notes, path)
  layout = pick_layout(state, VGG_LAYOUTS)
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
  if layout is TORCHVISION_VGG19:
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
  info = {'path': os.path.abspath(path), 'sha256': _sha256(path), 'layout': layout.name, 'depth': file_depth}
  return weights.unflatten(flat), info


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# Whole models


@dataclasses.dataclass
class Ported:
  """A converted model: what `save` writes and what model.stylize takes (params, vgg)."""
  model: str | None
  model_config: dict | None
  params: dict | None  # {group: tree}; None for a VGG-only port
  vgg: dict
  sources: dict
  notes: list[str]


def _check_width(model_config: Mapping, what: str) -> None:
  width = model_config.get('width', 1.0)
  if width != 1.0:
    raise UserError(f'{what} has width {width!r}, but released PyTorch weights are full width: set '
                    'config.model.width=1.0 to use them.')


def build_model(name: str, model_config: Mapping | None = None):
  """The StyleModel `name` at full width with the reference's frozen encoder (train_encoder False)."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  from jaxtickets import models  # pylint: disable=import-outside-toplevel
  cfg = {'name': name, 'width': 1.0, 'train_encoder': False, **dict(model_config or {})}
  _check_width(cfg, f'The {name} model to port into')
  return models.get_model(name)(ml_collections.ConfigDict(cfg)), cfg


def model_param_shapes(model) -> dict[str, tuple[int, ...]]:
  """Flat {group/.../kernel: shape} of the model's trainable params (no 'encoder' group)."""
  import jax  # pylint: disable=import-outside-toplevel
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  key = jax.random.key(0)
  vgg = jax.eval_shape(model.init_vgg, key)
  tree = jax.eval_shape(model.init, key, vgg)
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items() if not k.startswith('encoder/')}


def check_coverage(name: str, shapes: Mapping[str, Any]) -> None:
  """Raises RuntimeError when MODEL_PARTS and the Flax model disagree (a model renamed a layer)."""
  filled = set()
  for part in (p for parts in MODEL_PARTS[name].values() for p in parts):
    layout = part.layouts[0]
    for layer in layout.layers:
      filled |= {f'{part.dst}/{layer.dst}/kernel', f'{part.dst}/{layer.dst}/bias'}
  unfilled, stray = sorted(set(shapes) - filled), sorted(filled - set(shapes))
  if unfilled or stray:
    raise RuntimeError(f'jaxtickets.port layouts are out of date for {name}: Flax params not filled '
                       f'{unfilled}; layout entries the model lacks {stray}.')


def _part_target(shapes: Mapping[str, Any], dst: str) -> dict[str, Any]:
  n = len(dst) + 1
  return {k[n:]: v for k, v in shapes.items() if k.startswith(dst + '/')}


def _check_counts(name: str, role: str, files: Sequence[str]) -> tuple[Part, ...]:
  """The model's parts for `role` ('--decoder', '--transform'), once the number of files fits them."""
  parts = MODEL_PARTS[name][role[2:]]
  examples = ', '.join(p.example for p in parts)
  if len(files) != len(parts):
    if not parts:
      raise UserError(f'The {name} model has no {role} weights: drop {role}.')
    if not files:
      raise UserError(f'The {name} model needs {role}=FILE ({examples}) as well.')
    raise UserError(f'The {name} model needs {len(parts)} {role} file(s) ({examples}), got {len(files)}: pass '
                    f'each with its own {role}=FILE.')
  return parts


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
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  notes: list[str] = []
  transforms = [os.fspath(t) for t in transforms]
  if model is None:
    if decoder is not None or transforms:
      raise UserError('Porting a --decoder or --transform needs --model=<name> (adain, sanet, lst, manet, adaattn '
                      'or mccnet).')
    tree, info = convert_vgg(vgg, notes=notes)
    return Ported(None, None, None, tree, {'vgg': info}, notes)
  flax_model, cfg = build_model(model, model_config)
  vgg_only = decoder is None and not transforms
  roles = (('--decoder', [] if decoder is None else [os.fspath(decoder)]), ('--transform', transforms))
  parts_of = {} if vgg_only else {role: _check_counts(model, role, files) for role, files in roles}
  depth = max(flax_model.encoder_depth, flax_model.loss_depth, key=['r11', 'r21', 'r31', 'r41', 'r51'].index)
  vgg_tree, vgg_info = convert_vgg(vgg, depth=depth, notes=notes, model=model)
  sources = {'vgg': vgg_info}
  if vgg_only:
    return Ported(model, cfg, None, vgg_tree, sources, notes)
  shapes = model_param_shapes(flax_model)
  check_coverage(model, shapes)
  flat: dict[str, np.ndarray] = {}
  for role, files in roles:
    parts = parts_of[role]
    states = [strip_module_prefix(read_state_dict(f), notes, f) for f in files]
    for part, f, state in _assign(model, parts, files, states, role):
      layout = pick_layout(state, part.layouts)
      got = convert_state(state, layout, layout.layers, _part_target(shapes, part.dst), path=f, role=role,
                          notes=notes)
      flat.update({f'{part.dst}/{k}': v for k, v in got.items()})
      sources.setdefault(role[2:], []).append({'path': os.path.abspath(f), 'sha256': _sha256(f),
                                                'layout': layout.name, 'into': part.dst})
  return Ported(model, cfg, weights.unflatten(flat), vgg_tree, sources, notes)


# ------------------------------------------------------------------------------------------------------------
# Ported directories


def save(ported: Ported, out, *, overwrite: bool = False) -> None:
  """Writes out/model.json and out/params ({"params": ..., "vgg": ...} or {"vgg": ...})."""
  from jaxtickets import checkpoint  # pylint: disable=import-outside-toplevel
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


def port(model: str | None = None, *, vgg, decoder=None, transforms: Sequence = (), out,
         model_config: Mapping | None = None, overwrite: bool = False) -> Ported:
  """`convert` then `save`: what scripts/port_weights.py runs."""
  ported = convert(model, vgg=vgg, decoder=decoder, transforms=transforms, model_config=model_config)
  save(ported, out, overwrite=overwrite)
  return ported


def _params_dir(path: str) -> str | None:
  """The Orbax params directory of a ported directory (or the path itself when it is one)."""
  from jaxtickets import checkpoint  # pylint: disable=import-outside-toplevel
  # A ported directory's params/ is a whole checkpoint; a plain checkpoint's params/ is only its item folder.
  for candidate in (os.path.join(path, PARAMS_DIR), path):
    if checkpoint.params_exist(candidate):
      return candidate
  if os.path.exists(os.path.join(path, MODEL_JSON)):
    return os.path.join(path, PARAMS_DIR)  # damaged: load_params names the file
  return None


def load_ported(path) -> tuple[dict, dict]:
  """(model.json contents or {}, the params tree) of a directory written by `save`."""
  from jaxtickets import checkpoint  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  params_dir = _params_dir(path) if os.path.isdir(path) else None
  if params_dir is None:
    raise UserError(f"'{path}' is not a directory of ported weights (model.json + params/): write one with "
                    'python scripts/port_weights.py --model=<name> --vgg=FILE ... --out=DIR.')
  meta_path = os.path.join(os.path.dirname(params_dir) if params_dir != path else path, MODEL_JSON)
  meta = checkpoint.load_json(meta_path) if os.path.exists(meta_path) else {}
  return meta, checkpoint.load_params(params_dir)


def load_init_from(path, model, params: Mapping) -> dict:
  """`params` (a model's theta_0 tree) with every group the ported directory holds replaced by its weights.

  For config.model.init_from: the released decoder/transform become theta_0; an 'encoder' group (a trainable
  VGG copy) stays as given. Model name, width, groups and every shape are checked.
  """
  from jaxtickets import weights  # pylint: disable=import-outside-toplevel
  path = os.fspath(path)
  if model.width != 1.0:
    raise UserError(f"config.model.init_from '{path}' holds released full-width weights, but config.model.width is "
                    f'{model.width!r}: set config.model.width=1.0.')
  meta, tree = load_ported(path)
  if meta.get('model') not in (None, model.name):
    raise UserError(f"config.model.init_from '{path}' holds {meta['model']} weights, but config.model.name is "
                    f"{model.name!r}: port the {model.name} files or change the model.")
  if 'params' not in tree:
    raise UserError(f"config.model.init_from '{path}' holds VGG weights only: port the model's decoder/transform "
                    'too (--decoder, --transform), or use it as config.model.vgg_weights.')
  have, want = weights.flatten(tree['params']), weights.flatten(dict(params))
  needed = {k: v for k, v in want.items() if not k.startswith('encoder/')}
  problems = [f'missing {k}' for k in needed if k not in have]
  problems += [f'unexpected {k}' for k in have if k not in want]
  problems += [f'{k} has shape {_shape(have[k].shape)}, expected {_shape(np.shape(v))}'
               for k, v in needed.items() if k in have and tuple(have[k].shape) != tuple(np.shape(v))]
  if problems:
    raise UserError(f"config.model.init_from '{path}' does not fit the {model.name} model: {'; '.join(problems)}.")
  flat = {k: (np.asarray(have[k], np.float32) if k in needed else v) for k, v in want.items()}
  return weights.unflatten(flat)
