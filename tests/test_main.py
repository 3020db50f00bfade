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
