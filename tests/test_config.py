"""Config validation: each bad value gives one sentence naming the field."""

import dataclasses
import json
import re

import pytest

from jaxtickets import config as config_lib, settings
from jaxtickets.errors import UserError
from helpers import tiny_config


def variant_config(name, variant=""):
  import importlib.util, pathlib
  spec = importlib.util.spec_from_file_location(f"{name}_cfg", pathlib.Path(__file__).parent.parent / f"configs/{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(variant)


def demo():
  return variant_config("adain", "demo")


MODEL_CONFIGS = [(name, variant) for name in ("adain", "sanet", "lst", "manet", "adaattn", "mccnet")
                 for variant in ("", "demo")] + [("adain", "cpu_study")]


@pytest.mark.parametrize("name,variant", MODEL_CONFIGS)
def test_every_config_file_and_variant_is_valid(name, variant):
  """Every configs/<model>.py, paper scale and demo: valid as it is (paper scale once its data is set)."""
  config = variant_config(name, variant)
  assert config.model.name == name
  if not variant:  # paper scale names no data: the user points it at COCO and WikiArt
    with pytest.raises(UserError, match="No training data is configured"):
      config_lib.validate(config)
    config.data.content, config.data.style = "demo", "demo"
    assert config.train.steps >= 10_000 and config.data.crop_size == 256
  config_lib.validate(config)


def test_pick_variant_applies_only_the_named_variant_and_names_the_choices():
  variants = {"demo": lambda c: setattr(c.train, "steps", 7), "tiny": lambda c: setattr(c.model, "width", 0.25)}
  paper = config_lib.pick_variant(config_lib.default_config(), "", variants, "configs/x.py")
  assert paper.train.steps == config_lib.default_config().train.steps and paper.model.width == 1.0
  demo = config_lib.pick_variant(config_lib.default_config(), "demo", variants, "configs/x.py")
  assert demo.train.steps == 7 and demo.model.width == 1.0
  with pytest.raises(ValueError, match=r"Unknown variant 'dmeo' of configs/x.py: use '' \(paper scale\) or one of "
                     r"'demo', 'tiny'\."):
    config_lib.pick_variant(config_lib.default_config(), "dmeo", variants, "configs/x.py")


@pytest.mark.parametrize("name", ["adain", "sanet", "lst", "manet", "adaattn", "mccnet", "study_adain"])
def test_every_config_file_names_its_variants_when_one_is_unknown(name):
  with pytest.raises(ValueError, match=rf"Unknown variant 'nope' of configs/{name}.py: use '' \(paper scale\) or "
                     "one of 'demo'"):
    variant_config(name, "nope")


def test_paper_scale_defaults_give_replicates_and_enough_pairs():
  paper = config_lib.default_config()
  assert paper.imp.replicates >= 3 and paper.eval.num_pairs >= 64 and paper.sparsity.layer_cap == 1.0
  assert paper.imp.rewind_step == 0  # the paper's rewind point


@pytest.mark.parametrize("field,value,expected", [
    ("model.name", "adan", "config.model.name = 'adan' is not allowed: choose one of adain"),
    ("imp.rounds", -1, "config.imp.rounds = -1 is not allowed: use an integer >= 0"),
    ("sparsity.fraction", 1.5, "config.sparsity.fraction = 1.5 is not allowed: use a fraction in (0, 1)"),
    ("sparsity.fraction", 0.0, "config.sparsity.fraction = 0.0 is not allowed"),
    ("sparsity.method", "l2", "config.sparsity.method = 'l2' is not allowed: choose one of global, layerwise"),
    ("sparsity.scope", "encoder,decodr", "config.sparsity.scope names 'decodr'"),
    ("sparsity.scope", "", "config.sparsity.scope = '' is not allowed"),
    ("imp.branches", "imp,random", "config.imp.branches = 'random' is not allowed"),
    ("imp.rewind_step", 1000, "config.imp.rewind_step = 1000 is not allowed: use an integer in [0, train.steps = "),
    ("imp.match_tolerance", -0.1, "config.imp.match_tolerance = -0.1 is not allowed"),
    ("imp.replicates", 0, "config.imp.replicates = 0 is not allowed: use an integer >= 1"),
    ("imp.replicates", 2.0, "config.imp.replicates = 2.0 is not allowed"),
    ("sparsity.layer_cap", 0.0, "config.sparsity.layer_cap = 0.0 is not allowed: use a fraction in (0, 1]"),
    ("sparsity.layer_cap", 1.5, "config.sparsity.layer_cap = 1.5 is not allowed"),
    ("imp.target_sparsity", 1.0, "config.imp.target_sparsity = 1.0 is not allowed"),
    ("train.batch_size", 0, "config.train.batch_size = 0 is not allowed: use a positive integer"),
    ("train.steps", 0, "config.train.steps = 0 is not allowed"),
    ("train.lr", -1.0, "config.train.lr = -1.0 is not allowed"),
    ("model.dtype", "float16", "config.model.dtype = 'float16' is not allowed: choose one of float32, bfloat16"),
    ("model.width", 0.0, "config.model.width = 0.0 is not allowed"),
    ("data.crop_size", 60, "config.data.crop_size = 60 is not a multiple of 8, which adain needs"),
    ("data.crop_size", 128, "config.data.crop_size = 128 is larger than config.data.load_size = 96"),
    ("eval.num_pairs", 0, "config.eval.num_pairs = 0 is not allowed"),
    ("model.vgg_weights", "/nonexistent/vgg", "config.model.vgg_weights = '/nonexistent/vgg' does not exist"),
    ("data.content", "", "No training data is configured: set config.data.content"),
    # Resuming, preemption and robustness fields.
    ("train.nan_policy", "ignore", "config.train.nan_policy = 'ignore' is not allowed: choose one of stop, skip"),
    ("checkpoint.every_steps", 0, "config.checkpoint.every_steps = 0 is not allowed: use a positive number of steps"),
    ("checkpoint.keep", 0, "config.checkpoint.keep = 0 is not allowed: use an integer >= 1"),
    ("checkpoint.async_save", "yes", "config.checkpoint.async_save = 'yes' is not allowed: use True or False"),
    ("resume", "no", "config.resume = 'no' is not allowed: use True or False"),
    ("seed", 1.5, "config.seed = 1.5 is not allowed: use an integer"),
    ("train.schedule", "linear", "config.train.schedule = 'linear' is not allowed: choose one of inverse, epoch_step, cosine"),
    ("train.steps", 2.5, "config.train.steps = 2.5 is not allowed: use a positive integer"),
    ("train.log_every", -1, "config.train.log_every = -1 is not allowed: use a positive integer"),
    ("train.lr_decay", -1e-5, "config.train.lr_decay = -1e-05 is not allowed: use a non-negative number"),
    ("train.adam_eps", 0.0, "config.train.adam_eps = 0.0 is not allowed: use a small positive number like 1e-8"),
    ("model.train_encoder", "yes", "config.model.train_encoder = 'yes' is not allowed: use True or False"),
    ("model.content_weight", -1.0, "config.model.content_weight = -1.0 is not allowed: use a non-negative number"),
    ("model.decoder_init", "zeros", "config.model.decoder_init = 'zeros' is not allowed: choose one of reference, "
     "he_normal"),
    ("model.vgg_weights", 3, "config.model.vgg_weights = 3 is not allowed: use a path (a string)"),
    ("data.content", "/no/such/folder", "config.data.content = '/no/such/folder' does not exist: give a folder of "
     "images, 'demo' or 'tfds:NAME:SPLIT'"),
    ("data.eval_style", __file__, f"config.data.eval_style = {__file__!r} is a file, not a folder"),
    ("data.tfds_data_dir", "/no/such/dir", "config.data.tfds_data_dir = '/no/such/dir' is not a folder"),
    ("data.tfds_image_key", "", "config.data.tfds_image_key = '' is not allowed: name the dataset's image feature"),
    ("data.load_size", -4, "config.data.load_size = -4 is not allowed: use a positive integer"),
    ("data.num_threads", 0, "config.data.num_threads = 0 is not allowed: use a positive integer"),
    ("imp.branches", 3, "config.imp.branches = 3 is not allowed: use a comma-separated string"),
    ("eval.batch_size", 0, "config.eval.batch_size = 0 is not allowed: use a positive integer"),
    ("train.lrr", 0.1, "config.train.lrr is not a known field: config.train has adam_eps, batch_size, dtype"),
    ("checkpoint.every", 10, "config.checkpoint.every is not a known field: config.checkpoint has async_save, "
     "every_steps, keep."),
    ("sed", 1, "config.sed is not a known field: the top-level fields are checkpoint, data, eval, imp, model"),
])
def test_bad_value_gives_one_sentence(field, value, expected):
  c = demo()
  section, name = field.split(".") if "." in field else (None, field)
  with c.ignore_type():  # a config file can hold any type; validation must name it
    (c[section] if section else c)[name] = value
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert expected in msg
  assert len(msg.splitlines()) == 1  # only the one problem, in one line


def test_model_specific_fields_and_other_tools_sections_are_accepted():
  c = demo()
  c.model.mcc_eps = 1e-5  # a model's own field
  c.model.identity1_weight = 50.0
  c.study = {"models": "adain"}  # another tool's section
  config_lib.validate(c)


def test_the_batch_is_checked_against_the_target_devices_given():
  c = demo()
  c.train.batch_size = 4
  c.parallel.pack_runs = False
  config_lib.validate(c, devices=[None] * 4)
  with pytest.raises(UserError, match="batch_size = 4 does not split over the 8 devices"):
    config_lib.validate(c, devices=[None] * 8)


def test_a_tool_that_only_builds_the_step_may_leave_the_data_unchecked():
  c = demo()
  c.data.content = c.data.style = ""
  c.data.eval_content = "/no/such/folder"
  with pytest.raises(UserError):
    config_lib.validate(c)
  config_lib.validate(c, data=False)


def test_epoch_step_schedule_fields_are_checked():
  c = demo()
  c.train.schedule = "epoch_step"
  c.train.lr_epoch_factor = 1.5
  with pytest.raises(UserError, match=r"config.train.lr_epoch_factor = 1.5 is not allowed: use a factor in \(0, 1\]"):
    config_lib.validate(c)


def test_config_changes_lists_the_fields_that_matter():
  saved = json.loads(demo().to_json())
  c = demo()
  assert config_lib.config_changes(saved, config_lib.resolve(c).record) == []
  lr, rounds = c.train.lr, c.imp.rounds
  c.train.lr = lr * 2
  c.imp.rounds = rounds + 1
  c.train.log_every = 1  # resume-safe: how often to log changes nothing computed
  c.checkpoint.every_steps = 5
  c.resume = False
  assert config_lib.config_changes(saved, config_lib.resolve(c).record) == [f"imp.rounds: {rounds} -> {rounds + 1}", f"train.lr: {lr} -> {lr * 2}"]
  # A field an older version did not write counts as unchanged at its default, as changed otherwise.
  del saved["train"]["nan_policy"]
  assert config_lib.config_changes(saved, config_lib.resolve(demo()).record) == []
  c = demo()
  c.train.nan_policy = "skip"
  assert config_lib.config_changes(saved, config_lib.resolve(c).record) == ["train.nan_policy: (absent) -> 'skip'"]


def test_all_problems_are_listed_together():
  c = demo()
  c.imp.rounds = -2
  c.train.steps = 0
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  assert "imp.rounds" in str(e.value) and "train.steps" in str(e.value)


def test_paper_config_without_data_names_the_fields_and_the_demo():
  c = demo()
  c.data.content = c.data.style = ""
  with pytest.raises(UserError, match=r"set config.data.content and config.data.style .*configs/adain.py:demo"):
    config_lib.validate(c)


def test_split_list_and_branch_order():
  assert config_lib.split_list(" a, b,,c ") == ["a", "b", "c"]
  c = demo()
  c.imp.branches = "oneshot,imp,random_prune"
  assert config_lib.branches(c) == ["imp", "oneshot", "random_prune"]


def test_resolve_hands_each_part_the_fields_it_reads():
  c = tiny_config(seed=7, imp__branches="oneshot, random_prune", imp__rounds=4, imp__replicates=3,
                  imp__rewind_step=2, sparsity__scope="decoder, transform", sparsity__method="lamp",
                  sparsity__layer_cap=0.9, train__dtype="bfloat16", parallel__pack_runs=False,
                  parallel__runs_per_step=4, checkpoint__every_steps=5, checkpoint__keep=2, eval__num_pairs=3)
  r = config_lib.resolve(c)
  assert r.model.name == "adain" and r.model.width == c.model.width and r.model.seed == 7
  assert r.model.dtype == "bfloat16" and c.model.dtype == "float32"  # train.dtype is the compute dtype
  assert r.data.content == "demo" and (r.data.crop_size, r.data.num_pairs, r.data.seed) == (32, 3, 7)
  assert (r.step.batch_size, r.step.steps, r.step.checkpoint_every, r.step.adam_eps) == (2, 3, 5, 1e-4)
  p = r.protocol
  assert p.branches == ("imp", "oneshot", "random_prune")  # IMP first: the others are built from its masks
  assert (p.seed, p.rounds, p.replicates, p.rewind_step, p.early_bird) == (7, 4, 3, 2, None)
  assert p.pruning == settings.Pruning(scope=("decoder", "transform"), method="lamp", fraction=0.2, layer_cap=0.9)
  assert r.packing.runs_per_step == 1  # pack_runs=False: one run at a time, whatever runs_per_step says
  assert (r.checkpointing.keep, r.resume) == (2, True)
  assert r.record == json.loads(c.to_json())  # what config.json keeps
  c.imp.early_bird, c.parallel.pack_runs = True, True
  r = config_lib.resolve(c)
  assert r.protocol.early_bird == settings.EarlyBird(every=1000, epsilon=0.1, patience=3) and r.packing.auto is False
  with pytest.raises(dataclasses.FrozenInstanceError):
    r.step.steps = 10  # resolved once: nothing below the entry changes them


def test_checked_settings_refuse_a_bad_config_before_resolving_it():
  with pytest.raises(UserError, match=r"config.train.steps = 0 is not allowed"):
    config_lib.checked_settings(tiny_config(train__steps=0))
  assert config_lib.checked_settings(tiny_config()) == config_lib.resolve(tiny_config())


def test_train_dtype_sets_the_models_compute_dtype():
  c = tiny_config()
  assert config_lib.model_options(c).dtype == "float32"
  c.train.dtype = "bfloat16"
  config_lib.validate(c)
  assert config_lib.model_options(c).dtype == "bfloat16"
  assert c.model.dtype == "float32"  # the run's own config is untouched
  c.train.dtype = "float16"
  with pytest.raises(UserError, match=re.escape("config.train.dtype = 'float16' is not allowed")):
    config_lib.validate(c)


def test_a_saved_config_is_read_on_todays_defaults():
  """config.json of an older run (no parallel section, no imp.early_bird) reads with today's defaults for what it
  lacks, keeps every value it has, and a model's own fields."""
  saved = json.loads(tiny_config(imp__rounds=5).to_json())
  del saved["parallel"]
  del saved["imp"]["early_bird"]
  saved["model"]["style_weight"] = 3.0
  config = config_lib.from_saved(saved)
  defaults = config_lib.default_config()
  assert config.parallel.to_dict() == defaults.parallel.to_dict() and config.imp.early_bird is defaults.imp.early_bird
  assert config.imp.rounds == 5 and config.model.width == 1 / 16 and config.model.style_weight == 3.0
  assert json.loads(config.to_json()).keys() == json.loads(defaults.to_json()).keys()


def test_lamp_is_a_pruning_method():
  c = demo()
  c.sparsity.method = "lamp"
  config_lib.validate(c)


@pytest.mark.parametrize("name", ["adain", "lst"])
def test_data_that_are_not_the_demos_refuse_a_random_vgg(tmp_path, name):
  """Paper scale without VGG weights stops in validation, naming the fetch command and the opt-in."""
  c = variant_config(name)
  c.data.content, c.data.style = str(tmp_path), "demo"
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert len(msg.splitlines()) == 1
  assert msg == (f"config.model.vgg_weights is empty, so training on config.data.content = {str(tmp_path)!r} would "
                 f"use a random VGG and measure nothing: run python -m jaxtickets.weights fetch "
                 f"{'lst' if name == 'lst' else 'vgg'} and set --config.model.vgg_weights=weights/"
                 f"{'lst' if name == 'lst' else 'vgg'}, or set --config.model.allow_random_vgg=true to run on a random "
                 "VGG anyway.")
  c.model.allow_random_vgg = True  # the explicit opt-in
  config_lib.validate(c)
  c.model.allow_random_vgg = False
  c.data.content = "demo"  # the demo's data may run on a random VGG
  config_lib.validate(c)


def test_every_demo_variant_opts_in_to_a_random_vgg_and_may_resume_with_it():
  for name in ("sanet", "lst", "manet", "adaattn", "mccnet"):
    c = variant_config(name, "demo")
    assert c.model.vgg_weights == "" and c.model.allow_random_vgg is True
  assert variant_config("adain").model.allow_random_vgg is False
  saved = json.loads(variant_config("sanet").to_json())
  del saved["model"]["allow_random_vgg"]  # a run made before the field: the opt-in changes nothing it computes
  changes = config_lib.config_changes(saved, config_lib.resolve(variant_config("sanet", "demo")).record)
  assert changes and not any("allow_random_vgg" in c for c in changes)  # the demo's other fields differ


@pytest.mark.e2e
def test_paper_scale_without_vgg_exits_2_before_anything_runs(tmp_path):
  import os, subprocess, sys  # pylint: disable=import-outside-toplevel,multiple-imports
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "jaxtickets.main", "--config=configs/sanet.py",
                      f"--config.data.content={tmp_path}", f"--config.data.style={tmp_path}",
                      f"--workdir={tmp_path / 'run'}"], cwd=root, capture_output=True, text=True, timeout=300)
  assert r.returncode == 2, r.stderr
  assert "python -m jaxtickets.weights fetch vgg" in r.stderr and "Traceback" not in r.stderr
  assert not (tmp_path / "run" / "state").exists()
