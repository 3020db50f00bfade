"""`python -m jaxtickets.weights fetch`: released files downloaded from a loopback HTTP server (fabricated, in the
upstream key layouts), checked against a test table of hashes, ported; --from, --allow_unverified, trust on first
use, and a released file in another model's slot."""

import dataclasses
import functools
import http.server
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from jaxtickets.weights import fetch as fetch_cli, files as weights, port, releases
from jaxtickets import models
from jaxtickets.errors import UserError
from jaxtickets.models import vgg as vgg_lib

torch = pytest.importorskip('torch')  # the released files are .pth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fabricate(layers, target, seed: int) -> dict:
  """A random state dict in a released layout: each layer's weight in PyTorch's shape for the Flax `target`."""
  rng = np.random.default_rng(seed)
  state = {}
  for layer in layers:
    kernel, bias = target[f'{layer.dst}/kernel'], target[f'{layer.dst}/bias']
    shape = port._torch_shape(kernel, layer.linear)  # pylint: disable=protected-access
    state[f'{layer.src}.weight'] = torch.from_numpy(rng.normal(0, 0.05, shape).astype(np.float32))
    state[f'{layer.src}.bias'] = torch.from_numpy(rng.normal(0, 0.05, bias).astype(np.float32))
  return state


def vgg_state(depth: str, seed: int = 0) -> dict:
  """vgg_normalised.pth's keys up to relu<depth>_1 (a shallow one ports as a VGG of that depth)."""
  names = set(vgg_lib.vgg_layer_names(depth))
  return _fabricate([l for l in vgg_lib.VGG_NORMALISED.layers if l.dst in names], port.vgg_shapes(depth), seed)


def part_state(model_name: str, role: str, seed: int, index: int = 0) -> dict:
  """A model's released decoder/transform file in its own key layout."""
  model = models.build(model_name, weights.RELEASED_MODEL)
  part = model.torch_parts[role][index]
  target = port._part_target(port.model_param_shapes(model), part.dst)  # pylint: disable=protected-access
  return _fabricate(part.layouts[0].layers, target, seed)


def save(state: dict, path) -> str:
  torch.save(state, path)
  return str(path)


@pytest.fixture(scope='module')
def upstream(tmp_path_factory):
  """A folder of fabricated release files, served on 127.0.0.1 for the module's tests: (folder, base URL)."""
  root = tmp_path_factory.mktemp('upstream')
  save(vgg_state('r11'), root / 'vgg_shallow.pth')  # for the VGG-only ports: small
  save(vgg_state('r41'), root / 'vgg_normalised.pth')  # AdaIN reads relu4_1
  save(part_state('adain', 'decoder', 1), root / 'decoder.pth')
  save(vgg_state('r11', seed=7), root / 'other.pth')
  handler = functools.partial(_Quiet, directory=str(root))
  server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield root, f'http://127.0.0.1:{server.server_address[1]}'
  server.shutdown()
  server.server_close()
  thread.join()


class _Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):  # no request lines in the test output
    pass


