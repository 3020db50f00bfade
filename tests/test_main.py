"""The command line: bad input ends with one clear sentence, not a traceback."""

import os
import subprocess
import sys

import pytest
from PIL import Image

from jaxtickets import imp
from jaxtickets.errors import UserError
from conftest import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "jaxtickets.main", *args], cwd=cwd, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.parametrize("override,expected", [
    ("--config.model.name=adan", "config.model.name = 'adan' is not allowed: choose one of adain"),
    ("--config.imp.rounds=-1", "config.imp.rounds = -1 is not allowed: use an integer >= 0"),
    ("--config.data.content=/no/such/folder", "config.data.content = '/no/such/folder' does not exist"),
    ("--config.train.nan_policy=ignore", "config.train.nan_policy = 'ignore' is not allowed: choose one of stop"),
])
def test_cli_bad_input_is_one_sentence(tmp_path, override, expected):
  r = run_main("--config=configs/adain.py:demo", f"--workdir={tmp_path}", override)
  assert r.returncode != 0
  assert expected in r.stderr
  assert "Traceback" not in r.stderr


def test_cli_without_data_names_the_fields_and_the_demo(tmp_path):
  r = run_main("--config=configs/adain.py", f"--workdir={tmp_path}")
  assert r.returncode != 0
  assert "set config.data.content and config.data.style" in r.stderr and "configs/adain.py:demo" in r.stderr
  assert "Traceback" not in r.stderr


def test_folder_without_images_is_named(tmp_path):
  empty = tmp_path / "styles"
  empty.mkdir()
  (empty / "notes.txt").write_text("not an image")
  config = tiny_config(data__style=str(empty), data__eval_style="demo")
  with pytest.raises(UserError, match="styles"):
    imp.run(config, str(tmp_path / "run"))


def test_image_folders_train_end_to_end(tmp_path):
  """Content and style from folders of Pillow-written images (grayscale and RGBA among them)."""
  for kind in ("content", "style"):
    folder = tmp_path / kind / "sub"
    folder.mkdir(parents=True)
    for i, mode in enumerate(["RGB", "L", "RGBA", "RGB"]):
      Image.new(mode, (48 + 8 * i, 40), color=(40 * i + 10) if mode == "L" else (40 * i, 20, 200 - 40 * i, 255)[
          :len(mode)]).save(folder / f"{i}.png")
  config = tiny_config(data__content=str(tmp_path / "content"), data__style=str(tmp_path / "style"),
                       data__eval_content="", data__eval_style="", imp__rounds=1)
  config.eval.num_pairs = 1
  rows = imp.run(config, str(tmp_path / "run"))
  assert [(r["branch"], r["round"]) for r in rows] == [("imp", 0), ("imp", 1)]


def test_two_processes_on_one_workdir_from_the_command_line(tmp_path):
  """How a pod runs it: the same command per process on one shared workdir; process 0 writes the shared files."""
  import socket

  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  args = ["--config=configs/adain.py:demo", "--config.model.width=0.0625", "--config.data.load_size=40",
          "--config.data.crop_size=32", "--config.train.batch_size=2", "--config.train.steps=2",
          "--config.imp.rounds=1", "--config.imp.branches=imp,random_prune", "--config.imp.replicates=2",
          "--config.eval.num_pairs=2", f"--workdir={tmp_path / 'w'}", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "jaxtickets.main", *args, f"--process_id={i}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, out + err
  import csv

  with open(tmp_path / "w" / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted((r["branch"], r["replicate"], r["round"]) for r in rows) == sorted(
      [("imp", rep, r) for rep in "01" for r in "01"] + [("random_prune", rep, "1") for rep in "01"])
  assert (tmp_path / "w" / "report.md").exists() and (tmp_path / "w" / "summary.csv").exists()
  assert "Highest matching sparsity (imp)" in outs[0][0] and "Highest matching sparsity" not in outs[1][0]
