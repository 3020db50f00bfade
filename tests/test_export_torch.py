"""export --format=torch: each model's params as the upstream .pth files, read with torch alone.

The file names and key layouts are checked against the PyTorch formulations of tests/test_port*.py (written from
models.md, independently of the Flax models): at full width every file loads into them with strict
load_state_dict; stylizing through the exported AdaIN and SANet weights there matches jaxtickets' stylize within
the port parity tolerance; reading the files back (jaxtickets.weights.port) gives the masked params bit for bit.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtickets.tickets import export_torch, inference
from jaxtickets import models
from jaxtickets.weights import files as weights, port
from jaxtickets.errors import UserError
from jaxtickets.models import vgg as vgg_lib
from helpers import tiny_config
from test_inference import make_workdir
import test_port as tp  # the PyTorch formulations
from test_port import torch, nn  # pylint: disable=unused-import

needs_torch = tp.needs_torch
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The files each model's upstream test script loads (models.md §2.6, §3.6, §4.6, §5.6, §6.6, §7.6).
FILES = {
    "adain": ["decoder.pth", "vgg_normalised.pth"],
    "sanet": ["decoder_iter_500000.pth", "transformer_iter_500000.pth", "vgg_normalised.pth"],
    "lst": ["dec_r41.pth", "r41.pth", "vgg_r41.pth"],
    "manet": ["decoder_iter_160000.pth", "ma_module_iter_160000.pth", "vgg_normalised.pth"],
    "adaattn": ["latest_net_decoder.pth", "latest_net_transformer.pth", "latest_net_adaattn_3.pth",
                "vgg_normalised.pth"],
    "mccnet": ["decoder_iter_160000.pth", "mcc_module_iter_160000.pth", "vgg_normalised.pth"],
}


def torch_modules(name: str) -> dict:
  """{file: the full-width PyTorch module that loads it} from the tests' formulations (vgg_r41.pth: LST's encoder5,
  whose conv1..conv10 are encoder4)."""
  import test_port_adaattn as adaattn  # pylint: disable=import-outside-toplevel
  import test_port_lst as lst  # pylint: disable=import-outside-toplevel
  import test_port_manet as manet  # pylint: disable=import-outside-toplevel
  import test_port_mccnet as mccnet  # pylint: disable=import-outside-toplevel
  import test_port_sanet as sanet  # pylint: disable=import-outside-toplevel
  dec = lambda: nn.Sequential(*tp.decoder_layers())
  own = {
      "adain": lambda: [dec()],
      "sanet": lambda: [dec(), sanet.Transform()],
      "lst": lambda: [lst.Decoder4(), lst.MulLayer(), lst.Encoder5()],
      "manet": lambda: [dec(), manet.MAModule()],
      "adaattn": lambda: [adaattn.Decoder(), adaattn.Transformer(), adaattn.AdaAttN(256, 448)],
      "mccnet": lambda: [dec(), mccnet.MCCModule()],
  }[name]()
  if name != "lst":
    own.append(tp.vgg_normalised())
  return dict(zip(FILES[name], own))


def random_params(name: str, width: float, train_encoder: bool, seed: int, keep: float = 0.6):
  """(model, params, vgg, masks): He-scaled random kernels (kept ones scaled up by 1/sqrt(keep)), small biases,
  kernels masked at random (biases kept)."""
  model = models.build(name, {"width": width, "train_encoder": train_encoder})
  key = jax.random.key(0)
  vgg_shapes = jax.eval_shape(model.init_vgg, key)
  shapes = jax.eval_shape(model.init, key, vgg_shapes)
  rng = np.random.default_rng(seed)

  def draw(s, scale=1.0):
    if len(s.shape) == 1:
      return (0.1 * rng.standard_normal(s.shape)).astype(np.float32)
    return (rng.standard_normal(s.shape) * np.sqrt(2.0 * scale / np.prod(s.shape[:-1]))).astype(np.float32)

  # Decoder and transform kernels at PyTorch's default scale (variance 1 / (3 fan_in)), the VGG's He-scaled, as in
  # the port parity tests: He-scaled attention makes a softmax so sharp that float32 rounding alone (PyTorch's
  # float32 against its float64) moves the output past the tolerance.
  params = {g: jax.tree.map(lambda s, g=g: draw(s, (1 if g == "encoder" else 1 / 6) / keep), tree)
            for g, tree in shapes.items()}
  vgg = jax.tree.map(draw, vgg_shapes)
  masks = jax.tree.map(lambda p: rng.random(p.shape) < keep if p.ndim > 1 else np.ones(p.shape, bool), params)
  return model, params, vgg, masks


def masked(params, masks):
  return jax.tree.map(lambda p, m: np.where(m, p, np.float32(0)), params, masks)


def load(out, name: str) -> dict:
  """One exported file, read by torch alone, as numpy."""
  state = torch.load(os.path.join(out, name), weights_only=True)
  return {k: v.numpy() for k, v in state.items()}


def read_back(model, out, shapes_of_vgg) -> tuple[dict, dict]:
  """(params, encoder) read from the exported files by jaxtickets.weights.port's own conversion (any width)."""
  flat, notes = {}, []
  for part in (p for parts in model.torch_parts.values() for p in parts):
    n = len(part.dst) + 1
    target = {k[n:]: v for k, v in port.model_param_shapes(model).items() if k.startswith(part.dst + "/")}
    layout = part.layouts[0]
    got = port.convert_state(load(out, part.example), layout, layout.layers, target, path=part.example,
                             role="test", notes=notes)
    flat.update({f"{part.dst}/{k}": v for k, v in got.items()})
  enc = model.torch_encoder
  layout = enc.layouts[0]
  encoder = port.convert_state(load(out, enc.example), layout, layout.layers, shapes_of_vgg, path=enc.example,
                               role="test", notes=notes)
  return weights.unflatten(flat), encoder


