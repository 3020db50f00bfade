"""Helpers the tests import: the tiny config, the shared command-line run's arguments, and small checks.

tests/conftest.py keeps the environment (compiler flags, tcmalloc, the compilation cache) and the fixtures.
"""

import os

from jaxtickets import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name: str):
  """scripts/<name>.py as a module (the scripts are no package)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(**overrides):
  """AdaIN at 1/16 width with the demo loss network on 32 px crops of the embedded demo images, 3 steps per round,
  Adam's eps 1e-4."""
  c = config_lib.default_config()
  c.model.name = "adain"
  c.model.width = 1 / 16
  c.model.vgg_weights = "demo"  # the loss network made here at this width (scripts/make_demo_vgg.py)
  c.data.content = c.data.style = c.data.eval_content = c.data.eval_style = "demo"
  c.data.load_size = 40
  c.data.crop_size = 32
  c.train.batch_size = 2
  c.train.steps = 3
  c.train.lr = 1e-3
  # Adam's eps above rounding noise (as CLI_ARGS): runs compared across layouts give the same masks, and every
  # tiny AdaIN run of a process shares one compiled step (eps is a constant of the step's program).
  c.train.adam_eps = 1e-4
  c.train.log_every = 1
  c.imp.rounds = 3
  c.imp.replicates = 1
  c.eval.num_pairs = 2
  c.eval.batch_size = 2
  for key, value in overrides.items():
    section, name = key.split("__") if "__" in key else (None, key)
    (c[section] if section else c)[name] = value
  if c.model.name != "adain" and c.model.vgg_weights == "demo":
    c.model.vgg_weights = ""  # the demo loss network stops at relu4_1; the other models read relu5_1
  return c


def tiny_settings(**overrides):
  """tiny_config(**overrides) resolved: the settings.RunSettings the code below the entry takes."""
  return config_lib.resolve(tiny_config(**overrides))


EARLY_BIRD = dict(imp__early_bird=True, imp__early_bird_every=1, imp__early_bird_epsilon=0.99,
                  imp__early_bird_patience=1)  # any two masks count as settled: a dense round of 3 steps stops at 2


def assert_early_bird_and_stability_work(workdir: str, round_: int) -> None:
  """For a run made with EARLY_BIRD: its dense round recorded the stop, and the stability of `round_` measures."""
  import json  # pylint: disable=g-import-not-at-top

  import numpy as np  # pylint: disable=g-import-not-at-top

  from jaxtickets.run import stability  # pylint: disable=g-import-not-at-top

  with open(os.path.join(workdir, "summary.json")) as f:
    (bird,) = json.load(f)["early_bird"]
  assert bird["early_bird_step"] == 2 and bird["steps_trained"] == 2 and len(bird["history"]) == 1
  (row,) = stability.run(workdir, rounds=[round_], points=3)
  assert row["round"] == round_ and len(row["path"]) == 3 and np.all(np.isfinite(row["path"]))


# The command-line run of the end-to-end tests (test_main.py: pods; test_resume.py: kill -9, signals): AdaIN at 1/16
# width on 32 px crops, 6 steps per round with a checkpoint every 2, one pruned round, IMP and random pruning, 2
# replicates. Adam's eps is above rounding noise, so every layout (packed, unpacked, 2 processes) gives the same masks.
CLI_ARGS = ["--config=configs/adain.py:demo", "--config.model.width=0.0625", "--config.data.load_size=40",
            "--config.data.crop_size=32", "--config.train.batch_size=2", "--config.train.steps=6",
            "--config.train.log_every=1", "--config.checkpoint.every_steps=2", "--config.imp.rounds=1",
            "--config.imp.branches=imp,random_prune", "--config.imp.replicates=2", "--config.eval.num_pairs=2",
            "--config.train.adam_eps=1e-4"]


def state_checkpoints(workdir) -> dict:
  """{step: meta} of a workdir's finalized train-state checkpoints: Orbax writes a step into a temporary directory
  and renames it to the step when complete."""
  import glob  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top

  found = {}
  for d in glob.glob(os.path.join(workdir, "state", "*")):
    name = os.path.basename(d)
    try:
      if name.isdigit():
        with open(os.path.join(d, "meta", "metadata")) as f:
          found[int(name)] = json.load(f)
    except (OSError, ValueError):
      pass  # deleted or being replaced while we looked
  return found


def cli_env() -> dict:
  """The children's environment: CPU only, unbuffered output (tests read it while the run goes on)."""
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")


def make_train_step(model, train_config, tx, mesh):
  """The plain jitted step of one run, replicated over `mesh`: step(state, masks, vgg_params, batch, key) ->
  (state, metrics). Runs train in packs (train.make_packed_step); this is the one-run reference they are held to."""
  import jax  # pylint: disable=g-import-not-at-top

  from jaxtickets.core import parallel  # pylint: disable=g-import-not-at-top
  from jaxtickets.run import train

  replicated = parallel.replicated(mesh)
  return jax.jit(train.masked_step(model, train_config, tx), donate_argnums=(0,),
                 out_shardings=(replicated, replicated))


class StopAfter:
  """A PreemptionWatch whose SIGTERM arrives during `step` (of the first pack that gets there): the train loop asks
  it, saves and raises Preempted as for a real signal."""

  def __init__(self, step):
    self.step, self.reason = step, None

  def __call__(self, step, synced):  # pylint: disable=unused-argument
    if step == self.step:
      self.reason = "SIGTERM"
    return self.reason is not None


def assert_same_ticket(ta, tb, *, atol: float, what: str = "") -> None:
  """Two tickets alike: masks and rewind weights exactly, trained weights to rtol 1e-5 and `atol`."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  for x, y in zip(jax.tree.leaves(ta.masks), jax.tree.leaves(tb.masks)):
    np.testing.assert_array_equal(x, y, err_msg=what)
  for x, y in zip(jax.tree.leaves(ta.rewind_params), jax.tree.leaves(tb.rewind_params)):
    np.testing.assert_array_equal(x, y, err_msg=what)
  for x, y in zip(jax.tree.leaves(ta.trained_params), jax.tree.leaves(tb.trained_params)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol, err_msg=what)
