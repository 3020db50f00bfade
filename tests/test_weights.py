"""Tests for jaxtickets.weights: Flax-format VGG weight files (.npz and Orbax directories), the one .npz reader,
ported directories (model.json + params/) and the random-VGG fallback."""

import json
import os

import jax
import numpy as np
import pytest

from jaxtickets.weights import files as weights
from jaxtickets.errors import UserError

# A tiny VGG: (name, in, out) up to conv3_1; real files go to conv5_4 with widths 64..512.
_LAYERS = [('conv0', 3, 3, 1), ('conv1_1', 3, 4, 3), ('conv1_2', 4, 4, 3), ('conv2_1', 4, 8, 3),
           ('conv2_2', 8, 8, 3), ('conv3_1', 8, 16, 3)]


def _vgg(upto: str, seed=0) -> dict:
  rng = np.random.default_rng(seed)
  params = {}
  for name, cin, cout, k in _LAYERS:
    params[name] = {'kernel': rng.standard_normal((k, k, cin, cout)).astype(np.float32),
                    'bias': rng.standard_normal(cout).astype(np.float32)}
    if name == upto:
      return params
  raise AssertionError(upto)


def _shapes(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def _assert_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert isinstance(g, np.ndarray) and g.dtype == np.float32
    np.testing.assert_array_equal(g, w)


def test_flatten_unflatten():
  tree = {'conv1_1': {'kernel': 1, 'bias': 2}, 'dec': {'b': {'kernel': 3}}, 'x': 4}
  flat = weights.flatten(tree)
  assert flat == {'conv1_1/kernel': 1, 'conv1_1/bias': 2, 'dec/b/kernel': 3, 'x': 4}
  assert weights.unflatten(flat) == tree
  with pytest.raises(ValueError, match="'a/b'"):
    weights.flatten({'a/b': 1})


@pytest.mark.parametrize('name', ['vgg.npz', 'vgg_dir'])
def test_round_trip(tmp_path, name):
  params = _vgg('conv2_2')
  path = tmp_path / name
  weights.save_vgg_weights(path, params)
  assert path.is_file() == name.endswith('.npz')
  if name.endswith('.npz'):
    with np.load(path) as npz:
      assert sorted(npz.files) == sorted(weights.flatten(params))
  _assert_equal(weights.load_vgg_weights(path, _shapes(params)), params)
  with pytest.raises(UserError, match='already exist'):
    weights.save_vgg_weights(path, params)
  weights.save_vgg_weights(path, _vgg('conv2_2', seed=1), overwrite=True)
  _assert_equal(weights.load_vgg_weights(path, _shapes(params)), _vgg('conv2_2', seed=1))


@pytest.mark.parametrize('name', ['deep.npz', 'deep_dir'])
def test_extra_layers_are_dropped(tmp_path, name):
  deep = _vgg('conv3_1')
  weights.save_vgg_weights(tmp_path / name, deep)
  want = _vgg('conv1_2')
  got = weights.load_vgg_weights(tmp_path / name, _shapes(want))
  assert sorted(got) == ['conv0', 'conv1_1', 'conv1_2']
  _assert_equal(got, want)


def test_params_wrapper_and_float32(tmp_path):
  params = jax.tree.map(lambda x: x.astype(np.float64), _vgg('conv1_1'))
  weights.save_vgg_weights(tmp_path / 'w.npz', params)
  expected = {'params': _shapes(_vgg('conv1_1'))}  # what eval_shape of a Flax init returns
  got = weights.load_vgg_weights(tmp_path / 'w.npz', expected)
  _assert_equal(got, {'params': _vgg('conv1_1')})


@pytest.mark.parametrize('name', ['w.npz', 'w_dir'])
def test_missing_layers_and_wrong_shapes_in_one_error(tmp_path, name):
  params = _vgg('conv2_1')
  del params['conv2_1']['bias']
  params['conv1_1']['kernel'] = np.zeros((3, 3, 3, 2), np.float32)
  weights.save_vgg_weights(tmp_path / name, params)
  with pytest.raises(UserError) as info:
    weights.load_vgg_weights(tmp_path / name, _shapes(_vgg('conv3_1')))
  message = str(info.value)
  assert message.startswith(f"VGG weights '{tmp_path / name}' do not fit the model: ")
  for part in ['missing conv2_1/bias', 'missing conv2_2/kernel', 'missing conv3_1/bias',
               'conv1_1/kernel has shape (3,3,3,2), expected (3,3,3,4)']:
    assert part in message
  for fine in ['conv0/', 'conv1_2/', 'conv2_1/kernel', 'conv1_1/bias']:
    assert fine not in message
  assert 'scripts/port_weights.py' in message and '\n' not in message


def test_missing_path(tmp_path):
  with pytest.raises(UserError, match=r"'.*nope\.npz' does not exist; set config\.model\.vgg_weights to a "
                                      r'Flax-format VGG file written by scripts/port_weights\.py, or leave it '
                                      r'empty for random weights'):
    weights.load_vgg_weights(tmp_path / 'nope.npz', _shapes(_vgg('conv0')))


def test_not_a_weights_file(tmp_path):
  junk = tmp_path / 'junk.npz'
  junk.write_bytes(np.random.default_rng(0).bytes(512))
  with pytest.raises(UserError, match=r"'.*junk\.npz' are not an \.npz archive"):
    weights.load_vgg_weights(junk, _shapes(_vgg('conv0')))
  single = tmp_path / 'single.npy'
  np.save(single, np.zeros(3))
  with pytest.raises(UserError, match='single array'):
    weights.load_vgg_weights(single, _shapes(_vgg('conv0')))
  folder = tmp_path / 'folder'
  folder.mkdir()
  (folder / 'x.txt').write_text('hi')
  with pytest.raises(UserError, match=r"directory '.*folder' is not an Orbax params checkpoint"):
    weights.load_vgg_weights(folder, _shapes(_vgg('conv0')))


def test_long_problem_lists_are_counted(tmp_path, monkeypatch):
  monkeypatch.setattr(weights, '_MAX_LISTED', 3)
  weights.save_vgg_weights(tmp_path / 'w.npz', _vgg('conv0'))
  with pytest.raises(UserError, match=r'missing conv1_1/bias; missing conv1_1/kernel; missing conv1_2/bias; '
                                      r'and 7 more; set config'):
    weights.load_vgg_weights(tmp_path / 'w.npz', _shapes(_vgg('conv3_1')))


def _ported_dir(tmp_path, name, vgg, params=None):
  """A directory as scripts/port_weights.py writes it (model.json + params/), made without torch."""
  ported = weights.Ported('adain' if params else None, {'name': 'adain', 'width': 1.0} if params else None, params,
                          vgg, {}, [])
  weights.save_ported(ported, tmp_path / name)
  return tmp_path / name


def test_ported_directories_give_their_vgg_part(tmp_path):
  vgg = _vgg('conv2_1')
  decoder = {'decoder': {'conv1_1': {'kernel': np.ones((3, 3, 4, 3), np.float32), 'bias': np.zeros(3, np.float32)}}}
  for path in (_ported_dir(tmp_path, 'vgg_only', vgg), _ported_dir(tmp_path, 'model', vgg, decoder)):
    assert (path / 'model.json').is_file()
    _assert_equal(weights.load_vgg_weights(path, _shapes(_vgg('conv1_2'))), _vgg('conv1_2'))
    _assert_equal(weights.load_vgg_weights(path / 'params', _shapes(vgg)), vgg)  # the Orbax directory itself
  with pytest.raises(UserError, match=r"do not fit the model: missing conv2_2/bias; missing conv2_2/kernel"):
    weights.load_vgg_weights(tmp_path / 'model', _shapes(_vgg('conv2_2')))


def test_ported_directory_without_vgg(tmp_path):
  from jaxtickets.store import checkpoint
  checkpoint.save_params(tmp_path / 'd' / 'params', {'params': {'decoder': {'k': np.zeros(2, np.float32)}}})
  with pytest.raises(UserError, match=r"holds ported model weights without a 'vgg' part; port the VGG file too"):
    weights.load_vgg_weights(tmp_path / 'd', _shapes(_vgg('conv0')))


@pytest.mark.parametrize('name', ['vgg_normalised.pth', 'vgg.safetensors'])
def test_pytorch_files_must_be_ported_first(tmp_path, name):
  (tmp_path / name).write_bytes(b'PK\x03\x04 not really')
  with pytest.raises(UserError, match=r"are a PyTorch-format file: port them first with python "
                                      r'scripts/port_weights\.py --vgg=FILE --out=DIR and set '
                                      r'config\.model\.vgg_weights=DIR\.'):
    weights.load_vgg_weights(tmp_path / name, _shapes(_vgg('conv0')))


def test_ported_directory_layout_and_round_trip(tmp_path):
  """The layout users and older runs rely on: model.json (model, model_config, sources, notes) beside params/, an
  Orbax checkpoint of {'params', 'vgg'}; load_ported gives back what save_ported wrote."""
  from jaxtickets.store import checkpoint
  decoder = {'decoder': {'conv1_1': {'kernel': np.ones((3, 3, 4, 3), np.float32), 'bias': np.zeros(3, np.float32)}}}
  ported = weights.Ported('adain', {'name': 'adain', 'width': 1.0, 'train_encoder': False}, decoder, _vgg('conv1_1'),
                          {'vgg': {'layout': 'vgg_normalised'}}, ['a note'])
  weights.save_ported(ported, tmp_path / 'out')
  assert sorted(os.listdir(tmp_path / 'out')) == ['model.json', 'params']
  assert json.loads((tmp_path / 'out' / 'model.json').read_text()) == {
      'model': 'adain', 'model_config': ported.model_config, 'sources': ported.sources, 'notes': ['a note']}
  assert sorted(checkpoint.load_params(tmp_path / 'out' / 'params')) == ['params', 'vgg']
  assert weights.is_ported(tmp_path / 'out') and not weights.is_ported(tmp_path / 'out' / 'params')
  loaded = weights.load_ported(tmp_path / 'out')
  assert (loaded.model, loaded.model_config, loaded.sources, loaded.notes) == (
      'adain', ported.model_config, ported.sources, ['a note'])
  _assert_equal(loaded.params, decoder)
  _assert_equal(loaded.vgg, _vgg('conv1_1'))
  with pytest.raises(UserError, match=r"already holds ported weights \(model\.json, params\): pass --overwrite"):
    weights.save_ported(ported, tmp_path / 'out')


def test_load_ported_refuses_what_it_cannot_read_or_name(tmp_path):
  from jaxtickets.store import checkpoint
  checkpoint.save_params(tmp_path / 'bare' / 'params', {'params': {'d': np.zeros(2, np.float32)}, 'vgg': {}})
  assert weights.load_ported(tmp_path / 'bare').model is None  # enough for init_from, which checks the groups
  with pytest.raises(UserError, match=r"model\.json' has no \"model\" name: write it as \{\"model\": NAME"):
    weights.load_ported(tmp_path / 'bare', need_model=True)
  checkpoint.save_params(tmp_path / 'theta', {'decoder': {'k': np.zeros(2, np.float32)}})
  with pytest.raises(UserError, match=r"holds \['decoder'\], not 'params' and 'vgg': port the weights again"):
    weights.load_ported(tmp_path / 'theta')
  with pytest.raises(UserError, match=r"is not a directory of ported weights \(model\.json \+ params/\)"):
    weights.load_ported(tmp_path / 'nowhere')


def test_read_npz_serves_vgg_files_state_dicts_and_exports(tmp_path, monkeypatch):
  """One .npz reader: VGG files, state dicts and exports all read through weights.read_npz, which reads only the
  arrays asked for and reports a file that is not an archive."""
  from jaxtickets.tickets import export_format
  calls = []
  read_npz = weights.read_npz
  monkeypatch.setattr(weights, 'read_npz', lambda path, keys=None: calls.append(os.path.basename(path)) or
                      read_npz(path, keys))
  weights.save_vgg_weights(tmp_path / 'vgg.npz', _vgg('conv1_1'))
  _assert_equal(weights.load_vgg_weights(tmp_path / 'vgg.npz', _shapes(_vgg('conv0'))), _vgg('conv0'))
  np.savez(tmp_path / 'state.npz', **{'0.weight': np.ones((3, 3, 1, 1), np.float64)})
  assert weights.read_state_dict(tmp_path / 'state.npz')['0.weight'].dtype == np.float32
  params = {'d': {'kernel': np.arange(4, dtype=np.float32).reshape(2, 2)}}
  tensors, meta, _ = export_format.encode('adain', {}, params, jax.tree.map(lambda x: x > 0, params))
  export_format.write(str(tmp_path / 'ticket.npz'), tensors, meta)
  np.testing.assert_array_equal(export_format.load_export(str(tmp_path / 'ticket.npz')).params['d']['kernel'],
                                params['d']['kernel'] * (params['d']['kernel'] > 0))
  assert calls == ['vgg.npz', 'state.npz', 'ticket.npz']
  assert sorted(read_npz(tmp_path / 'vgg.npz', ['conv0/bias', 'nope'])) == ['conv0/bias']
  (tmp_path / 'junk.npz').write_bytes(b'hello world')
  with pytest.raises(weights.Unreadable, match='^ValueError: '):  # numpy's reason, named by the caller
    read_npz(tmp_path / 'junk.npz')


def test_load_or_init_vgg(tmp_path, capsys):
  """config.model.vgg_weights: a file is loaded to the model's depth; empty draws the model's random VGG, loudly."""
  from jaxtickets import models
  model = models.build('adain', {'width': 0.125})
  key = jax.random.PRNGKey(1)
  drawn = weights.load_or_init_vgg(model, '', key)
  assert 'WARNING: config.model.vgg_weights is empty' in capsys.readouterr().out
  jax.tree.map(np.testing.assert_array_equal, drawn, jax.device_get(model.init_vgg(key)))
  weights.save_vgg_weights(tmp_path / 'vgg.npz', drawn)
  loaded = weights.load_or_init_vgg(model, str(tmp_path / 'vgg.npz'), jax.random.PRNGKey(2))
  assert capsys.readouterr().out == ''
  jax.tree.map(np.testing.assert_array_equal, loaded, drawn)


def test_write_npz_gives_the_same_bytes_for_the_same_arrays(tmp_path):
  arrays = {"b": np.ones((2, 3), np.float32), "a": np.arange(4)}
  weights.write_npz(str(tmp_path / "1.npz"), arrays)
  weights.write_npz(str(tmp_path / "2.npz"), dict(reversed(list(arrays.items()))))
  assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()
  got = weights.read_npz(str(tmp_path / "1.npz"))
  np.testing.assert_array_equal(got["b"], arrays["b"])
  np.testing.assert_array_equal(got["a"], arrays["a"])


@pytest.mark.parametrize("width", sorted(weights.DEMO_VGG_SHA256))
def test_demo_loss_network_is_the_recorded_file_and_fits_its_width(width):
  from jaxtickets import models
  model = models.build("adain", {"width": width})
  vgg = weights.load_or_init_vgg(model, "demo", jax.random.PRNGKey(0))
  want = jax.eval_shape(model.init_vgg, jax.random.PRNGKey(0))
  assert jax.tree.structure(vgg) == jax.tree.structure(want)
  random = jax.device_get(model.init_vgg(jax.random.PRNGKey(0)))
  # Trained, not the random stand-in: every layer moved away from a He-normal draw's scale or values.
  assert not np.allclose(vgg["conv1_1"]["kernel"], random["conv1_1"]["kernel"])
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(vgg))


