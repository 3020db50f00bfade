"""Data parallelism: 8 fake devices give the 1-device results; multi-process start-up.

Two processes on one workdir (a pod) are tested end to end through the command line in test_main.py, and the
per-process split of the data in test_data.py."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxtickets import config as config_lib
from jaxtickets.store import checkpoint, workdir as workdir_lib
from jaxtickets.run import imp
from jaxtickets.core import parallel
from jaxtickets.errors import UserError

import _mp_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 600


def _launch(out, *args, devices=1):
  flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    env.pop(name, None)
  cmd = [sys.executable, os.path.join(HERE, "_mp_worker.py"), "--out", str(out), *map(str, args)]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc):
  try:
    output, _ = proc.communicate(timeout=TIMEOUT_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    output, _ = proc.communicate()
  assert proc.returncode == 0, output[-4000:]


def _load(out):
  with open(os.path.join(out, "run_0.json")) as f:
    run = json.load(f)
  with np.load(os.path.join(out, "params_0.npz")) as z:
    run["params"] = dict(z)
  return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The same 3 steps on 1 device here and on 8 fake devices; and a packed IMP of 2 replicates on the 8 devices
  against one run at a time here."""
  root = tmp_path_factory.mktemp("parallel")
  eight = root / "eight"
  eight.mkdir()
  proc = _launch(eight, "--imp_packed", root / "packed_eight", devices=8)
  # The 1-device reference runs here meanwhile (the test process has one CPU device).
  config = worker.config_for_tests()
  one = worker.train_steps(config)
  one["params"] = worker.flat(one.pop("params"))
  imp.run(config_lib.resolve(worker.packed_config_for_tests(pack_runs=False)), str(root / "sequential_one"))
  _wait(proc)
  return {"one": one, "eight": _load(eight), "sequential_one": root / "sequential_one",
          "packed_eight": root / "packed_eight"}


def _assert_params_close(got, want):
  """Equal up to float rounding: 1 and 8 devices sum the batch's gradients in a different order.

  (The tests' config sets Adam's eps to 1e-4, see worker.config_for_tests; with the default 1e-8, gradients that
  are zero up to rounding move weights by ~lr in a noise-given direction and runs differ by up to ~4e-4.)
  """
  assert got.keys() == want.keys()
  diff = np.concatenate([np.abs(got[k] - want[k]).ravel() for k in want])
  assert diff.max() < 1e-4, max(want, key=lambda k: np.abs(got[k] - want[k]).max())
  assert np.mean(diff <= 1e-6) > 0.9, np.mean(diff <= 1e-6)


@pytest.mark.e2e
def test_eight_devices_train_like_one(runs):
  one, eight = runs["one"], runs["eight"]
  assert one["device_count"] == 1 and eight["device_count"] == 8 and eight["process_count"] == 1
  assert eight["hashes"] == one["hashes"]  # the same global batches
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
  _assert_params_close(eight["params"], one["params"])
  moved = sum(int(np.sum(one["params"][k] != eight["params"][k])) for k in one["params"])
  assert one["losses"][0] != one["losses"][-1] and moved > 0  # the steps did train


def _flat_masks(ticket):
  return np.concatenate([np.asarray(m).ravel() for m in jax.tree.leaves(ticket.masks)])


@pytest.mark.e2e
def test_eight_devices_packed_two_by_four_give_the_sequential_runs_tickets(runs):
  """2 runs side by side ('runs' = 2) with each run's batch over 4 devices ('data' = 4), against one run after the
  other on one device: every ticket's masks identical, losses equal up to float rounding."""
  import csv

  assert runs["eight"]["packed_layout"] == [2, 2]  # 2 runs per step, 'runs' = 2 devices, so 'data' = 4
  seq, packed = str(runs["sequential_one"]), str(runs["packed_eight"])
  table = lambda d: [{k: r[k] for k in ("branch", "replicate", "round", "sparsity_prunable", "remaining_prunable")}
                     for r in csv.DictReader(open(os.path.join(d, "results.csv")))]
  assert table(packed) == table(seq) and len(table(seq)) == 2 * 2
  for rep in range(2):
    for round_ in (0, 1):
      a = checkpoint.load_ticket(workdir_lib.ticket_dir(seq, "imp", round_, rep))
      b = checkpoint.load_ticket(workdir_lib.ticket_dir(packed, "imp", round_, rep))
      assert jax.tree.structure(b.masks) == jax.tree.structure(a.masks)
      np.testing.assert_array_equal(_flat_masks(b), _flat_masks(a), err_msg=f"round {round_} rep {rep}")
      assert b.metrics["total"] == pytest.approx(a.metrics["total"], rel=1e-4)
      if round_ == 1:  # 20% of the prunable weights
        assert b.sparsity["prunable"]["sparsity"] == pytest.approx(0.2, abs=1e-3)
  # The replicates are different runs: a pack that mixed up its slots would give them the same masks.
  masks = [_flat_masks(checkpoint.load_ticket(workdir_lib.ticket_dir(packed, "imp", 1, rep))) for rep in range(2)]
  assert not np.array_equal(masks[0], masks[1])


