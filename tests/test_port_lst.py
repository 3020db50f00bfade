"""LST (r41): vgg_r51 / dec_r41 / r41.pth layouts ported and compared with a PyTorch formulation of models.md §4
(attribute-named WCT encoder with floor pooling, MulLayer with zero-padded CNNs, decoder4)."""

import numpy as np
import pytest

from jaxtickets.weights import port

import test_port as tp  # shared PyTorch formulations

torch, nn, F = tp.torch, tp.nn, tp.F
needs_torch = tp.needs_torch  # every test here runs the PyTorch formulation

_ENC = ((3, 3, 1), (3, 64, 3), (64, 64, 3), (64, 128, 3), (128, 128, 3), (128, 256, 3), (256, 256, 3),
        (256, 256, 3), (256, 256, 3), (256, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3), (512, 512, 3))
_DEC = ((512, 256), (256, 256), (256, 256), (256, 256), (256, 128), (128, 128), (128, 64), (64, 64), (64, 3))


class Encoder5(tp.Module):
  """conv1 (1x1) .. conv14; reflect pad before each 3x3 conv, floor-mode max pools; forward returns r41."""

  def __init__(self):
    super().__init__()
    for i, (cin, cout, k) in enumerate(_ENC, start=1):
      setattr(self, f'conv{i}', nn.Conv2d(cin, cout, k))

  def forward(self, x):
    x = self.conv1(x)
    for i in range(2, 11):  # encoder4: conv2..conv10, pools after conv3, conv5, conv9
      x = F.relu(getattr(self, f'conv{i}')(F.pad(x, (1, 1, 1, 1), mode='reflect')))
      if i in (3, 5, 9):
        x = F.max_pool2d(x, 2, 2)
    return x


class Decoder4(tp.Module):
  def __init__(self):
    super().__init__()
    for i, (cin, cout) in enumerate(_DEC, start=11):
      setattr(self, f'conv{i}', nn.Conv2d(cin, cout, 3))

  def forward(self, x):
    for i in range(11, 20):
      x = getattr(self, f'conv{i}')(F.pad(x, (1, 1, 1, 1), mode='reflect'))
      if i < 19:
        x = F.relu(x)
      if i in (11, 15, 17):
        x = F.interpolate(x, scale_factor=2, mode='nearest')
    return x


class CNN(tp.Module):
  """Three zero-padded 3x3 convs to 32 channels, M = y y^T / (h w), fc(vec M) reshaped to 32x32."""

  def __init__(self):
    super().__init__()
    self.convs = nn.Sequential(nn.Conv2d(512, 256, 3, 1, 1), nn.ReLU(), nn.Conv2d(256, 128, 3, 1, 1), nn.ReLU(),
                               nn.Conv2d(128, 32, 3, 1, 1))
    self.fc = nn.Linear(32 * 32, 32 * 32)

  def forward(self, x):
    y = self.convs(x)
    b, c, h, w = y.shape
    y = y.reshape(b, c, -1)
    m = torch.bmm(y, y.transpose(1, 2)) / (h * w)
    return self.fc(m.reshape(b, -1)).reshape(b, 32, 32)


class MulLayer(tp.Module):
  def __init__(self):
    super().__init__()
    self.snet, self.cnet = CNN(), CNN()
    self.compress, self.unzip = nn.Conv2d(512, 32, 1), nn.Conv2d(32, 512, 1)

  def forward(self, cf, sf):
    b, _, h, w = cf.shape
    c_mean, s_mean = cf.mean((2, 3), keepdim=True), sf.mean((2, 3), keepdim=True)
    cf, sf = cf - c_mean, sf - s_mean
    z = self.compress(cf).reshape(b, 32, -1)
    t = torch.bmm(self.snet(sf), self.cnet(cf))
    return self.unzip(torch.bmm(t, z).reshape(b, 32, h, w)) + s_mean


@needs_torch
@pytest.mark.e2e  # a full-width PyTorch build: the developer loop keeps AdaIN's parity (test_port.py)
def test_lst_parity(tmp_path):
  torch.manual_seed(40)
  enc, dec, mul = tp.he_init(Encoder5(), 40).eval(), Decoder4().eval(), MulLayer().eval()
  ported = port.convert('lst', vgg=tp.save_torch(enc, tmp_path / 'vgg_r51.pth'),
                        decoder=tp.save_torch(dec, tmp_path / 'dec_r41.pth'),
                        transforms=[tp.save_torch(mul, tmp_path / 'r41.pth')])
  assert ported.sources['vgg']['layout'] == 'LST vgg_r41/vgg_r51' and 'conv5_1' in ported.vgg
  assert ported.sources['decoder'][0]['layout'] == 'LST dec_r41'
  np.testing.assert_array_equal(ported.params['transform']['cnet']['fc']['kernel'], mul.cnet.fc.weight.detach()
                                .numpy().T)
  c, ct = tp.images(2, 32, seed=41)
  s, st = tp.images(2, 32, seed=42)
  with torch.no_grad():
    want = dec(mul(enc(ct), enc(st)))
  tp.check_parity('lst', tp.stylize_jax(ported, c, s), want)


@needs_torch
@pytest.mark.e2e
def test_lst_cli(tmp_path):
  """scripts/port_weights.py on LST's own three layouts (vgg_r51, dec_r41, r41): read back, each kernel is the
  torch weight transposed."""
  torch.manual_seed(43)
  enc, dec, mul = Encoder5(), Decoder4(), MulLayer()
  ported = tp.port_with_cli(tmp_path, 'lst', tp.save_arrays(enc, tmp_path / 'vgg_r51.safetensors'),
                            tp.save_arrays(dec, tmp_path / 'dec_r41.safetensors'),
                            [tp.save_arrays(mul, tmp_path / 'r41.safetensors')])
  assert ported.sources['decoder'][0]['layout'] == 'LST dec_r41'
  np.testing.assert_array_equal(ported.vgg['conv5_1']['kernel'], tp.flax_kernel(enc.conv14.weight))
  got = ported.params
  np.testing.assert_array_equal(got['decoder']['conv3_4']['kernel'], tp.flax_kernel(dec.conv12.weight))
  np.testing.assert_array_equal(got['transform']['snet']['convs_2']['kernel'], tp.flax_kernel(mul.snet.convs[2].weight))
  np.testing.assert_array_equal(got['transform']['cnet']['fc']['kernel'], tp.flax_kernel(mul.cnet.fc.weight))
  np.testing.assert_array_equal(got['transform']['unzip']['bias'], mul.unzip.bias.detach().numpy())
