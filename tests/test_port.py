"""Tests for jaxtickets.weights.port: readers, strict key checks, VGG layouts, AdaIN parity with a PyTorch formulation,
ported directories (vgg_weights / init_from) and scripts/port_weights.py.

The PyTorch models here (and in tests/test_port_<model>.py, which import these helpers) are written for the
tests from the facts of models.md (§1.1, §1.2, §2), independently of the Flax models. Tests that need torch are
marked `needs_torch`; the others (layouts, .safetensors and .npz files) run without it.
"""

from __future__ import annotations  # annotations name torch types, which a run without torch never evaluates

import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from jaxtickets import models
from jaxtickets.weights import port
from jaxtickets.weights import files as weights
from jaxtickets.errors import UserError
from jaxtickets.models.vgg import vgg_layer_names

try:
  import torch
  nn, F = torch.nn, torch.nn.functional
except ImportError:  # only the tests marked needs_torch are skipped
  torch = nn = F = None
needs_torch = pytest.mark.skipif(torch is None, reason='needs PyTorch: pip install "jaxtickets[port]"')
# The formulations' base class: without torch their classes are still defined (never built), so a test file
# imports and its tests are skipped one by one rather than the file vanishing from the collection.
Module = nn.Module if nn is not None else object

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# max |jax - torch| relative to the output's range: float32 rounding accumulated through a whole network stays
# well below it, while a misported tensor (a transposed kernel, a missed bias, the wrong padding) is far above.
TOL = 1e-5

# ----------------------------------------------------------------------------------------------------------
# PyTorch formulations (models.md facts)


def vgg_normalised() -> nn.Sequential:
  """The 53-module vgg_normalised Sequential: 1x1 conv, (reflect pad, 3x3 conv, ReLU) x16, ceil-mode pools."""
  plan = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512, 512, 512, 512]
  mods, cin = [nn.Conv2d(3, 3, 1)], 3
  for item in plan:
    if item == 'M':
      mods.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
    else:
      mods += [nn.ReflectionPad2d(1), nn.Conv2d(cin, item, 3), nn.ReLU()]
      cin = item
  return nn.Sequential(*mods)


ENC_SLICES = ((0, 4), (4, 11), (11, 18), (18, 31), (31, 44))  # enc_1..enc_5 -> relu1_1..relu5_1


def encode(vgg: nn.Sequential, x, n: int = 5) -> list:
  """[relu1_1, ..., relu{n}_1] of the vgg_normalised Sequential."""
  feats = []
  for lo, hi in ENC_SLICES[:n]:
    x = vgg[lo:hi](x)
    feats.append(x)
  return feats


def decoder_layers(cin: int = 512) -> list:
  """The shared decoder's 29 modules (models.md §1.2)."""
  plan = [256, 'U', 256, 256, 256, 128, 'U', 128, 64, 'U', 64, 3]
  mods = []
  for item in plan:
    if item == 'U':
      mods.append(nn.Upsample(scale_factor=2, mode='nearest'))
    else:
      mods += [nn.ReflectionPad2d(1), nn.Conv2d(cin, item, 3), nn.ReLU()]
      cin = item
  return mods[:-1]  # no activation on the output


def mean_std(x, eps=1e-5):
  """Per-sample, per-channel mean and sqrt(unbiased var + eps), as (N, C, 1, 1)."""
  n, c = x.shape[:2]
  flat = x.reshape(n, c, -1)
  return flat.mean(2).reshape(n, c, 1, 1), (flat.var(2) + eps).sqrt().reshape(n, c, 1, 1)


def norm(x):
  mean, std = mean_std(x)
  return (x - mean) / std


