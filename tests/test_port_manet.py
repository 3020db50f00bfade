"""MANet: released-layout files (with a DataParallel 'module.' prefix) ported and compared with a PyTorch
formulation of models.md §5 (CSA, channel-wise SSA, CA on r41, shared decoder)."""

import numpy as np
import pytest

from jaxtickets.weights import port

import test_port as tp  # shared PyTorch formulations
from test_port import vgg_file, vgg_safetensors  # pylint: disable=unused-import  (fixtures)
from test_port_sanet import SANetBlock  # CSA and CA are SANet blocks

torch, nn, norm = tp.torch, tp.nn, tp.norm
needs_torch = tp.needs_torch  # every test here runs the PyTorch formulation


class SSA(tp.Module):
  """Channel-wise style self-attention: A = softmax_last(f(s) g(s)^T), O[c] = sum_c' A[c', c] h(norm s)[c']."""

  def __init__(self, c=512):
    super().__init__()
    self.f, self.g, self.h, self.out_conv = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, style):
    b, c, h, w = style.shape
    p, r = self.f(style).reshape(b, c, -1), self.g(style).reshape(b, c, -1)
    attn = torch.softmax(torch.bmm(p, r.permute(0, 2, 1)), dim=-1)  # (b, C, C')
    v = self.h(norm(style)).reshape(b, c, -1)
    o = torch.bmm(attn.permute(0, 2, 1), v).reshape(b, c, h, w)  # the transposed attention
    return self.out_conv(o) + style


class MAModule(tp.Module):
  def __init__(self):
    super().__init__()
    self.CSA, self.SSA, self.CA = SANetBlock(), SSA(), SANetBlock()  # pylint: disable=invalid-name

  def forward(self, content, style):
    return self.CA(self.CSA(content, content), self.SSA(style))


@needs_torch
@pytest.mark.e2e  # a full-width PyTorch build: the developer loop keeps AdaIN's parity (test_port.py)
def test_manet_parity(vgg_file, tmp_path):
  vgg, vgg_path = vgg_file
  torch.manual_seed(20)
  ma, decoder = MAModule().eval(), nn.Sequential(*tp.decoder_layers()).eval()
  state = {f'module.{k}': v for k, v in ma.state_dict().items()}
  ma_path = tp.save_torch(state, tmp_path / 'ma_module_iter_160000.pth')
  dec_path = tp.save_torch(decoder, tmp_path / 'decoder_iter_160000.pth')
  ported = port.convert('manet', vgg=vgg_path, decoder=dec_path, transforms=[ma_path])
  assert any("stripped the 'module.' prefix" in n for n in ported.notes)
  c, ct = tp.images(2, 32, seed=21)
  s, st = tp.images(2, 32, seed=22)
  with torch.no_grad():
    want = decoder(ma(tp.encode(vgg, ct, 4)[-1], tp.encode(vgg, st, 4)[-1]))
  tp.check_parity('manet', tp.stylize_jax(ported, c, s), want)


@needs_torch
@pytest.mark.e2e
def test_manet_cli(vgg_safetensors, tmp_path):
  """scripts/port_weights.py on files in the released key layout (ma_module with 'module.'): read back, each
  kernel is the torch weight transposed."""
  vgg, vgg_path = vgg_safetensors
  torch.manual_seed(23)
  ma, decoder = MAModule(), nn.Sequential(*tp.decoder_layers())
  state = {f'module.{k}': v for k, v in ma.state_dict().items()}
  ported = tp.port_with_cli(tmp_path, 'manet', vgg_path,
                            tp.save_arrays(decoder, tmp_path / 'decoder_iter_160000.safetensors'),
                            [tp.save_arrays(state, tmp_path / 'ma_module_iter_160000.safetensors')])
  assert any("stripped the 'module.' prefix" in n for n in ported.notes)
  tp.check_ported_vgg(ported, vgg)
  got = ported.params
  np.testing.assert_array_equal(got['decoder']['conv1_1']['kernel'], tp.flax_kernel(decoder[28].weight))
  np.testing.assert_array_equal(got['transform']['SSA']['g']['kernel'], tp.flax_kernel(ma.SSA.g.weight))
  np.testing.assert_array_equal(got['transform']['CA']['out_conv']['bias'], ma.CA.out_conv.bias.detach().numpy())