def test_demo_loss_network_refuses_a_changed_file_and_an_unmade_width(tmp_path, monkeypatch):
  width = sorted(weights.DEMO_VGG_SHA256)[0]
  changed = tmp_path / "changed.npz"
  original = open(weights.demo_vgg_path(width), "rb").read()
  changed.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
  monkeypatch.setattr(weights, "demo_vgg_path", lambda w: str(changed))
  with pytest.raises(UserError, match=r"has SHA-256 .* it was changed or damaged; reinstall jaxtickets"):
    weights.resolve_demo_vgg(width)
  with pytest.raises(UserError, match=r"exists at width .* not 0.3: set --config.model.width="):
    weights.resolve_demo_vgg(0.3)
  monkeypatch.setattr(weights, "demo_vgg_path", lambda w: str(tmp_path / "gone.npz"))
  with pytest.raises(UserError, match=r"is missing: reinstall jaxtickets, or make it with python "
                                      r"scripts/make_demo_vgg.py"):
    weights.resolve_demo_vgg(width)


def test_the_demo_vgg_record_holds_the_file_hash_and_a_changed_file_is_refused(tmp_path, monkeypatch):
  import hashlib
  width = sorted(weights.DEMO_VGG_SHA256)[0]
  rec = weights.describe_vgg("demo", width)
  with open(weights.demo_vgg_path(width), "rb") as f:
    assert rec["sha256"] == hashlib.sha256(f.read()).hexdigest()
  assert rec["path"] == weights.demo_vgg_path(width) and rec["verified"] == "published"
  changed = tmp_path / "changed.npz"
  original = open(weights.demo_vgg_path(width), "rb").read()
  changed.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
  monkeypatch.setattr(weights, "demo_vgg_path", lambda w: str(changed))
  with pytest.raises(UserError, match="it was changed or damaged"):  # a record never names a changed file's hash
    weights.describe_vgg("demo", width)


