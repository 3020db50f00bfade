"""Config validation: each bad value gives one sentence naming the field."""

import pytest

from jaxtickets import config as config_lib
from jaxtickets.errors import UserError


def demo():
  import importlib.util, pathlib
  spec = importlib.util.spec_from_file_location("adain_cfg", pathlib.Path(__file__).parent.parent / "configs/adain.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config("demo")


def test_demo_and_paper_configs_are_valid_once_data_is_set():
  config_lib.validate(demo())
  paper = demo()
  paper.data.content, paper.data.style = "demo", "demo"
  config_lib.validate(paper)


@pytest.mark.parametrize("field,value,expected", [
    ("model.name", "adan", "config.model.name = 'adan' is not allowed: choose one of adain"),
    ("imp.rounds", -1, "config.imp.rounds = -1 is not allowed: use an integer >= 0"),
    ("sparsity.fraction", 1.5, "config.sparsity.fraction = 1.5 is not allowed: use a fraction in (0, 1)"),
    ("sparsity.fraction", 0.0, "config.sparsity.fraction = 0.0 is not allowed"),
    ("sparsity.method", "l2", "config.sparsity.method = 'l2' is not allowed: choose one of global, layerwise"),
    ("sparsity.scope", "encoder,decodr", "config.sparsity.scope names 'decodr'"),
    ("sparsity.scope", "", "config.sparsity.scope = '' is not allowed"),
    ("imp.branches", "imp,random", "config.imp.branches = 'random' is not allowed"),
    ("imp.rewind_step", 40, "config.imp.rewind_step = 40 is not allowed: use an integer in [0, train.steps = 40)"),
    ("imp.match_tolerance", -0.1, "config.imp.match_tolerance = -0.1 is not allowed"),
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
])
def test_bad_value_gives_one_sentence(field, value, expected):
  c = demo()
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(UserError) as e:
    config_lib.validate(c)
  msg = str(e.value)
  assert expected in msg
  assert len(msg.splitlines()) == 1  # only the one problem, in one line


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