def he_init(module: nn.Module, seed: int) -> nn.Module:
  """Random weights that keep the activation scale through a deep ReLU stack (N(0, 2/fan_in)), small biases."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)
  return module


def images(n: int, size: int, seed: int):
  """(NHWC float32 numpy, NCHW torch) of n random images."""
  x = np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)
  return x, torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def save_torch(module_or_state, path) -> str:
  state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
  torch.save(state, path)
  return str(path)


def save_arrays(module_or_state, path) -> str:
  """A state dict as .safetensors or .npz (by the extension), written with numpy: no torch needed to read it."""
  state = module_or_state.state_dict() if hasattr(module_or_state, 'state_dict') else module_or_state
  arrays = {k: np.ascontiguousarray(v.detach().numpy() if hasattr(v, 'detach') else v) for k, v in state.items()}
  if str(path).endswith('.npz'):
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, str(path))
  return str(path)


def flax_kernel(weight):
  """A torch weight as its Flax kernel: Conv2d OIHW -> HWIO, Linear (O, I) -> (I, O) (written out for the tests)."""
  w = weight.detach().numpy() if hasattr(weight, 'detach') else np.asarray(weight)
  return w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T


def relative_diff(jax_out, torch_out) -> float:
  """max |jax - torch| / range(torch), comparing NHWC with NCHW."""
  want = torch_out.detach().numpy().transpose(0, 2, 3, 1)
  got = np.asarray(jax_out)
  assert got.shape == want.shape and got.dtype == np.float32
  return float(np.abs(got - want).max() / (want.max() - want.min()))


def released(name: str, **config):
  """The Flax model `name` as released PyTorch weights fit it: full width, a frozen encoder."""
  return models.build(name, {**weights.RELEASED_MODEL, **config})


def stylize_jax(ported: weights.Ported, content, style, **config):
  """The Flax model's stylize with the ported params, in float32 at the highest matmul precision."""
  model = released(ported.model, **config)
  # One compiled program costs less CPU than op-by-op dispatch; alpha stays the static default 1.0.
  fn = jax.jit(lambda p, v, c, s: model.stylize(p, v, c, s))
  with jax.default_matmul_precision('highest'):
    return fn(ported.params, ported.vgg, content, style)


def check_parity(name: str, jax_out, torch_out) -> float:
  diff = relative_diff(jax_out, torch_out)
  print(f'{name}: max |jax - torch| / output range = {diff:.2e}')
  assert diff <= TOL, f'{name}: {diff:.2e}'
  return diff


@pytest.fixture(scope='module')
def vgg_file(tmp_path_factory):
  """A random full vgg_normalised.pth (53 modules, all 34 tensors) and its torch module."""
  torch.manual_seed(0)
  vgg = he_init(vgg_normalised(), 0).eval()
  path = save_torch(vgg, tmp_path_factory.mktemp('vgg') / 'vgg_normalised.pth')
  return vgg, path


@pytest.fixture(scope='module')
def vgg_safetensors(vgg_file, tmp_path_factory):
  """The same VGG as .safetensors (so scripts/port_weights.py runs without importing torch) and its module."""
  return vgg_file[0], save_arrays(vgg_file[0], tmp_path_factory.mktemp('vgg') / 'vgg_normalised.safetensors')


def port_with_cli(tmp_path, model: str, vgg, decoder, transforms=()) -> weights.Ported:
  """Runs scripts/port_weights.py for a whole model and reads its directory back."""
  out = tmp_path / f'{model}_ported'
  run = _cli(f'--model={model}', f'--vgg={vgg}', f'--decoder={decoder}', *[f'--transform={t}' for t in transforms],
             f'--out={out}')
  assert run.returncode == 0, run.stderr
  assert f'--config.model.init_from={out}' in run.stdout
  ported = weights.load_ported(out)
  assert ported.model == model and ported.model_config['width'] == 1.0
  shapes = {k: tuple(v.shape) for k, v in weights.flatten(ported.params).items()}
  assert shapes == port.model_param_shapes(released(model))  # every param, each in its shape
  return ported


def check_ported_vgg(ported: weights.Ported, vgg) -> None:
  """The ported VGG's first 3x3 conv is vgg_normalised's '2.weight' (module 2), transposed to HWIO."""
  np.testing.assert_array_equal(ported.vgg['conv1_1']['kernel'], flax_kernel(vgg[2].weight))
  np.testing.assert_array_equal(ported.vgg['conv1_1']['bias'], vgg[2].bias.detach().numpy())


# ----------------------------------------------------------------------------------------------------------
# Readers