def test_demo_loss_network_refuses_a_model_that_reads_deeper():
  from jaxtickets import models
  with pytest.raises(UserError, match=r"'demo' stops at relu4_1, but sanet reads r51: give ported VGG weights"):
    weights.load_or_init_vgg(models.build("sanet", {"width": 0.25}), "demo", jax.random.PRNGKey(0))


def test_a_vgg_file_of_another_width_names_its_width_and_the_flag(tmp_path):
  from jaxtickets import models
  model = models.build("adain", {"width": 0.5})
  with pytest.raises(UserError, match=r"are a VGG at width 0.25 \(conv1_1 has 16 channels\), not the model's 32: "
                                      r"set --config.model.width=0.25\.$"):
    weights.load_or_init_vgg(model, weights.demo_vgg_path(0.25), jax.random.PRNGKey(0))
  # A file that is not the model's VGG at another width keeps the list of what does not fit.
  bad = weights.flatten(jax.device_get(models.build("adain", {"width": 0.25}).init_vgg(jax.random.PRNGKey(0))))
  bad["conv2_1/kernel"] = np.zeros((3, 3, 16, 5), np.float32)
  weights.write_npz(str(tmp_path / "odd.npz"), bad)
  with pytest.raises(UserError, match=r"do not fit the model: .*conv1_1/kernel has shape"):
    weights.load_or_init_vgg(model, str(tmp_path / "odd.npz"), jax.random.PRNGKey(0))
