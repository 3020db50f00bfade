"""The default config and its validation: every bad value gets one sentence naming the field and what is allowed."""

import os
from typing import Sequence

import ml_collections

from jaxtickets.errors import UserError

BRANCHES = ("imp", "random_prune", "random_reinit", "oneshot")
SCOPE_GROUPS = ("encoder", "decoder", "transform")
PRUNE_METHODS = ("global", "layerwise")
DTYPES = ("float32", "bfloat16")


def default_config() -> ml_collections.ConfigDict:
  """Every field the program reads, with the paper-scale defaults shared by all models."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "adain"
  c.model.width = 1.0  # channel multiplier; < 1 only for tests and quick experiments
  c.model.train_encoder = True  # the paper's finding 1: training the VGG encoder too beats keeping it fixed
  c.model.dtype = "float32"
  c.model.vgg_weights = ""  # Flax-format VGG file; empty = random weights (results not meaningful)
  # Loss weights are fields named '<loss>_weight' (content_weight, style_weight, identity1_weight, ...); each
  # configs/<model>.py sets its model's, and a model falls back to the reference's value for any not set.

  c.data = ml_collections.ConfigDict()
  c.data.content = ""  # a folder, 'tfds:NAME:SPLIT' or 'demo'
  c.data.style = ""
  c.data.eval_content = ""  # empty = hold out eval.num_pairs images of the training sources
  c.data.eval_style = ""
  c.data.tfds_data_dir = ""
  c.data.tfds_image_key = "image"
  c.data.load_size = 512
  c.data.crop_size = 256
  c.data.num_threads = 2
  c.data.prefetch = 2

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 8
  c.train.steps = 160_000  # per round
  c.train.lr = 1e-4
  c.train.schedule = "inverse"  # 'inverse': lr / (1 + lr_decay * i); 'epoch_step': see train.learning_rate
  c.train.lr_decay = 5e-5
  c.train.epoch_steps = 10_000  # 'epoch_step' only: iterations per epoch
  c.train.lr_constant_epochs = 2  # 'epoch_step' only: epochs at the full lr
  c.train.lr_epoch_factor = 0.3  # 'epoch_step' only: lr multiplier per later epoch
  c.train.log_every = 100

  c.sparsity = ml_collections.ConfigDict()
  c.sparsity.scope = "encoder,decoder,transform"  # groups or globs like 'decoder/conv3_*'; comma-separated
  c.sparsity.method = "global"
  c.sparsity.fraction = 0.2  # of the remaining weights, per round

  c.imp = ml_collections.ConfigDict()
  c.imp.rounds = 10  # pruning rounds after the dense round 0
  c.imp.target_sparsity = 0.0  # stop early once the prunable sparsity reaches this; 0 = off
  c.imp.rewind_step = 0  # k: 0 rewinds to the initial weights
  c.imp.branches = "imp"  # comma-separated: imp, random_prune, random_reinit, oneshot
  c.imp.match_tolerance = 0.02  # relative to the dense round's total loss

  c.eval = ml_collections.ConfigDict()
  c.eval.num_pairs = 8
  c.eval.batch_size = 8
  return c


def split_list(value: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated config lists stay easy to override on the command line)."""
  if isinstance(value, (list, tuple)):
    return [str(v).strip() for v in value if str(v).strip()]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def branches(config) -> list[str]:
  """The branches to run, IMP first (the others are built from its masks)."""
  names = split_list(config.imp.branches)
  return ["imp"] + [b for b in names if b != "imp"]