def test_kernels_transpose_back_to_what_port_reads():
  rng = np.random.default_rng(0)
  k = rng.standard_normal((3, 3, 4, 5)).astype(np.float32)
  w = export_torch.to_torch_kernel(k, linear=False)
  assert w.shape == (5, 4, 3, 3) and w[2, 1, 0, 2] == k[0, 2, 1, 2]  # OIHW[o, i, h, w] = HWIO[h, w, i, o]
  dense = rng.standard_normal((4, 6)).astype(np.float32)
  assert export_torch.to_torch_kernel(dense, linear=True)[5, 3] == dense[3, 5]  # Linear (O, I)
  assert export_torch.to_torch_kernel(dense, linear=False).shape == (6, 4, 1, 1)  # a 1x1 conv run as a Dense
  one = rng.standard_normal((1, 1, 4, 6)).astype(np.float32)
  assert export_torch.to_torch_kernel(one, linear=True).shape == (6, 4)  # a Linear held as a 1x1 conv
  for kernel, linear in ((k, False), (dense, True), (dense, False), (one, True), (one, False)):
    back = port.to_flax_kernel(export_torch.to_torch_kernel(kernel, linear), kernel.shape)
    np.testing.assert_array_equal(back, kernel)


def test_every_zero_layer_is_skipped_when_read_back():
  """A layout's zero-filled layers fall under its skipped prefixes, so jaxtickets.weights.port reads an export back."""
  layouts = [vgg_lib.VGG_NORMALISED] + [models.get_model(n).torch_encoder.layouts[0] for n in models.model_names()]
  for name in models.model_names():
    layouts += [p.layouts[0] for parts in models.get_model(name).torch_parts.values() for p in parts]
  for layout in layouts:
    for layer in layout.zeros:
      assert any(f"{layer.src}.weight".startswith(p) for p, _ in layout.skipped), (layout.name, layer.src)


