"""AdaAttN: the three released files (transformer via .npz) ported and compared with a PyTorch formulation of
models.md §6 (shallow-layer keys, AdaAttN blocks on r31/r41/r51, merge conv, decoder with the relu3_1 skip).
At 32 px no style positions are subsampled, so the output is deterministic."""

import numpy as np
import pytest

from jaxtickets.weights import port
from jaxtickets.errors import UserError

import test_port as tp  # shared PyTorch formulations
from test_port import vgg_file, vgg_safetensors  # pylint: disable=unused-import  (fixtures)

torch, nn, F, norm = tp.torch, tp.nn, tp.F, tp.norm
needs_torch = tp.needs_torch  # every test here runs the PyTorch formulation


def get_key(feats, idx):
  """cat(norm(nearest-resized shallower taps), norm(tap idx)) along channels."""
  h, w = feats[idx].shape[2:]
  return torch.cat([norm(F.interpolate(f, size=(h, w))) for f in feats[:idx]] + [norm(feats[idx])], dim=1)


class AdaAttN(tp.Module):
  """S * norm(content) + M, M = A V, S = sqrt(relu(A V^2 - M^2)), A = softmax_j(f(key_c)_i . g(key_s)_j)."""

  def __init__(self, in_planes, key_planes):
    super().__init__()
    self.f, self.g = nn.Conv2d(key_planes, key_planes, 1), nn.Conv2d(key_planes, key_planes, 1)
    self.h = nn.Conv2d(in_planes, in_planes, 1)

  def forward(self, content, style, content_key, style_key):
    b, _, h, w = content.shape
    q = self.f(content_key).reshape(b, -1, h * w).permute(0, 2, 1)
    k = self.g(style_key).reshape(b, q.shape[-1], -1)
    v = self.h(style).reshape(b, style.shape[1], -1).transpose(1, 2)
    attn = torch.softmax(torch.bmm(q, k), dim=-1)
    mean = torch.bmm(attn, v)
    std = torch.sqrt(torch.relu(torch.bmm(attn, v * v) - mean * mean))
    to_map = lambda x: x.reshape(b, h, w, -1).permute(0, 3, 1, 2)
    return to_map(std) * norm(content) + to_map(mean)


class Transformer(tp.Module):
  def __init__(self):
    super().__init__()
    self.attn_adain_4_1, self.attn_adain_5_1 = AdaAttN(512, 960), AdaAttN(512, 1472)
    self.merge_conv_pad, self.merge_conv = nn.ReflectionPad2d(1), nn.Conv2d(512, 512, 3)

  def forward(self, c41, s41, c51, s51, ck41, sk41, ck51, sk51):
    up = F.interpolate(self.attn_adain_5_1(c51, s51, ck51, sk51), scale_factor=2, mode='nearest')
    return self.merge_conv(self.merge_conv_pad(self.attn_adain_4_1(c41, s41, ck41, sk41) + up))


class Decoder(tp.Module):
  """Decoder(skip_connection_3=True): decoder_layer_1 (Sequential 0..3), decoder_layer_2 (Sequential 0..24)."""

  def __init__(self):
    super().__init__()
    conv = lambda i, o: [nn.ReflectionPad2d(1), nn.Conv2d(i, o, 3), nn.ReLU()]
    up = nn.Upsample(scale_factor=2, mode='nearest')
    self.decoder_layer_1 = nn.Sequential(*conv(512, 256), up)
    self.decoder_layer_2 = nn.Sequential(
        *conv(512, 256), *conv(256, 256), *conv(256, 256), *conv(256, 128), up, *conv(128, 128), *conv(128, 64),
        up, *conv(64, 64), *conv(64, 3)[:2])

  def forward(self, cs, skip):
    return self.decoder_layer_2(torch.cat((self.decoder_layer_1(cs), skip), dim=1))


@needs_torch
@pytest.mark.e2e  # a full-width PyTorch build: the developer loop keeps AdaIN's parity (test_port.py)
def test_adaattn_parity(vgg_file, tmp_path):
  vgg, vgg_path = vgg_file
  torch.manual_seed(50)
  transformer, skip, decoder = Transformer().eval(), AdaAttN(256, 448).eval(), Decoder().eval()
  layers = ['decoder_layer_1.1'] + [f'decoder_layer_2.{i}' for i in (1, 4, 7, 10, 14, 17, 21, 24)]
  assert set(decoder.state_dict()) == {f'{l}.{p}' for l in layers for p in ('weight', 'bias')}  # models.md §6.6
  np.savez(tmp_path / 'latest_net_transformer.npz', **{k: v.numpy() for k, v in transformer.state_dict().items()})
  files = [tp.save_torch(skip, tmp_path / 'latest_net_adaattn_3.pth'), tmp_path / 'latest_net_transformer.npz']
  dec_path = tp.save_torch(decoder, tmp_path / 'latest_net_decoder.pth')
  ported = port.convert('adaattn', vgg=vgg_path, decoder=dec_path, transforms=files)  # any order
  assert sorted(ported.params['transform']) == ['adaattn_3', 'transformer']
  c, ct = tp.images(2, 32, seed=51)
  s, st = tp.images(2, 32, seed=52)
  with torch.no_grad():
    cf, sf = tp.encode(vgg, ct), tp.encode(vgg, st)
    ck, sk = {i: get_key(cf, i) for i in (2, 3, 4)}, {i: get_key(sf, i) for i in (2, 3, 4)}
    t = transformer(cf[3], sf[3], cf[4], sf[4], ck[3], sk[3], ck[4], sk[4])
    want = decoder(t, skip(cf[2], sf[2], ck[2], sk[2]))
  tp.check_parity('adaattn', tp.stylize_jax(ported, c, s), want)

  with pytest.raises(UserError, match=r'The adaattn model needs 2 --transform file\(s\) \(latest_net_transformer'
                                      r'\.pth, latest_net_adaattn_3\.pth\), got 1'):
    port.convert('adaattn', vgg=vgg_path, decoder=dec_path, transforms=files[:1])
  with pytest.raises(UserError, match=r"both look like latest_net_adaattn_3\.pth"):
    port.convert('adaattn', vgg=vgg_path, decoder=dec_path, transforms=[files[0], files[0]])


@needs_torch
@pytest.mark.e2e
def test_adaattn_cli(vgg_safetensors, tmp_path):
  """scripts/port_weights.py on the three files in the released key layout (two --transform): read back, each
  kernel is the torch weight transposed."""
  vgg, vgg_path = vgg_safetensors
  torch.manual_seed(53)
  transformer, skip, decoder = Transformer(), AdaAttN(256, 448), Decoder()
  ported = tp.port_with_cli(tmp_path, 'adaattn', vgg_path,
                            tp.save_arrays(decoder, tmp_path / 'latest_net_decoder.safetensors'),
                            [tp.save_arrays(transformer, tmp_path / 'latest_net_transformer.safetensors'),
                             tp.save_arrays(skip, tmp_path / 'latest_net_adaattn_3.safetensors')])
  tp.check_ported_vgg(ported, vgg)
  got = ported.params
  np.testing.assert_array_equal(got['decoder']['decoder_layer_2_24']['kernel'],
                                tp.flax_kernel(decoder.decoder_layer_2[24].weight))
  np.testing.assert_array_equal(got['transform']['transformer']['attn_adain_5_1']['g']['kernel'],
                                tp.flax_kernel(transformer.attn_adain_5_1.g.weight))
  np.testing.assert_array_equal(got['transform']['adaattn_3']['h']['kernel'], tp.flax_kernel(skip.h.weight))
