"""TensorBoard event files: the scalars and images the Monitor writes, read back from the files."""

import glob
import os
import struct

import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from jaxtickets import config as config_lib
from jaxtickets.run import train
from jaxtickets.run.monitor import Monitor
from helpers import tiny_config


def read_events(folder):
  """{tag: [(step, value or 'image')]} from the TFRecord-framed event files in `folder`."""
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack("<Q", data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4  # length, its CRC, the record, its CRC
      for v in event.summary.value:
        value = "image" if v.HasField("image") else v.simple_value
        out.setdefault(v.tag, []).append((event.step, value))
  return out


def test_training_and_round_scalars_and_images(tmp_path):
  config = tiny_config()
  with Monitor(str(tmp_path), enabled=True) as mon:
    lr = lambda step: float(train.learning_rate(config_lib.resolve(config).step, step))
    mon.train_step("imp", 2, 5, {"total": np.float32(1.5), "content": 0.25, "style": np.array(0.125)}, lr(5), 3.0)
    mon.train_step("imp", 2, 10, {"total": 1.25, "content": 0.2, "style": 0.1, "lr": np.float32(lr(10))},
                   steps_per_sec=4.0)  # the packed loop passes the step's own lr among the metrics
    report = {"layers": {"decoder/conv1_1/kernel": {"sparsity": 0.36}}, "prunable": {"sparsity": 0.36},
              "total": {"sparsity": 0.35}}
    images = np.random.default_rng(0).random((6, 16, 16, 3), dtype=np.float32)
    mon.round_end("imp", 2, {"total": 1.1, "content": 0.2, "branch": "imp", "matches": True}, report, images)
  train_events = read_events(tmp_path / "tensorboard" / "imp" / "round_02")
  assert train_events["train/total"] == [(5, 1.5), (10, 1.25)]
  assert train_events["train/style"] == [(5, 0.125), (10, pytest.approx(0.1))]
  assert train_events["train/steps_per_sec"] == [(5, 3.0), (10, 4.0)]
  lrs = [v for _, v in train_events["train/lr"]]
  np.testing.assert_allclose(lrs, [float(train.learning_rate(config_lib.resolve(config).step, s)) for s in (5, 10)], rtol=1e-6)
  rounds = read_events(tmp_path / "tensorboard" / "imp")
  assert rounds["eval/total"] == [(2, pytest.approx(1.1))] and rounds["eval/matches"] == [(2, 1.0)]
  assert "eval/branch" not in rounds  # strings are not scalars
  assert rounds["sparsity/prunable"] == [(2, pytest.approx(0.36))]
  assert rounds["layer_sparsity/decoder/conv1_1/kernel"] == [(2, pytest.approx(0.36))]
  assert [v for _, v in rounds["stylized"]] == ["image"]


def test_disabled_monitor_writes_nothing(tmp_path):
  mon = Monitor(str(tmp_path), enabled=False)
  mon.train_step("imp", 0, 1, {"total": 1.0}, lr=1e-4, steps_per_sec=2.0)
  mon.round_end("imp", 0, {"total": 1.0}, None, np.zeros((1, 8, 8, 3)))
  mon.close()
  assert not os.listdir(tmp_path)
  assert Monitor(str(tmp_path)).enabled  # process 0 of 1 writes by default


@pytest.mark.e2e
def test_writing_events_does_not_import_torch(tmp_path):
  """tensorboardX would import PyTorch (slow) when it is installed; the monitor keeps it out, and torch still imports
  afterwards for whoever needs it (porting weights)."""
  import subprocess
  import sys

  code = ("import importlib.util, sys; from jaxtickets.run import monitor; m = monitor.Monitor(sys.argv[1], enabled=True); "
          "m.scalars('run', 1, {'total': 1.5}, 'train'); m.close(); print('torch' in sys.modules); "
          "installed = importlib.util.find_spec('torch') is not None; installed and __import__('torch'); "
          "print(not installed or 'torch' in sys.modules)")
  r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
  assert r.returncode == 0, r.stderr
  assert r.stdout.split() == ["False", "True"]  # not imported by the monitor; importable afterwards
  assert any(f.name.startswith("events.out.tfevents") for f in (tmp_path / "tensorboard" / "run").iterdir())