@needs_torch
@pytest.mark.parametrize("name", models.model_names())
def test_tiny_width_files_names_zeros_and_round_trip(name, tmp_path):
  model, params, _, masks = random_params(name, 1 / 16, train_encoder=True, seed=1)
  files, notes = export_torch.torch_files(model, params, masks=masks)
  export_torch.write(str(tmp_path), files)
  assert sorted(os.listdir(tmp_path)) == sorted(FILES[name])
  # Key names: exactly those of the upstream modules (names do not depend on the width).
  for file, module in torch_modules(name).items():
    keys = set(load(tmp_path, file))
    want = set(module.state_dict())
    if file == "vgg_r41.pth":  # encoder4 = encoder5's conv1..conv10
      want = {k for k in want if int(k.split(".")[0][4:]) <= 10}
    assert keys == want, file
  # Read back through jaxtickets.weights.port: the masked params bit for bit, pruned weights as zeros.
  want = masked(params, masks)
  got, encoder = read_back(model, tmp_path, export_torch._vgg_shapes(model.width))
  for group in got:
    jax.tree.map(np.testing.assert_array_equal, got[group], want[group])
  for layer, leaves in weights.unflatten(encoder).items():
    if layer in want["encoder"]:
      jax.tree.map(np.testing.assert_array_equal, leaves, want["encoder"][layer])
    else:  # past the model's encoder depth: zeros the upstream script loads and never runs
      assert all(not np.any(v) for v in jax.tree.leaves(leaves)), layer
  pruned = sum(int((~m).sum()) for m in jax.tree.leaves(masks))
  zeros = sum(int((v == 0).sum()) for f in FILES[name] for v in load(tmp_path, f).values())
  assert zeros >= pruned > 0
  assert any("width 0.0625" in n for n in notes)


@needs_torch
# Full width, so the e2e tier holds all but AdaIN's.
@pytest.mark.parametrize("name", [n if n == "adain" else pytest.param(n, marks=pytest.mark.e2e)
                                  for n in models.model_names()])
def test_full_width_files_load_strictly_into_the_upstream_modules(name, tmp_path):
  """Names and shapes: each file (no encoder: the frozen VGG is the released one) loads with strict=True."""
  model, params, _, masks = random_params(name, 1.0, train_encoder=False, seed=2)
  files, notes = export_torch.torch_files(model, params, masks=masks)
  assert set(files) == set(FILES[name][:-1])
  export_torch.write(str(tmp_path), files)
  for file, module in torch_modules(name).items():
    if file in files:
      module.load_state_dict(torch.load(tmp_path / file, weights_only=True), strict=True)
  assert any("MCCN.h.* are zeros" in n for n in notes) == (name == "mccnet")


def _parity(name, tmp_path, train_encoder):
  """Exports random masked full-width params, ports them back with port.convert (the user's path: exact), and
  runs both the exported files in PyTorch and jaxtickets' Stylizer on two 32 px pairs."""
  # One IMP round's 20% pruned: at 40% these random nets amplify float32 rounding past the tolerance (PyTorch's own
  # float32 output then differs from its float64 one by about as much).
  model, params, vgg, masks = random_params(name, 1.0, train_encoder=train_encoder, seed=3, keep=0.8)
  stylizer = inference.Stylizer(model, params, vgg, masks)
  files, _ = export_torch.torch_files(model, stylizer.params, stylizer.vgg_params)
  export_torch.write(str(tmp_path), files)
  transforms = [tmp_path / f for f in FILES[name][1:-1]]
  ported = port.convert(name, vgg=tmp_path / "vgg_normalised.pth", decoder=tmp_path / FILES[name][0],
                        transforms=transforms)
  want = masked(params, masks)
  for group in ported.params:
    jax.tree.map(np.testing.assert_array_equal, ported.params[group], want[group])
  encoder = want["encoder"] if train_encoder else vgg_lib.truncate(vgg, model.encoder_depth)
  jax.tree.map(np.testing.assert_array_equal, ported.vgg, encoder)
  mods = {f: m.eval() for f, m in torch_modules(name).items()}
  for f, m in mods.items():
    m.load_state_dict(torch.load(tmp_path / f, weights_only=True), strict=True)
  c, ct = tp.images(2, 32, seed=4)
  s, st = tp.images(2, 32, seed=5)
  with jax.default_matmul_precision("highest"):
    got = stylizer.stylize(c, s)
  return mods, ct, st, got


