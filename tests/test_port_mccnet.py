"""MCCNet: released-layout files (with the unused MCCN.h.* kept in the file, the decoder via .npz) ported and
compared with a PyTorch formulation of models.md §7 (channel correlation on r41, shared decoder)."""

import numpy as np
import pytest

from jaxtickets.weights import port
from jaxtickets.errors import UserError

import test_port as tp  # shared PyTorch formulations
from test_port import vgg_file, vgg_safetensors  # pylint: disable=unused-import  (fixtures)

torch, nn, norm = tp.torch, tp.nn, tp.norm
needs_torch = tp.needs_torch  # every test here runs the PyTorch formulation


class MCCN(tp.Module):
  """out_conv(f(norm c) * fc(w)) + c with w[b, c] = sum_n G^2 / sum_n G, G = g(norm s); h is never used."""

  def __init__(self, c=512):
    super().__init__()
    self.f, self.g, self.h, self.out_conv = (nn.Conv2d(c, c, 1) for _ in range(4))
    self.fc = nn.Linear(c, c)

  def forward(self, content, style):
    b, c = content.shape[:2]
    g = self.g(norm(style)).reshape(b, c, -1)
    w = (g * g).sum(-1) / g.sum(-1)
    return self.out_conv(self.f(norm(content)) * self.fc(w).reshape(b, c, 1, 1)) + content


class MCCModule(tp.Module):
  def __init__(self):
    super().__init__()
    self.MCCN = MCCN()  # pylint: disable=invalid-name


@needs_torch
@pytest.mark.e2e  # a full-width PyTorch build: the developer loop keeps AdaIN's parity (test_port.py)
def test_mccnet_parity(vgg_file, tmp_path):
  vgg, vgg_path = vgg_file
  torch.manual_seed(30)
  mcc, decoder = MCCModule().eval(), nn.Sequential(*tp.decoder_layers()).eval()
  with torch.no_grad():  # sum_n G = N * bias_g: keep every channel's denominator away from 0
    bias = mcc.MCCN.g.bias
    bias.copy_(torch.sign(bias) * (0.02 + bias.abs()))
  mcc_path = tp.save_torch(mcc, tmp_path / 'mcc_module_iter_160000.pth')
  np.savez(tmp_path / 'decoder_iter_160000.npz', **{k: v.numpy() for k, v in decoder.state_dict().items()})
  ported = port.convert('mccnet', vgg=vgg_path, decoder=tmp_path / 'decoder_iter_160000.npz', transforms=[mcc_path])
  assert any('skipped MCCN.h.* (2 tensors' in n for n in ported.notes)
  assert 'h' not in ported.params['transform']
  np.testing.assert_array_equal(ported.params['transform']['fc']['kernel'], mcc.MCCN.fc.weight.detach().numpy().T)
  c, ct = tp.images(2, 32, seed=31)
  s, st = tp.images(2, 32, seed=32)
  with torch.no_grad():
    want = decoder(mcc.MCCN(tp.encode(vgg, ct, 4)[-1], tp.encode(vgg, st, 4)[-1]))
  tp.check_parity('mccnet', tp.stylize_jax(ported, c, s), want)


@needs_torch
@pytest.mark.e2e
def test_mccnet_cli(vgg_safetensors, tmp_path):
  """scripts/port_weights.py on files in the released key layout (the decoder as .npz, MCCN.h kept): read back,
  each kernel is the torch weight transposed."""
  vgg, vgg_path = vgg_safetensors
  torch.manual_seed(33)
  mcc, decoder = MCCModule(), nn.Sequential(*tp.decoder_layers())
  ported = tp.port_with_cli(tmp_path, 'mccnet', vgg_path, tp.save_arrays(decoder, tmp_path / 'decoder_iter_160000.npz'),
                            [tp.save_arrays(mcc, tmp_path / 'mcc_module_iter_160000.safetensors')])
  assert any('skipped MCCN.h.* (2 tensors' in n for n in ported.notes)
  tp.check_ported_vgg(ported, vgg)
  got = ported.params
  np.testing.assert_array_equal(got['decoder']['conv2_1']['kernel'], tp.flax_kernel(decoder[21].weight))
  np.testing.assert_array_equal(got['transform']['fc']['kernel'], tp.flax_kernel(mcc.MCCN.fc.weight))
  np.testing.assert_array_equal(got['transform']['out_conv']['kernel'], tp.flax_kernel(mcc.MCCN.out_conv.weight))


@needs_torch
def test_mccnet_linear_fc_shape_is_checked(vgg_file, tmp_path):
  torch.manual_seed(0)
  state = MCCModule().state_dict()
  state['MCCN.fc.weight'] = torch.zeros(512, 512, 1, 1)  # a conv where the reference has a Linear
  del state['MCCN.g.bias']
  path = tp.save_torch(state, tmp_path / 'mcc.pth')
  dec = tp.save_torch(nn.Sequential(*tp.decoder_layers()), tmp_path / 'decoder.pth')
  with pytest.raises(UserError, match=r'does not match the MCCNet mcc_module layout: missing MCCN\.g\.bias; '
                                      r'MCCN\.fc\.weight has shape \(512,512,1,1\), expected \(512,512\)\.$'):
    port.convert('mccnet', vgg=vgg_file[1], decoder=dec, transforms=[path])
