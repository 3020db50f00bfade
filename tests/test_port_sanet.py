"""SANet: released-layout files (transformer via .safetensors) ported and compared with a PyTorch formulation of
models.md §3 (SANet blocks on r41 and r51, merge conv, shared decoder)."""

import numpy as np
import pytest

from jaxtickets.weights import port
from jaxtickets.errors import UserError

import test_port as tp  # shared PyTorch formulations
from test_port import vgg_file, vgg_safetensors  # pylint: disable=unused-import  (fixtures)

torch, nn, F, norm = tp.torch, tp.nn, tp.F, tp.norm
needs_torch = tp.needs_torch  # every test here runs the PyTorch formulation


class SANetBlock(tp.Module):
  """out_conv(h(Fs) softmax_j(<f(norm Fc)_i, g(norm Fs)_j>)^T) + Fc."""

  def __init__(self, c=512):
    super().__init__()
    self.f, self.g, self.h, self.out_conv = (nn.Conv2d(c, c, 1) for _ in range(4))

  def forward(self, content, style):
    b, c, hc, wc = content.shape
    q = self.f(norm(content)).reshape(b, c, -1).permute(0, 2, 1)  # (b, Nc, C)
    k = self.g(norm(style)).reshape(b, c, -1)  # (b, C, Ns)
    v = self.h(style).reshape(b, c, -1)
    attn = torch.softmax(torch.bmm(q, k), dim=-1)  # over style positions, no 1/sqrt(d)
    o = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, hc, wc)
    return self.out_conv(o) + content


class Transform(tp.Module):
  def __init__(self):
    super().__init__()
    self.sanet4_1, self.sanet5_1 = SANetBlock(), SANetBlock()
    self.merge_conv_pad = nn.ReflectionPad2d(1)
    self.merge_conv = nn.Conv2d(512, 512, 3)

  def forward(self, c41, s41, c51, s51):
    up = F.interpolate(self.sanet5_1(c51, s51), scale_factor=2, mode='nearest')
    return self.merge_conv(self.merge_conv_pad(self.sanet4_1(c41, s41) + up))


@needs_torch
@pytest.mark.e2e  # a full-width PyTorch build: the developer loop keeps AdaIN's parity (test_port.py)
def test_sanet_parity(vgg_file, tmp_path):
  vgg, vgg_path = vgg_file
  torch.manual_seed(10)
  transform, decoder = Transform().eval(), nn.Sequential(*tp.decoder_layers()).eval()
  from safetensors.torch import save_file
  save_file(transform.state_dict(), str(tmp_path / 'transformer_iter_500000.safetensors'))
  dec_path = tp.save_torch(decoder, tmp_path / 'decoder_iter_500000.pth')
  ported = port.convert('sanet', vgg=vgg_path, decoder=dec_path,
                        transforms=[tmp_path / 'transformer_iter_500000.safetensors'])
  assert sorted(ported.params) == ['decoder', 'transform']
  np.testing.assert_array_equal(ported.params['transform']['sanet5_1']['g']['kernel'][0, 0],
                                transform.sanet5_1.g.weight.detach().numpy()[:, :, 0, 0].T)
  c, ct = tp.images(2, 32, seed=11)
  s, st = tp.images(2, 32, seed=12)
  with torch.no_grad():
    fc, fs = tp.encode(vgg, ct), tp.encode(vgg, st)
    want = decoder(transform(fc[3], fs[3], fc[4], fs[4]))
  tp.check_parity('sanet', tp.stylize_jax(ported, c, s), want)


@needs_torch
@pytest.mark.e2e
def test_sanet_cli(vgg_safetensors, tmp_path):
  """scripts/port_weights.py on files in the released key layout: read back, each kernel is the torch weight
  transposed."""
  vgg, vgg_path = vgg_safetensors
  torch.manual_seed(13)
  transform, decoder = Transform(), nn.Sequential(*tp.decoder_layers())
  ported = tp.port_with_cli(tmp_path, 'sanet', vgg_path,
                            tp.save_arrays(decoder, tmp_path / 'decoder_iter_500000.safetensors'),
                            [tp.save_arrays(transform, tmp_path / 'transformer_iter_500000.safetensors')])
  tp.check_ported_vgg(ported, vgg)
  got = ported.params
  np.testing.assert_array_equal(got['decoder']['conv4_1']['kernel'], tp.flax_kernel(decoder[1].weight))
  np.testing.assert_array_equal(got['transform']['sanet5_1']['h']['kernel'],
                                tp.flax_kernel(transform.sanet5_1.h.weight))
  np.testing.assert_array_equal(got['transform']['merge_conv']['bias'], transform.merge_conv.bias.detach().numpy())


@needs_torch
def test_sanet_transform_wrong_shape(vgg_file, tmp_path):
  torch.manual_seed(0)
  state = Transform().state_dict()
  state['sanet4_1.out_conv.weight'] = torch.zeros(512, 512, 3, 3)
  path = tp.save_torch(state, tmp_path / 'transformer.pth')
  dec = tp.save_torch(nn.Sequential(*tp.decoder_layers()), tmp_path / 'decoder.pth')
  with pytest.raises(UserError, match=r"'.*transformer\.pth' \(--transform\) does not match the SANet "
                                           r'transformer layout: sanet4_1\.out_conv\.weight has shape '
                                           r'\(512,512,3,3\), expected \(512,512,1,1\)\.$'):
    port.convert('sanet', vgg=vgg_file[1], decoder=dec, transforms=[path])