@pytest.mark.e2e  # stylizes through the PyTorch formulation
@needs_torch
def test_adain_stylizes_in_pytorch_as_in_jaxtickets(tmp_path):
  mods, ct, st, got = _parity("adain", tmp_path, train_encoder=True)
  net = tp.torch_adain(mods["vgg_normalised.pth"])
  net.decoder = mods["decoder.pth"]
  with torch.no_grad():
    want = net(ct, st)
  tp.check_parity("adain export", got, want)


@pytest.mark.e2e  # stylizes through the PyTorch formulation
@needs_torch
def test_sanet_stylizes_in_pytorch_as_in_jaxtickets(tmp_path):
  mods, ct, st, got = _parity("sanet", tmp_path, train_encoder=False)
  vgg, transform, decoder = (mods[f] for f in ("vgg_normalised.pth", "transformer_iter_500000.pth",
                                               "decoder_iter_500000.pth"))
  with torch.no_grad():
    fc, fs = tp.encode(vgg, ct), tp.encode(vgg, st)
    want = decoder(transform(fc[3], fs[3], fc[4], fs[4]))
  tp.check_parity("sanet export", got, want)


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
  return make_workdir(tmp_path_factory.mktemp("run"), tiny_config(), rounds=2)


@needs_torch
def test_a_ticket_exports_its_masked_weights(ticket, tmp_path):
  path, model, _, _, trained, masks = ticket
  files, notes = export_torch.export_ticket(path, str(tmp_path / "torch"))
  assert sorted(files) == ["decoder.pth", "vgg_normalised.pth"]
  dec = load(tmp_path / "torch", "decoder.pth")
  # The decoder's first conv (models.md §1.2: Sequential index 1), HWIO -> OIHW, zeros where the mask is off.
  kernel, mask = trained["decoder"]["conv4_1"]["kernel"], masks["decoder"]["conv4_1"]["kernel"]
  np.testing.assert_array_equal(dec["1.weight"], np.where(mask, kernel, 0).transpose(3, 2, 0, 1))
  assert not mask.all() and not dec["1.weight"][~mask.transpose(3, 2, 0, 1)].any()
  vgg = load(tmp_path / "torch", "vgg_normalised.pth")
  np.testing.assert_array_equal(vgg["2.weight"], trained["encoder"]["conv1_1"]["kernel"].transpose(3, 2, 0, 1))
  assert any("keys 32.* to 51.*" in n for n in notes)
  table = export_torch.summary(files, str(tmp_path / "torch")).splitlines()
  dec_row, vgg_row = (next(r for r in table if r.startswith(f)) for f in ("decoder.pth", "vgg_normalised.pth"))
  assert dec_row.split()[4] == "-" and vgg_row.split()[4] != "-"  # only the VGG has layers the model never runs
  pruned = 1 - np.mean(np.concatenate([np.ravel(m) for m in jax.tree.leaves(masks["decoder"])]))
  assert f"{pruned:.1%}" == dec_row.split()[3]  # its zeros are exactly its pruned entries, biases counted as kept
  with pytest.raises(UserError, match=r"--out='.*t\.npz' is a file name, but --format=torch writes several"):
    export_torch.export_ticket(path, str(tmp_path / "t.npz"))


@needs_torch
@pytest.mark.e2e
def test_cli_format_torch(ticket, tmp_path):
  run = lambda *a: subprocess.run([sys.executable, "-m", "jaxtickets.export", *a], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
  out = tmp_path / "torch"
  r = run(f"--ticket={ticket[0]}", f"--out={out}", "--format=torch")
  assert r.returncode == 0, r.stderr
  assert sorted(os.listdir(out)) == ["decoder.pth", "vgg_normalised.pth"]
  assert "decoder.pth" in r.stdout and "note: vgg_normalised.pth: keys 32.* to 51.*" in r.stdout
  r = run(f"--ticket={ticket[0]}", f"--out={tmp_path / 'x.npz'}", "--format=torch")
  assert r.returncode == 2 and "error: --out=" in r.stderr and "Traceback" not in r.stderr