@pytest.fixture
def table(upstream, tmp_path, monkeypatch):
  """The release table pointed at the loopback server, with a fresh download cache and pin file; returns a function
  that sets one file's URL (a name under the server) and published hash."""
  root, base = upstream
  monkeypatch.setenv(releases.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.setenv(releases.PINS_ENV, str(tmp_path / 'pins.json'))
  files = {k: dataclasses.replace(e, url=f'{base}/missing/{e.name}', member='', yandex=False, sha256='')
           for k, e in releases.FILES.items()}
  monkeypatch.setattr(releases, 'FILES', files)

  def set_file(key: str, served: str, sha256: str | None = None):
    """`key` served as upstream/<served>, its published hash `sha256` (None: that file's own; '': none)."""
    sha = weights.file_sha256(root / served) if sha256 is None else sha256
    files[key] = dataclasses.replace(files[key], url=f'{base}/{served}', sha256=sha)
  return set_file


def fetch(*args, out=None):
  """The command's exit status: 0, or the runner's 2 for a refused file."""
  try:
    return fetch_cli.main(['fetch', *args] + ([f'--out={out}'] if out else []))
  except SystemExit as e:
    return e.code


def sources(path) -> dict:
  with open(os.path.join(path, weights.MODEL_JSON)) as f:
    return json.load(f)['sources']


def test_fetch_verifies_and_ports_a_whole_model(table, upstream, tmp_path, capsys):
  root, base = upstream
  table('adain/vgg_normalised.pth', 'vgg_normalised.pth')
  table('adain/decoder.pth', 'decoder.pth')
  assert fetch('adain', out=tmp_path / 'w') == 0
  dest = tmp_path / 'w' / 'adain'
  assert f'--config.model.vgg_weights={dest} --config.model.init_from={dest}' in capsys.readouterr().out
  got = weights.load_ported(dest)
  want = port.convert('adain', vgg=root / 'vgg_normalised.pth', decoder=root / 'decoder.pth')
  np.testing.assert_array_equal(got.params['decoder']['conv4_1']['kernel'],
                                want.params['decoder']['conv4_1']['kernel'])
  np.testing.assert_array_equal(got.vgg['conv4_1']['kernel'], want.vgg['conv4_1']['kernel'])
  src = sources(dest)
  assert src['vgg']['release'] == 'AdaIN vgg_normalised.pth, release v0.0.0'
  assert src['vgg']['verified'] == 'published' and src['vgg']['source'] == f'{base}/vgg_normalised.pth'
  (dec,) = src['decoder']
  assert dec['release'] == 'AdaIN decoder.pth, release v0.0.0' and dec['verified'] == 'published'
  assert dec['sha256'] == weights.file_sha256(root / 'decoder.pth')


def test_a_wrong_file_is_refused_with_both_hashes(table, upstream, tmp_path, capsys):
  root, _ = upstream
  want = weights.file_sha256(root / 'other.pth')
  table('adain/vgg_normalised.pth', 'vgg_shallow.pth', sha256=want)  # the server has another file
  assert fetch('vgg', out=tmp_path / 'w') == 2
  err = capsys.readouterr().err.strip()
  got = weights.file_sha256(root / 'vgg_shallow.pth')
  assert err.startswith('error: ') and len(err.splitlines()) == 1
  assert f'has SHA-256 {got}, not the {want} of AdaIN vgg_normalised.pth' in err and '--allow_unverified' in err
  assert not weights.is_ported(tmp_path / 'w' / 'vgg')
  # --allow_unverified goes on, and the ported file says so.
  assert fetch('vgg', '--allow_unverified', out=tmp_path / 'w') == 0
  assert 'porting it anyway (--allow_unverified)' in capsys.readouterr().out
  vgg = sources(tmp_path / 'w' / 'vgg')['vgg']
  assert vgg['verified'] == 'unverified: --allow_unverified' and vgg['sha256'] == got


def test_from_a_file_fetched_by_hand_and_a_failed_download(table, upstream, tmp_path, capsys):
  root, base = upstream
  given = root / 'vgg_shallow.pth'
  table('adain/vgg_normalised.pth', 'nowhere/vgg_normalised.pth', sha256=weights.file_sha256(given))
  assert fetch('vgg', out=tmp_path / 'w') == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert f'from {base}/nowhere/vgg_normalised.pth failed (HTTP 404' in err and '--from=FILE' in err
  assert fetch('vgg', f'--from={given}', out=tmp_path / 'w') == 0
  vgg = sources(tmp_path / 'w' / 'vgg')['vgg']
  assert vgg['source'] == str(given) and vgg['verified'] == 'published'
  np.testing.assert_array_equal(weights.load_ported(tmp_path / 'w' / 'vgg').vgg['conv1_1']['bias'],
                                torch.load(given)['2.bias'].numpy())


def test_no_network_names_the_url_and_the_alternative(table, tmp_path, monkeypatch, capsys):
  with socket_closed() as url:
    entry = releases.FILES['adain/vgg_normalised.pth']
    monkeypatch.setitem(releases.FILES, entry.key, dataclasses.replace(entry, url=url))
    assert fetch('vgg', out=tmp_path / 'w') == 2
  err = capsys.readouterr().err
  assert f'from {url} failed (no connection' in err and '--from=FILE' in err


class socket_closed:  # pylint: disable=invalid-name
  """A loopback URL where nothing listens."""

  def __enter__(self):
    import socket  # pylint: disable=import-outside-toplevel
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port_ = s.getsockname()[1]
    return f'http://127.0.0.1:{port_}/vgg_normalised.pth'

  def __exit__(self, *exc):
    return False


def test_a_decoder_in_another_models_slot_is_caught(table, upstream, tmp_path, capsys):
  """AdaIN's decoder has the shapes of SANet's: only its hash tells them apart, in fetch and in port.convert."""
  root, _ = upstream
  table('adain/decoder.pth', 'decoder.pth')
  decoder = root / 'decoder.pth'
  assert fetch('sanet', f'--from={decoder}', out=tmp_path / 'w') == 2
  err = capsys.readouterr().err
  assert f"'{decoder}' is AdaIN decoder.pth, release v0.0.0" in err and 'decoder_iter_500000.pth' in err
  with pytest.raises(UserError, match=r"is AdaIN decoder\.pth, release v0\.0\.0 .*not sanet's decoder "
                                      r"\(decoder_iter_500000\.pth\)"):
    port.convert('sanet', vgg=root / 'vgg_normalised.pth', decoder=decoder, transforms=[decoder])
  # In its own slot it is named in the port's notes.
  ported = port.convert('adain', vgg=root / 'vgg_normalised.pth', decoder=decoder)
  assert 'decoder.pth: recognised AdaIN decoder.pth, release v0.0.0 by its SHA-256 (published).' in ported.notes


def test_trust_on_first_use_records_then_compares(table, upstream, tmp_path, capsys):
  root, _ = upstream
  table('adain/vgg_normalised.pth', 'vgg_shallow.pth', sha256='')  # no published hash
  pins = tmp_path / 'pins.json'
  assert fetch('vgg', out=tmp_path / 'w') == 0
  out = capsys.readouterr().out
  sha = weights.file_sha256(root / 'vgg_shallow.pth')
  assert 'no published SHA-256, so this file is UNVERIFIED' in out and f'recorded its SHA-256 {sha} in {pins}' in out
  assert json.loads(pins.read_text()) == {'adain/vgg_normalised.pth': sha}
  assert sources(tmp_path / 'w' / 'vgg')['vgg']['verified'] == 'unverified: first use'
  # The same file again matches the pin; another one is refused, naming the pin file.
  assert fetch('vgg', '--overwrite', out=tmp_path / 'w') == 0
  assert 'UNVERIFIED' not in capsys.readouterr().out
  assert sources(tmp_path / 'w' / 'vgg')['vgg']['verified'] == 'pinned'
  other = root / 'other.pth'
  assert fetch('vgg', '--overwrite', f'--from={other}', out=tmp_path / 'w') == 2
  err = capsys.readouterr().err
  assert f'has SHA-256 {weights.file_sha256(other)}, not the {sha} of AdaIN vgg_normalised.pth, release v0.0.0 (pinned in {pins})' in err


def test_missing_torch_names_the_port_extra(table, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, 'torch', None)  # import torch raises ImportError
  assert fetch('adain', out=tmp_path / 'w') == 2
  assert 'needs PyTorch: pip install "jaxtickets[port]"' in capsys.readouterr().err


@pytest.mark.e2e
def test_command_line_refuses_a_pinned_mismatch_with_exit_2(upstream, tmp_path):
  root, _ = upstream
  pins = tmp_path / 'pins.json'
  pins.write_text(json.dumps({'adain/vgg_normalised.pth': '0' * 64}))
  env = {**os.environ, releases.PINS_ENV: str(pins), releases.CACHE_ENV: str(tmp_path / 'cache'),
         'JAX_PLATFORMS': 'cpu'}
  run = subprocess.run([sys.executable, '-m', 'jaxtickets.weights', 'fetch', 'vgg',
                        f'--from={root / "vgg_shallow.pth"}', f'--out={tmp_path / "w"}'],
                       capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
  assert run.returncode == 2, run.stderr
  assert run.stderr.strip().splitlines()[-1].startswith('error: ') and '0' * 64 in run.stderr


def test_archives_folders_and_yandex_links(table, upstream, tmp_path, monkeypatch):
  """A file inside a served zip (in any folder: the archives' layout is not published), a folder given to --from,
  and a Yandex.Disk public link resolved through the API's {"href": ...} answer."""
  import zipfile  # pylint: disable=import-outside-toplevel
  root, base = upstream
  shallow = root / 'vgg_shallow.pth'
  with zipfile.ZipFile(root / 'models.zip', 'w') as z:
    z.write(shallow, 'models/vgg_normalised.pth')
  table('adain/vgg_normalised.pth', 'models.zip', sha256=weights.file_sha256(shallow))
  entry = releases.FILES['adain/vgg_normalised.pth']
  monkeypatch.setitem(releases.FILES, entry.key, dataclasses.replace(entry, member='vgg_normalised.pth'))
  assert fetch('vgg', out=tmp_path / 'zip') == 0
  assert sources(tmp_path / 'zip' / 'vgg')['vgg']['verified'] == 'published'
  folder = tmp_path / 'by_hand' / 'models'
  folder.mkdir(parents=True)
  (folder / 'vgg_normalised.pth').write_bytes(shallow.read_bytes())
  assert fetch('vgg', f'--from={tmp_path / "by_hand"}', out=tmp_path / 'folder') == 0
  assert sources(tmp_path / 'folder' / 'vgg')['vgg']['source'] == str(folder / 'vgg_normalised.pth')
  (root / 'yandex.json').write_text(json.dumps({'href': f'{base}/vgg_shallow.pth', 'method': 'GET'}))
  monkeypatch.setattr(releases, '_YANDEX', f'{base}/yandex.json?public_key=')
  monkeypatch.setitem(releases.FILES, entry.key, dataclasses.replace(entry, url='https://yadi.sk/d/x', yandex=True))
  monkeypatch.setenv(releases.CACHE_ENV, str(tmp_path / 'cache2'))  # not the zip's cached member
  assert fetch('vgg', out=tmp_path / 'yandex') == 0
  assert sources(tmp_path / 'yandex' / 'vgg')['vgg']['source'] == 'https://yadi.sk/d/x'