def _problems(config, model_names: Sequence[str], divisor: int | None) -> list[str]:
  """Every problem in `config`, one sentence each."""
  p = []

  def need(ok, field, value, allowed):
    if not ok:
      p.append(f"config.{field} = {value!r} is not allowed: {allowed}.")

  def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

  def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  m, d, t, s, i, e = config.model, config.data, config.train, config.sparsity, config.imp, config.eval
  need(is_int(config.seed), "seed", config.seed, "use an integer")
  need(m.name in model_names, "model.name", m.name, f"choose one of {', '.join(model_names)}")
  need(is_num(m.width) and m.width > 0, "model.width", m.width, "use a positive channel multiplier (1.0 = the paper's width)")
  need(m.dtype in DTYPES, "model.dtype", m.dtype, f"choose one of {', '.join(DTYPES)}")
  for f in sorted(k for k in m.keys() if k.endswith("_weight")):
    need(is_num(m[f]) and m[f] >= 0, f"model.{f}", m[f], "use a non-negative number")
  if m.vgg_weights and not os.path.exists(m.vgg_weights):
    p.append(f"config.model.vgg_weights = {m.vgg_weights!r} does not exist: point it at a Flax-format VGG file "
             "written by scripts/port_weights.py, or leave it empty for random weights.")
  for f in ("load_size", "crop_size", "num_threads", "prefetch"):
    need(is_int(d[f]) and d[f] > 0, f"data.{f}", d[f], "use a positive integer")
  if is_int(d.load_size) and is_int(d.crop_size) and d.crop_size > d.load_size:
    p.append(f"config.data.crop_size = {d.crop_size} is larger than config.data.load_size = {d.load_size}: "
             "the crop is taken from the resized image, so use crop_size <= load_size.")
  if divisor and is_int(d.crop_size) and d.crop_size % divisor:
    p.append(f"config.data.crop_size = {d.crop_size} is not a multiple of {divisor}, which {m.name} needs: "
             f"use e.g. {max(divisor, d.crop_size // divisor * divisor)}.")
  for f in ("batch_size", "steps", "log_every"):
    need(is_int(t[f]) and t[f] > 0, f"train.{f}", t[f], "use a positive integer")
  need(is_num(t.lr) and t.lr > 0, "train.lr", t.lr, "use a positive learning rate")
  need(is_num(t.lr_decay) and t.lr_decay >= 0, "train.lr_decay", t.lr_decay, "use a non-negative number")
  from jaxtickets.train import SCHEDULES
  need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"choose one of {', '.join(SCHEDULES)}")
  if t.schedule == "epoch_step":
    need(is_int(t.epoch_steps) and t.epoch_steps > 0, "train.epoch_steps", t.epoch_steps, "use a positive integer")
    need(is_int(t.lr_constant_epochs) and t.lr_constant_epochs >= 0, "train.lr_constant_epochs",
         t.lr_constant_epochs, "use an integer >= 0")
    need(is_num(t.lr_epoch_factor) and 0 < t.lr_epoch_factor <= 1, "train.lr_epoch_factor", t.lr_epoch_factor,
         "use a factor in (0, 1]")
  scope = split_list(s.scope)
  need(bool(scope), "sparsity.scope", s.scope, f"name at least one of {', '.join(SCOPE_GROUPS)} or a glob like 'decoder/conv3_*'")
  for pattern in scope:
    group = pattern.split("/")[0]
    if not any(ch in group for ch in "*?[") and group not in SCOPE_GROUPS:
      p.append(f"config.sparsity.scope names {pattern!r}, whose group {group!r} is unknown: "
               f"scopes start with one of {', '.join(SCOPE_GROUPS)}.")
  need(s.method in PRUNE_METHODS, "sparsity.method", s.method, f"choose one of {', '.join(PRUNE_METHODS)}")
  need(is_num(s.fraction) and 0 < s.fraction < 1, "sparsity.fraction", s.fraction, "use a fraction in (0, 1), e.g. 0.2")
  need(is_int(i.rounds) and i.rounds >= 0, "imp.rounds", i.rounds, "use an integer >= 0 (0 trains the dense network only)")
  need(is_num(i.target_sparsity) and 0 <= i.target_sparsity < 1, "imp.target_sparsity", i.target_sparsity,
       "use a fraction in [0, 1); 0 turns the early stop off")
  if is_int(t.steps) and t.steps > 0 and not (is_int(i.rewind_step) and 0 <= i.rewind_step < t.steps):
    p.append(f"config.imp.rewind_step = {i.rewind_step!r} is not allowed: use an integer in [0, train.steps = {t.steps}).")
  for b in split_list(i.branches):
    need(b in BRANCHES, "imp.branches", b, f"choose from {', '.join(BRANCHES)}")
  need(is_num(i.match_tolerance) and i.match_tolerance >= 0, "imp.match_tolerance", i.match_tolerance,
       "use a non-negative relative tolerance, e.g. 0.02")
  for f in ("num_pairs", "batch_size"):
    need(is_int(e[f]) and e[f] > 0, f"eval.{f}", e[f], "use a positive integer")
  if not (d.content and d.style):
    missing = [f"config.data.{f}" for f in ("content", "style") if not d[f]]
    p.append(f"No training data is configured: set {' and '.join(missing)} (a folder of images, or "
             "'tfds:NAME:SPLIT'), or run the embedded demo with --config=configs/adain.py:demo.")
  return p


def validate(config) -> None:
  """Raises UserError listing every problem of `config`, before anything is compiled."""
  from jaxtickets import models  # the registry knows the model names and their size divisors

  names = models.model_names()
  divisor = models.get_model(config.model.name).divisor if config.model.name in names else None
  problems = _problems(config, names, divisor)
  if problems:
    raise UserError("\n".join(problems))
