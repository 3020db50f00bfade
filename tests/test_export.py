"""Export: a 3-round ticket as values + bit-packed masks, smaller than dense, loading back bit for bit."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtickets import export
from jaxtickets.tickets import inference
from jaxtickets.errors import UserError
from helpers import tiny_config
from test_inference import make_workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ticket(tmp_path_factory):
  path, _, _, _, trained, masks = make_workdir(tmp_path_factory.mktemp("run"), tiny_config(), rounds=3)
  return path, trained, masks


def _images():
  rng = np.random.default_rng(0)
  return rng.random((1, 37, 45, 3), dtype=np.float32), rng.random((1, 32, 24, 3), dtype=np.float32)


@pytest.mark.parametrize("ext", [".npz", ".safetensors"])
def test_export_is_smaller_than_dense_and_round_trips_exactly(tmp_path, ticket, ext):
  path, trained, masks = ticket
  out = str(tmp_path / f"ticket{ext}")
  sizes = export.export_ticket(path, out)
  leaves_p, leaves_m = jax.tree.leaves(trained), [np.asarray(m) for m in jax.tree.leaves(masks)]
  n_all = sum(p.size for p in leaves_p)
  kept = sum(int(m.sum()) for m in leaves_m)
  assert 0.45 < 1 - kept / n_all < 0.5  # three rounds of 20%: 48.8% of the prunable weights
  dense_bytes = 4 * n_all
  assert sizes["dense"] == dense_bytes and sizes["vgg"] == 0  # a trained encoder needs no VGG to stylize
  mask_bytes = sum(-(-m.size // 8) for m in leaves_m if not m.all())
  assert sizes["values"] + sizes["unpruned"] == 4 * kept and sizes["masks"] == mask_bytes
  loaded = export.load_export(out)
  n_tensors = len(leaves_p) + sum(1 for m in leaves_m if not m.all())
  overhead = len(json.dumps(loaded.metadata)) + 320 * n_tensors + 1024  # JSON metadata, zip/npy/safetensors headers
  file_size = os.path.getsize(out)
  assert file_size == sizes["file"]
  assert file_size <= dense_bytes * kept / n_all + mask_bytes + overhead
  assert file_size < 0.8 * dense_bytes
  # The params and masks come back bit for bit, and so do the stylized outputs.
  for got, want in zip(jax.tree.leaves(loaded.params), leaves_p):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
  for got, want in zip(jax.tree.leaves(loaded.masks), leaves_m):
    np.testing.assert_array_equal(got, want)
  content, style = _images()
  np.testing.assert_array_equal(inference.Stylizer.from_export(out).stylize(content, style),
                                inference.Stylizer.from_ticket(path).stylize(content, style))


def test_a_fixed_encoder_exports_the_vgg(tmp_path):
  path, *_ = make_workdir(tmp_path / "run", tiny_config(model__train_encoder=False), rounds=1)
  out = str(tmp_path / "fixed.npz")
  sizes = export.export_ticket(path, out)
  assert sizes["vgg"] > 0
  loaded = export.load_export(out)
  source = inference.Stylizer.from_ticket(path)
  for got, want in zip(jax.tree.leaves(loaded.vgg_params), jax.tree.leaves(source.vgg_params)):
    np.testing.assert_array_equal(got, want)
  content, style = _images()
  np.testing.assert_array_equal(inference.Stylizer.from_export(out).stylize(content, style),
                                source.stylize(content, style))


def test_size_table_and_bad_files(tmp_path, ticket):
  table = export.format_sizes({"dense": 1000, "values": 400, "masks": 30, "unpruned": 100, "vgg": 0, "kept": 125,
                               "pruned": 125, "file": 600}, "t.npz")
  assert "dense float32 model" in table and "60.0%" in table and "headers and metadata" in table
  with pytest.raises(UserError, match="name the file .npz or .safetensors"):
    export.export_ticket(ticket[0], str(tmp_path / "t.zip"))
  with pytest.raises(UserError, match="No export file at"):
    export.load_export(str(tmp_path / "missing.npz"))
  np.savez(tmp_path / "other.npz", a=np.zeros(3))
  with pytest.raises(UserError, match="is not a jaxtickets export"):
    export.load_export(str(tmp_path / "other.npz"))
  # A folder that cannot be made (a file stands in its way) is the user's sentence, and leaves nothing behind.
  (tmp_path / "file").write_text("")
  with pytest.raises(UserError, match=r"Could not write '.*file/t.npz' .*: choose a writable path"):
    export.export_ticket(ticket[0], str(tmp_path / "file" / "t.npz"))


@pytest.mark.e2e
def test_cli_prints_the_size_table_and_one_sentence_errors(tmp_path, ticket):
  run = lambda *a: subprocess.run([sys.executable, "-m", "jaxtickets.export", *a], cwd=ROOT, capture_output=True,
                                  text=True, timeout=300)
  r = run(f"--ticket={tmp_path / 'nope'}", f"--out={tmp_path / 'x.npz'}")
  assert r.returncode != 0 and f"error: No ticket at '{tmp_path / 'nope'}'" in r.stderr
  assert "Traceback" not in r.stderr
  r = run(f"--ticket={ticket[0]}", f"--out={tmp_path / 'x.safetensors'}")
  assert r.returncode == 0, r.stderr
  assert "dense float32 model" in r.stdout and "file x.safetensors" in r.stdout
  assert os.path.isfile(tmp_path / "x.safetensors")