@needs_torch
def test_read_formats_agree_and_strip_module_prefix(tmp_path):
  state = {'a.weight': torch.randn(4, 3, 3, 3), 'a.bias': torch.randn(4)}
  arrays = {k: v.numpy() for k, v in state.items()}
  save_torch({f'module.{k}': v for k, v in state.items()}, tmp_path / 'w.pth')
  from safetensors.numpy import save_file
  save_file(arrays, str(tmp_path / 'w.safetensors'))
  np.savez(tmp_path / 'w.npz', **arrays)
  torch.save({'state_dict': {k: v.half() for k, v in state.items()}}, tmp_path / 'nested.pt')
  notes = []
  got = port.strip_module_prefix(weights.read_state_dict(tmp_path / 'w.pth'), notes, 'w.pth')
  assert notes == ["w.pth: stripped the 'module.' prefix (a DataParallel state dict)."]
  for other in ('w.safetensors', 'w.npz'):
    assert weights.read_state_dict(tmp_path / other).keys() == got.keys()
    for k in got:
      np.testing.assert_array_equal(weights.read_state_dict(tmp_path / other)[k], got[k])
  nested = weights.read_state_dict(tmp_path / 'nested.pt')
  assert nested['a.bias'].dtype == np.float32
  np.testing.assert_allclose(nested['a.bias'], arrays['a.bias'], atol=1e-2)


@pytest.mark.parametrize('name,content', [pytest.param('junk.pth', b'<html>not found</html>\n', marks=needs_torch),
                                          ('junk.safetensors', b'hello'), ('junk.npz', b'hello world')])
def test_non_checkpoint_file_is_one_sentence(tmp_path, name, content):
  (tmp_path / name).write_bytes(content)
  with pytest.raises(UserError, match=rf"^'.*{name}' is not a .*: pass the checkpoint file itself") as e:
    weights.read_state_dict(tmp_path / name)
  assert '\n' not in str(e.value)


@needs_torch
def test_pickled_objects_are_refused_safely(tmp_path):
  import argparse
  torch.save({'args': argparse.Namespace(lr=1), 'state_dict': {'x': torch.zeros(1)}}, tmp_path / 'ckpt.pth')
  with pytest.raises(UserError, match=r"holds Python objects besides tensors, .* save only the state dict"):
    weights.read_state_dict(tmp_path / 'ckpt.pth')


@needs_torch
def test_truncated_checkpoint(tmp_path, vgg_file):
  data = open(vgg_file[1], 'rb').read()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 2])
  with pytest.raises(UserError, match=r"'.*cut\.pth' is not a readable PyTorch checkpoint"):
    port.convert(vgg=tmp_path / 'cut.pth')
  with pytest.raises(UserError, match=r"Weights file '.*nope\.pth' does not exist"):
    port.convert(vgg=tmp_path / 'nope.pth')