def test_initialize_distributed_single_process_is_a_no_op(monkeypatch):
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  monkeypatch.setattr(parallel, "_cluster_detected", lambda: False)
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed("127.0.0.1:1234", 1, 0) is False
  assert calls == []


def test_initialize_distributed_reads_flags_then_env_and_detects_clusters(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  monkeypatch.setenv(parallel.ENV_COORDINATOR, "10.0.0.1:99")
  monkeypatch.setenv(parallel.ENV_NUM_PROCESSES, "4")
  monkeypatch.setenv(parallel.ENV_PROCESS_ID, "3")
  assert parallel.initialize_distributed() is True
  assert parallel.initialize_distributed(process_id=1) is True
  assert calls == [dict(coordinator_address="10.0.0.1:99", num_processes=4, process_id=3),
                   dict(coordinator_address="10.0.0.1:99", num_processes=4, process_id=1)]
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    monkeypatch.delenv(name)
  calls.clear()
  monkeypatch.setattr(parallel, "_cluster_detected", lambda: True)  # e.g. a TPU pod: JAX finds everything
  assert parallel.initialize_distributed() is True
  assert calls == [{}]


def test_initialize_distributed_is_idempotent(monkeypatch):
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("initialized twice"))
  assert parallel.initialize_distributed("127.0.0.1:1", 2, 0) is True


@pytest.mark.parametrize("args, env, words", [
    (("127.0.0.1:1", 2, None), {}, "process's id"),
    ((None, 2, 0), {}, "coordinator address"),
    (("127.0.0.1:1", 2, 2), {}, "not in [0, 2)"),
    (("127.0.0.1", 2, 0), {}, "HOST:PORT"),
    ((None, None, None), {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES"),
])
def test_initialize_distributed_bad_settings_name_the_fix(monkeypatch, args, env, words):
  for name in (parallel.ENV_COORDINATOR, parallel.ENV_NUM_PROCESSES, parallel.ENV_PROCESS_ID):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: pytest.fail("must not initialize"))
  with pytest.raises(UserError) as e:
    parallel.initialize_distributed(*args)
  assert words in str(e.value)


def test_replicate_never_aliases_and_survives_donation():
  mesh = parallel.make_mesh()
  host = np.arange(16, dtype=np.float32)
  dev = jax.numpy.arange(16, dtype=jax.numpy.float32)
  rh, rd = parallel.put_replicated(host, mesh), parallel.put_replicated(dev, mesh)
  host[0] = 99.0  # a later host write must not reach the device copy
  step = jax.jit(lambda a: a * 2.0, donate_argnums=0)
  out_h, out_d = step(rh), step(rd)
  assert float(out_h[0]) == 0.0 and float(out_d[1]) == 2.0
  assert not dev.is_deleted()  # donating the replica must not delete the caller's array
  np.testing.assert_array_equal(np.asarray(dev), np.arange(16))
  assert rh.sharding == parallel.replicated(mesh)


def test_shard_batch_and_batch_size_check(monkeypatch):
  mesh = parallel.make_mesh()
  batch = {"content": np.ones((4, 2, 2, 3), np.float32)}
  sharded = parallel.shard_batch(batch, mesh)
  assert sharded["content"].sharding == parallel.batch_sharding(mesh) and sharded["content"].shape == (4, 2, 2, 3)
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,) * 2
  assert mesh.axis_names == (parallel.RUNS_AXIS, parallel.DATA_AXIS) and mesh.shape[parallel.RUNS_AXIS] == 1
  parallel.check_batch_size(jax.device_count() * 3)
  monkeypatch.setattr(jax, "device_count", lambda: 8)
  with pytest.raises(UserError, match="batch_size = 12 does not split over 8 devices.*multiple of 8"):
    parallel.check_batch_size(12)


def test_make_mesh_takes_the_devices_given_and_refuses_a_runs_axis_that_does_not_divide_them():
  devices = jax.devices()
  mesh = parallel.make_mesh(1, devices=devices[:1])
  assert mesh.shape == {parallel.RUNS_AXIS: 1, parallel.DATA_AXIS: 1} and list(mesh.devices.flat) == devices[:1]
  with pytest.raises(UserError, match=f"A mesh of {len(devices) + 1} runs side by side does not divide the "):
    parallel.make_mesh(len(devices) + 1)
