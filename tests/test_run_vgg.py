"""A run records its VGG (WORKDIR/vgg.json: path, SHA-256, released or not, the launch directory); its tickets find
that VGG from any directory, --vgg_weights points elsewhere, and a file of another hash is refused."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.run import imp
from jaxtickets.tickets import inference
from jaxtickets.weights import files as weights
from jaxtickets.store import workdir as workdir_lib
from jaxtickets.errors import UserError
from helpers import ROOT, tiny_config

pytestmark = pytest.mark.e2e  # every test reads one whole tiny IMP run

WIDTH = 1 / 16


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory):
  """A tiny run launched from its own directory with config.model.vgg_weights = 'weights/vgg.npz' (relative), a
  copy of the demo loss network: (launch directory, workdir, round 1's ticket)."""
  launch = tmp_path_factory.mktemp("launch")
  os.makedirs(launch / "weights")
  shutil.copy(weights.demo_vgg_path(WIDTH), launch / "weights" / "vgg.npz")
  workdir = str(launch / "runs" / "tiny")
  here = os.getcwd()
  os.chdir(launch)
  try:
    imp.run(config_lib.resolve(tiny_config(imp__rounds=1, train__steps=1, model__vgg_weights="weights/vgg.npz")), workdir)
  finally:
    os.chdir(here)
  return launch, workdir, workdir_lib.ticket_dir(workdir, "imp", 1, 0)


def other_vgg(path) -> str:
  """The demo loss network with one bias changed: the same shapes, another file."""
  arrays = weights.read_npz(weights.demo_vgg_path(WIDTH))
  arrays["conv1_1/bias"] = arrays["conv1_1/bias"] + 1.0
  weights.write_npz(str(path), arrays)
  return str(path)


def test_the_run_records_its_vgg(relative_run):
  launch, workdir, _ = relative_run
  with open(workdir_lib.vgg_record_path(workdir)) as f:
    rec = json.load(f)
  sha = weights.file_sha256(launch / "weights" / "vgg.npz")
  assert rec == {"vgg_weights": "weights/vgg.npz", "path": str(launch / "weights" / "vgg.npz"), "sha256": sha,
                 "release": "", "verified": "unverified: not a released file", "launch_dir": str(launch)}
  assert weights.vgg_record_note(workdir) == f"; SHA-256 `{sha}`, not a released file (unverified: not a released file)"


def test_a_ticket_stylizes_from_another_directory(relative_run, tmp_path, monkeypatch):
  launch, _, ticket = relative_run
  monkeypatch.chdir(tmp_path)  # 'weights/vgg.npz' does not exist here
  st = inference.Stylizer.from_ticket(ticket)
  want = weights.load_vgg_weights(launch / "weights" / "vgg.npz", st.vgg_params)
  np.testing.assert_array_equal(st.vgg_params["conv1_1"]["kernel"], want["conv1_1"]["kernel"])
  image = np.random.default_rng(0).uniform(size=(32, 32, 3)).astype(np.float32)
  assert np.isfinite(st.stylize(image, image)).all()


def test_moved_weights_are_named_and_vgg_weights_points_at_them(relative_run, tmp_path, monkeypatch):
  launch, workdir, ticket = relative_run
  monkeypatch.chdir(tmp_path)
  moved = tmp_path / "elsewhere.npz"
  os.replace(launch / "weights" / "vgg.npz", moved)
  try:
    with pytest.raises(UserError, match=r"The run's VGG weights 'weights/vgg.npz' are not at .*vgg\.npz nor .* pass "
                                        r"--vgg_weights=PATH to point at them\."):
      inference.Stylizer.from_ticket(ticket)
    st = inference.Stylizer.from_ticket(ticket, vgg_weights="elsewhere.npz")  # relative to the caller: typed here
    assert st.vgg_params["conv1_1"]["bias"].shape == (4,)
  finally:
    os.replace(moved, launch / "weights" / "vgg.npz")


def test_vgg_weights_of_another_hash_are_refused(relative_run, tmp_path):
  launch, workdir, ticket = relative_run
  wrong = other_vgg(tmp_path / "wrong.npz")
  want, got = weights.file_sha256(launch / "weights" / "vgg.npz"), weights.file_sha256(wrong)
  with pytest.raises(UserError) as e:
    inference.Stylizer.from_ticket(ticket, vgg_weights=wrong)
  msg = str(e.value)
  assert msg == (f"VGG weights '{wrong}' have SHA-256 {got}, not the {want} the run recorded in "
                 f"{os.path.join(workdir, 'vgg.json')}: pass --vgg_weights=PATH of the file it trained with, or "
                 "--allow_vgg_mismatch to go on with these.")
  st = inference.Stylizer.from_ticket(ticket, vgg_weights=wrong, allow_vgg_mismatch=True)
  assert float(st.vgg_params["conv1_1"]["bias"][0]) == pytest.approx(
      float(weights.read_npz(wrong)["conv1_1/bias"][0]))


def test_a_resume_with_another_vgg_file_is_refused(tmp_path):
  config = tiny_config(model__vgg_weights=str(tmp_path / "a.npz"))
  shutil.copy(weights.demo_vgg_path(WIDTH), tmp_path / "a.npz")
  spec = config_lib.resolve(config).model
  record = lambda allow: workdir_lib.check_resume_vgg(weights.describe_vgg(spec.vgg_weights, spec.width),
                                                       str(tmp_path), allow, log=logged.append)
  logged = []
  first = record(False)
  assert workdir_lib.load_vgg_record(str(tmp_path)) == first and first["launch_dir"] == os.getcwd()
  other_vgg(tmp_path / "a.npz")  # the same path, another file
  with pytest.raises(UserError, match=rf"trained with a VGG of SHA-256 {first['sha256']}, but .* --allow_config_change"):
    record(False)
  assert workdir_lib.load_vgg_record(str(tmp_path)) == first  # a refused resume leaves the record as it was
  record(True)
  assert "resuming" in logged[0] and workdir_lib.load_vgg_record(str(tmp_path))["sha256"] != first["sha256"]


@pytest.mark.e2e
def test_cli_stylizes_a_ticket_from_another_directory_and_refuses_a_wrong_vgg(relative_run, tmp_path):
  _, _, ticket = relative_run
  from PIL import Image  # pylint: disable=import-outside-toplevel
  Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "c.png")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  base = [sys.executable, "-m", "jaxtickets.stylize", f"--ticket={ticket}", "--content=c.png", "--style=c.png",
          "--size=32"]
  r = subprocess.run(base + ["--out=out.png"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr
  assert (tmp_path / "out.png").exists()
  r = subprocess.run(base + [f"--vgg_weights={other_vgg(tmp_path / 'wrong.npz')}", "--out=out2.png"], cwd=tmp_path,
                     env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode != 0 and "--allow_vgg_mismatch" in r.stderr and "Traceback" not in r.stderr
  assert not (tmp_path / "out2.png").exists()


def test_the_same_run_resumes_from_another_directory(relative_run, tmp_path, monkeypatch, capsys):
  """The relative 'weights/vgg.npz' is not there from another directory: the run's vgg.json says where it was, and
  the resumed run finds every round done (the path may differ; the hash may not)."""
  from jaxtickets import config as config_lib, main
  launch, workdir, _ = relative_run
  monkeypatch.chdir(tmp_path)
  config = tiny_config(imp__rounds=1, train__steps=1, model__vgg_weights="weights/vgg.npz")
  with pytest.raises(UserError, match="weights/vgg.npz' does not exist"):
    config_lib.validate(config)
  run_settings = main.resolve_run(config, workdir)  # what the command does on every host before the run
  assert run_settings.model.vgg_weights == str(launch / "weights" / "vgg.npz")
  assert "where the run in" in capsys.readouterr().out
  assert config.model.vgg_weights == "weights/vgg.npz"  # the caller's config is left as it was
  rows = imp.run(run_settings, workdir)
  assert {(r["branch"], r["round"]) for r in rows} == {("imp", 0), ("imp", 1)}
  other_vgg(tmp_path / "other.npz")
  with pytest.raises(UserError, match="SHA-256"):  # another file under the same name is still refused
    imp.run(config_lib.resolve(tiny_config(imp__rounds=1, train__steps=1, model__vgg_weights=str(tmp_path / "other.npz"))), workdir)


def test_a_study_resumes_from_another_directory(relative_run, tmp_path, monkeypatch, capsys):
  """A study with a relative config.model.vgg_weights, launched where that path exists, resumes from a directory
  where it does not: each sub-run finds the VGG where it trained with it, and nothing trains again."""
  from jaxtickets import study  # pylint: disable=import-outside-toplevel
  launch, _, _ = relative_run
  spec = importlib.util.spec_from_file_location("study_adain", os.path.join(ROOT, "configs", "study_adain.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("demo")
  c.comparisons, c.baselines, c.reports = "baselines", "", False
  c.overrides = {"model": {"width": WIDTH, "vgg_weights": "weights/vgg.npz"},
                 "data": {"load_size": 40, "crop_size": 32},
                 "train": {"steps": 2, "batch_size": 2, "log_every": 1, "lr": 1e-3, "adam_eps": 1e-4},
                 "imp": {"rounds": 1, "replicates": 1}, "eval": {"num_pairs": 2, "batch_size": 2}}
  workdir = str(launch / "runs" / "study")
  monkeypatch.chdir(launch)
  study.run(c, workdir)
  ticket = workdir_lib.ticket_dir(os.path.join(workdir, "adain", "reference"), "imp", 1, 0)
  before = os.path.getmtime(ticket)
  monkeypatch.chdir(tmp_path)  # 'weights/vgg.npz' does not exist here
  capsys.readouterr()
  study.run(c, workdir)
  out = capsys.readouterr().out
  assert "where the run in" in out and "already done" in out
  assert os.path.getmtime(ticket) == before