def test_missing_torch_names_the_extra(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch now raises ImportError
  (tmp_path / 'w.pth').write_bytes(b'x')
  with pytest.raises(UserError, match=r'needs PyTorch: pip install "jaxtickets\[port\]"'):
    weights.read_state_dict(tmp_path / 'w.pth')


# ----------------------------------------------------------------------------------------------------------
# VGG layouts


@needs_torch
def test_vgg_normalised_features_match(vgg_file):
  """Every tap r11..r51 of the ported VGG equals the PyTorch Sequential's, at an odd size (ceil pooling)."""
  vgg, path = vgg_file
  ported = port.convert(vgg=path)
  assert ported.params is None and ported.sources['vgg']['depth'] == 'r51'
  assert sorted(ported.vgg) == sorted(vgg_layer_names('r51'))
  assert any('skipped 45.*' in n for n in ported.notes)
  from jaxtickets.models.vgg import VGGEncoder
  x, xt = images(1, 36, seed=1)
  with jax.default_matmul_precision('highest'):
    taps = jax.jit(VGGEncoder('r51').apply)({'params': ported.vgg}, x)
  with torch.no_grad():
    want = encode(vgg, xt)
  for tap, w in zip(('r11', 'r21', 'r31', 'r41', 'r51'), want):
    assert relative_diff(taps[tap], w) <= TOL, tap


@needs_torch
def test_torchvision_conv0_is_the_imagenet_normalisation(tmp_path):
  """features.N land in conv1_1..conv5_1; the synthesised conv0 is exactly (x - mean) / std; the classifier and
  conv5_2..5_4 are skipped with notes, and a warning says the features differ."""
  torch.manual_seed(0)
  feats = vgg_normalised()[1:]  # drop the 1x1 conv: the same convs as torchvision, other indices
  convs = [m for m in feats if isinstance(m, nn.Conv2d)]
  idx = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
  state = {}
  for i, conv in zip(idx, convs):
    state[f'features.{i}.weight'], state[f'features.{i}.bias'] = conv.weight, conv.bias
  state.update({'classifier.0.weight': torch.zeros(8, 4), 'classifier.0.bias': torch.zeros(8)})
  path = save_torch(state, tmp_path / 'vgg19-dcbb9e9d.pth')
  ported = port.convert(vgg=path)
  assert ported.sources['vgg']['layout'] == 'torchvision vgg19'
  x = np.random.default_rng(0).uniform(size=(1, 5, 5, 3)).astype(np.float32)
  k, b = ported.vgg['conv0']['kernel'], ported.vgg['conv0']['bias']
  np.testing.assert_allclose(x @ k[0, 0] + b, (x - port.IMAGENET_MEAN) / port.IMAGENET_STD, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(ported.vgg['conv2_1']['kernel'], state['features.5.weight'].detach().numpy()
                                .transpose(2, 3, 1, 0))
  text = ' '.join(ported.notes)
  assert 'skipped classifier.*' in text and 'skipped features.30.*' in text
  assert "WARNING: vgg19-dcbb9e9d.pth is torchvision's VGG19" in text and 'retuning' in text


@needs_torch
def test_lst_vgg_depths(tmp_path, vgg_file):
  """LST's conv1..conv14 (vgg_r51) and conv1..conv10 (vgg_r41): a model needing r51 refuses the r41 file."""
  vgg, _ = vgg_file
  convs = [m for m in vgg if isinstance(m, nn.Conv2d)]
  r51 = {}
  for i, conv in enumerate(convs[:14], start=1):
    r51[f'conv{i}.weight'], r51[f'conv{i}.bias'] = conv.weight, conv.bias
  r41 = {k: v for k, v in r51.items() if int(k.split('.')[0][4:]) <= 10}
  p51 = port.convert(vgg=save_torch(r51, tmp_path / 'vgg_r51.pth'))
  full = port.convert(vgg=vgg_file[1])
  for name in vgg_layer_names('r51'):
    np.testing.assert_array_equal(p51.vgg[name]['kernel'], full.vgg[name]['kernel'])
  p41 = port.convert(vgg=save_torch(r41, tmp_path / 'vgg_r41.pth'))
  assert p41.sources['vgg']['depth'] == 'r41' and 'conv5_1' not in p41.vgg
  with pytest.raises(UserError, match=r"'.*vgg_r41\.pth' \(--vgg\) holds VGG layers only up to relu4_1, but the "
                                      r'lst model needs them up to relu5_1'):
    port.convert('lst', vgg=tmp_path / 'vgg_r41.pth')


def _state(vgg):
  return {k: v.clone() for k, v in vgg.state_dict().items()}


@needs_torch
def test_missing_extra_and_wrong_shape_in_one_error(tmp_path, vgg_file):
  state = _state(vgg_file[0])
  del state['2.weight']
  state['foo.bar'] = torch.zeros(1)
  state['5.weight'] = torch.zeros(64, 3, 3, 3)
  path = save_torch(state, tmp_path / 'vgg_normalised.pth')
  with pytest.raises(UserError) as e:
    port.convert(vgg=path)
  assert str(e.value) == (f"'{path}' (--vgg) does not match the vgg_normalised layout: missing 2.weight; "
                          '5.weight has shape (64,3,3,3), expected (64,64,3,3); unexpected foo.bar.')


@needs_torch
@pytest.mark.parametrize('fmt', ['safetensors', 'npz'])
def test_missing_key_other_formats(tmp_path, vgg_file, fmt):
  arrays = {k: v.numpy() for k, v in _state(vgg_file[0]).items() if k != '42.bias'}
  path = str(tmp_path / f'vgg.{fmt}')
  if fmt == 'npz':
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, path)
  with pytest.raises(UserError, match=r'does not match the vgg_normalised layout: missing 42\.bias\.$'):
    port.convert(vgg=path)


@needs_torch
def test_unknown_layout(tmp_path):
  path = save_torch({'x.weight': torch.zeros(2)}, tmp_path / 'other.pth')
  with pytest.raises(UserError, match=r'matches no known VGG layout .* its first keys are x\.weight'):
    port.convert(vgg=path)


# ----------------------------------------------------------------------------------------------------------
# AdaIN


def torch_adain(vgg):
  """naoto0804's test path: vgg[:31] -> AdaIN -> decoder (models.md §2); a class made on call, as it needs torch."""

  class TorchAdaIN(nn.Module):

    def __init__(self):
      super().__init__()
      self.vgg = vgg
      self.decoder = nn.Sequential(*decoder_layers())

    def forward(self, content, style):
      fc, fs = encode(self.vgg, content, 4)[-1], encode(self.vgg, style, 4)[-1]
      (mc, sc), (ms, ss) = mean_std(fc), mean_std(fs)
      return self.decoder(ss * (fc - mc) / sc + ms)

  return TorchAdaIN()


@pytest.fixture(scope='module')
def adain_files(vgg_file, tmp_path_factory):
  torch.manual_seed(1)
  net = torch_adain(vgg_file[0]).eval()
  path = save_torch(net.decoder, tmp_path_factory.mktemp('adain') / 'decoder.pth')
  return net, vgg_file[1], path


@needs_torch
def test_adain_parity(adain_files):
  net, vgg_path, dec_path = adain_files
  ported = port.convert('adain', vgg=vgg_path, decoder=dec_path)
  assert sorted(ported.params) == ['decoder'] and 'conv5_1' not in ported.vgg  # AdaIN reads VGG to relu4_1
  c, ct = images(2, 32, seed=2)
  s, st = images(2, 32, seed=3)
  with torch.no_grad():
    want = net(ct, st)
  check_parity('adain', stylize_jax(ported, c, s), want)


@needs_torch
@pytest.mark.parametrize('fmt', ['safetensors', 'npz'])
def test_adain_parity_other_formats(adain_files, tmp_path, fmt):
  """The same decoder read from .safetensors / .npz (no torch needed to read them) gives the same params."""
  net, vgg_path, dec_path = adain_files
  arrays = {k: v.numpy() for k, v in net.decoder.state_dict().items()}
  path = str(tmp_path / f'decoder.{fmt}')
  if fmt == 'npz':
    np.savez(path, **arrays)
  else:
    from safetensors.numpy import save_file
    save_file(arrays, path)
  a = port.convert('adain', vgg=vgg_path, decoder=path)
  b = port.convert('adain', vgg=vgg_path, decoder=dec_path)
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@needs_torch
def test_lst_decoder_layout_is_accepted_for_the_shared_decoder(adain_files, tmp_path):
  net, vgg_path, dec_path = adain_files
  names = [k for k in net.decoder.state_dict() if k.endswith('.weight')]
  lst = {}
  for i, key in enumerate(names, start=11):
    prefix = key[:-len('.weight')]
    lst[f'conv{i}.weight'], lst[f'conv{i}.bias'] = net.decoder.state_dict()[key], net.decoder.state_dict()[
        f'{prefix}.bias']
  a = port.convert('adain', vgg=vgg_path, decoder=save_torch(lst, tmp_path / 'dec_r41.pth'))
  b = port.convert('adain', vgg=vgg_path, decoder=dec_path)
  assert a.sources['decoder'][0]['layout'] == 'LST dec_r41'
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


@needs_torch
def test_adain_errors(adain_files, tmp_path):
  net, vgg_path, dec_path = adain_files
  with pytest.raises(UserError, match='The adain model has no --transform weights: drop --transform.'):
    port.convert('adain', vgg=vgg_path, decoder=dec_path, transforms=[dec_path])
  with pytest.raises(UserError, match=r'The sanet model needs --transform=FILE \(transformer_iter_500000\.pth\)'):
    port.convert('sanet', vgg=vgg_path, decoder=dec_path)
  with pytest.raises(UserError, match=r'width 0\.5, but released PyTorch weights are full width'):
    port.convert('adain', vgg=vgg_path, decoder=dec_path, model_config={'width': 0.5})
  state = dict(net.decoder.state_dict())
  state['28.weight'] = torch.zeros(3, 64, 1, 1)
  del state['1.bias']
  path = save_torch(state, tmp_path / 'bad_decoder.pth')
  with pytest.raises(UserError, match=r"\(--decoder\) does not match the decoder \(Sequential\) layout: missing "
                                      r'1\.bias; 28\.weight has shape \(3,64,1,1\), expected \(3,64,3,3\)\.$'):
    port.convert('adain', vgg=vgg_path, decoder=path)


@pytest.mark.parametrize('name', models.model_names())
def test_model_layout_covers_exactly_its_flax_params(name):
  """Each registered model's own PyTorch layout (torch_parts) fills exactly its Flax params: a renamed layer
  fails here, and a model without a layout cannot be registered unnoticed."""
  model = released(name)
  assert set(model.torch_parts) == {'decoder', 'transform'} and model.torch_parts['decoder']
  shapes = port.model_param_shapes(model)
  port.check_coverage(model, shapes)
  groups = {k.split('/')[0] for k in shapes}
  assert groups == {'decoder', 'transform'} if model.torch_parts['transform'] else groups == {'decoder'}


def test_coverage_check_names_what_the_layout_misses():
  model = released('sanet')
  shapes = port.model_param_shapes(model)
  with pytest.raises(RuntimeError, match=r"layout of sanet \(its torch_parts\) is out of date: Flax params not "
                                         r"filled \['transform/x/kernel'\]; layout entries the model lacks \[\]"):
    port.check_coverage(model, {**shapes, 'transform/x/kernel': (1, 1)})
  del shapes['decoder/conv1_1/bias']
  with pytest.raises(RuntimeError, match=r"not filled \[\]; layout entries the model lacks \['decoder/conv1_1/bias'\]"):
    port.check_coverage(model, shapes)


def test_vgg_files_in_safetensors_and_npz_port_without_torch(tmp_path):
  """vgg_normalised keys (written here with numpy, from models.md §1.1) in both torch-free formats: each 3x3
  kernel lands transposed to HWIO in its conv, and both files give the same params."""
  rng = np.random.default_rng(0)
  plan = [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 256, 'M', 512, 512, 512, 512, 'M', 512]
  state, index, cin = {'0.weight': rng.standard_normal((3, 3, 1, 1)), '0.bias': rng.standard_normal(3)}, 1, 3
  for item in plan:  # (reflect pad, conv, relu) or a pool: the Sequential's module indices
    if item == 'M':
      index += 1
      continue
    state[f'{index + 1}.weight'] = rng.standard_normal((item, cin, 3, 3))
    state[f'{index + 1}.bias'] = rng.standard_normal(item)
    index, cin = index + 3, item
  state = {k: v.astype(np.float32) for k, v in state.items()}
  a = port.convert(vgg=save_arrays(state, tmp_path / 'vgg.safetensors'))
  b = port.convert(vgg=save_arrays(state, tmp_path / 'vgg.npz'))
  assert a.sources['vgg']['layout'] == 'vgg_normalised' and a.sources['vgg']['depth'] == 'r51'
  jax.tree.map(np.testing.assert_array_equal, a.vgg, b.vgg)
  np.testing.assert_array_equal(a.vgg['conv2_1']['kernel'], state['9.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(a.vgg['conv5_1']['bias'], state['42.bias'])


# ----------------------------------------------------------------------------------------------------------
# Ported directories: config.model.vgg_weights and config.model.init_from


@needs_torch
def test_saved_directory_feeds_vgg_weights_and_init_from(adain_files, tmp_path):
  net, vgg_path, dec_path = adain_files
  ported = port.port('adain', vgg=vgg_path, decoder=dec_path, out=tmp_path / 'adain')
  loaded = weights.load_ported(tmp_path / 'adain')
  assert loaded.model == 'adain' and loaded.model_config['width'] == 1.0
  assert loaded.model_config['train_encoder'] is False  # released weights: the reference's frozen encoder
  assert loaded.sources['decoder'][0]['path'] == os.path.abspath(dec_path)
  assert loaded.params is not None and loaded.vgg is not None
  with pytest.raises(UserError, match='already holds ported weights'):
    port.port('adain', vgg=vgg_path, decoder=dec_path, out=tmp_path / 'adain')

  model = released('adain')
  expected = jax.eval_shape(model.init_vgg, jax.random.key(0))
  vgg = weights.load_vgg_weights(tmp_path / 'adain', expected)
  jax.tree.map(np.testing.assert_array_equal, vgg, ported.vgg)
  vgg_only = weights.load_vgg_weights(tmp_path / 'adain' / 'params', expected)  # the Orbax dir itself
  jax.tree.map(np.testing.assert_array_equal, vgg_only, ported.vgg)

  trained = released('adain', train_encoder=True)
  theta = {'encoder': vgg, 'decoder': jax.tree.map(np.zeros_like, ported.params['decoder'])}  # init's structure
  got = port.load_init_from(tmp_path / 'adain', trained, theta)
  jax.tree.map(np.testing.assert_array_equal, got['decoder'], ported.params['decoder'])
  jax.tree.map(np.testing.assert_array_equal, got['encoder'], theta['encoder'])  # the VGG copy stays
  bare = port.load_init_from(tmp_path / 'adain' / 'params', trained, theta)  # the Orbax dir itself
  jax.tree.map(np.testing.assert_array_equal, bare['decoder'], ported.params['decoder'])


@needs_torch
def test_vgg_only_directory(vgg_file, tmp_path):
  port.port(vgg=vgg_file[1], out=tmp_path / 'vgg')
  loaded = weights.load_ported(tmp_path / 'vgg')
  assert loaded.model is None and loaded.params is None
  model = released('sanet')  # reads VGG up to relu5_1
  got = weights.load_vgg_weights(tmp_path / 'vgg', jax.eval_shape(model.init_vgg, jax.random.key(0)))
  np.testing.assert_array_equal(got['conv1_1']['kernel'], loaded.vgg['conv1_1']['kernel'])
  with pytest.raises(UserError, match='holds VGG weights only'):
    port.load_init_from(tmp_path / 'vgg', model, {})


@needs_torch
def test_init_from_checks(adain_files, tmp_path):
  net, vgg_path, dec_path = adain_files
  port.port('adain', vgg=vgg_path, decoder=dec_path, out=tmp_path / 'adain')
  cfg = lambda **kw: ml_collections.ConfigDict({'name': 'adain', 'width': 1.0, 'train_encoder': False, **kw})
  from jaxtickets.models import adain
  narrow = adain.AdaIN(cfg(width=0.5))
  with pytest.raises(UserError, match=r"config\.model\.width is 0\.5: set config\.model\.width=1\.0\."):
    port.load_init_from(tmp_path / 'adain', narrow, {})
  model = adain.AdaIN(cfg())
  model.name = 'sanet'  # as if the config named another model
  with pytest.raises(UserError, match=r"holds adain weights, but config\.model\.name is 'sanet'"):
    port.load_init_from(tmp_path / 'adain', model, {})
  model = adain.AdaIN(cfg())
  theta = {'decoder': jax.tree.map(np.zeros_like, port.convert('adain', vgg=vgg_path, decoder=dec_path)
                                   .params['decoder'])}
  theta['decoder']['conv1_1']['kernel'] = np.zeros((3, 3, 64, 4), np.float32)
  theta['decoder']['extra'] = {'kernel': np.zeros(1, np.float32)}
  with pytest.raises(UserError, match=r"does not fit the adain model: missing decoder/extra/kernel; "
                                      r'decoder/conv1_1/kernel has shape \(3,3,64,3\), expected \(3,3,64,4\)\.'):
    port.load_init_from(tmp_path / 'adain', model, theta)
  with pytest.raises(UserError, match='is not a directory of ported weights'):
    port.load_init_from(tmp_path / 'nowhere', model, theta)


# ----------------------------------------------------------------------------------------------------------
# scripts/port_weights.py


def _cli(*args):
  return subprocess.run([sys.executable, os.path.join(REPO, 'scripts', 'port_weights.py'), *args],
                        capture_output=True, text=True, cwd=REPO, env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
                        timeout=300)


@pytest.mark.e2e
@needs_torch
def test_cli_vgg_only_and_full_model(adain_files, tmp_path):
  net, vgg_path, dec_path = adain_files
  run = _cli(f'--vgg={vgg_path}', f'--out={tmp_path / "vgg"}')
  assert run.returncode == 0, run.stderr
  assert f'--config.model.vgg_weights={tmp_path / "vgg"}' in run.stdout and 'skipped 45.*' in run.stderr
  run = _cli('--model=adain', f'--vgg={vgg_path}', f'--decoder={dec_path}', f'--out={tmp_path / "adain"}')
  assert run.returncode == 0, run.stderr
  assert f'--config.model.init_from={tmp_path / "adain"}' in run.stdout
  loaded = weights.load_ported(tmp_path / 'adain')
  assert loaded.model == 'adain' and sorted(loaded.params) == ['decoder']
  want = port.convert('adain', vgg=vgg_path, decoder=dec_path)
  jax.tree.map(np.testing.assert_array_equal, loaded.params, want.params)
  jax.tree.map(np.testing.assert_array_equal, loaded.vgg, want.vgg)
