"""The default config and its validation: every bad value gets one sentence naming the field and what is allowed."""

import json
import os
import re
import sys
from typing import Callable, Mapping, Sequence

import ml_collections

from jaxtickets import settings, storage
from jaxtickets.errors import ConfigError, UserError
from jaxtickets.models import DECODER_INITS, GROUPS, MODELS, SHARED_FIELDS, get_model

BRANCHES = ("imp", "random_prune", "random_reinit", "oneshot")
PRUNE_METHODS = ("global", "layerwise", "lamp")
DTYPES = ("float32", "bfloat16")
NAN_POLICIES = ("stop", "skip")
# Sections whose fields are all known here; config.model also takes per-model fields, other top-level sections
# (e.g. a study's) belong to their tools.
# config.model.vgg_weights = 'demo': the small loss network made on this machine (scripts/make_demo_vgg.py).
DEMO_VGG = "demo"
DEMO_VGG_DESCRIPTION = ("trained here by scripts/make_demo_vgg.py as the encoder of a pixel autoencoder on the "
                        "photographs and textures that scikit-image and matplotlib ship (the demo's held-out images "
                        "excluded), not ImageNet's VGG")
CLOSED_SECTIONS = ("data", "train", "sparsity", "imp", "eval", "checkpoint", "parallel")
# Fields that change how a run is driven but not what it computes: a resumed run may change them freely.
# Packing is one of them: a packed run is the same run, and resuming finds each run's state by its name.
# train.schedule's values (train.learning_rate builds each; a test holds the two lists equal). Named here so the
# config does not import the step's module.
SCHEDULES = ("inverse", "epoch_step", "cosine")

RESUME_SAFE_FIELDS = ("resume", "data.num_threads", "data.prefetch", "train.log_every", "checkpoint.every_steps",
                      "checkpoint.keep", "checkpoint.async_save", "parallel.pack_runs", "parallel.runs_per_step",
                      "model.allow_random_vgg",
                      # the VGG's identity is its SHA-256 in the run's vgg.json, which a resume is held to; its path
                      # may differ (another directory, another host: weights.locate_run_vgg)
                      "model.vgg_weights")


def default_config(model: str | None = None) -> ml_collections.ConfigDict:
  """Every field the program reads, with the paper-scale defaults shared by all models; with `model`, its name and
  its loss weights as fields '<loss>_weight' at the values the model class declares (the one home of those
  defaults), so a configs/<model>.py sets only what differs and --config.model.<loss>_weight overrides any."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.resume = True  # continue the run in --workdir; False moves an existing run aside and starts afresh

  c.model = ml_collections.ConfigDict(dict(SHARED_FIELDS))  # name, width, train_encoder, dtype, weights: see there
  if model is not None:
    c.model.name = model
    for term, weight in get_model(model).loss_weights.items():
      c.model[f"{term}_weight"] = float(weight)

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
  c.train.dtype = ""  # compute dtype: float32 or bfloat16 (params, Adam and losses stay float32); '' = model.dtype
  c.train.schedule = "inverse"  # 'inverse': lr / (1 + lr_decay * i); 'epoch_step', 'cosine': see train.learning_rate
  c.train.warmup_steps = 0  # 'cosine' only: linear warm-up from 0 before the cosine decay to 0 at train.steps
  c.train.lr_decay = 5e-5
  c.train.adam_eps = 1e-8  # Adam's epsilon (PyTorch's default, as in every reference implementation)
  c.train.epoch_steps = 10_000  # 'epoch_step' only: iterations per epoch
  c.train.lr_constant_epochs = 2  # 'epoch_step' only: epochs at the full lr
  c.train.lr_epoch_factor = 0.3  # 'epoch_step' only: lr multiplier per later epoch
  c.train.log_every = 100
  c.train.nan_policy = "stop"  # a non-finite loss: 'stop' the round (last good checkpoint kept) or 'skip' the batch

  c.sparsity = ml_collections.ConfigDict()
  c.sparsity.scope = "encoder,decoder,transform"  # groups or globs like 'decoder/conv3_*'; comma-separated
  c.sparsity.method = "global"  # 'global' |w|, 'layerwise' |w| per layer, 'lamp' LAMP scores (sparsity.lamp_prune)
  c.sparsity.fraction = 0.2  # of the remaining weights, per round
  c.sparsity.layer_cap = 1.0  # global pruning never prunes a layer beyond this fraction; 1.0 = off (the paper's)

  c.imp = ml_collections.ConfigDict()
  c.imp.rounds = 10  # pruning rounds after the dense round 0
  c.imp.target_sparsity = 0.0  # stop early once the prunable sparsity reaches this; 0 = off
  c.imp.rewind_step = 0  # k: 0 rewinds to the initial weights
  c.imp.branches = "imp"  # comma-separated: imp, random_prune, random_reinit, oneshot
  c.imp.match_tolerance = 0.02  # relative to the dense round's total loss
  c.imp.replicates = 3  # independent repeats (seed + r): the verdict's interval needs at least 2
  # Early-bird tickets: stop the dense round once the mask pruning would give has settled (see early_bird.py).
  c.imp.early_bird = False
  c.imp.early_bird_every = 1000  # steps between mask draws
  # Consecutive masks count as settled below this distance: their Hamming distance over that of two unrelated masks
  # at their sparsity (early_bird.distance: 0 = the same mask, about 1 = unrelated, whatever the sparsity).
  c.imp.early_bird_epsilon = 0.1
  c.imp.early_bird_patience = 3  # settled checks in a row that stop the dense round

  c.eval = ml_collections.ConfigDict()
  # Fixed held-out pairs. Their number limits pair noise only; seed-to-seed noise, which more pairs cannot average
  # away, sets how many replicates a tolerance needs: see the report's "Replicates needed" section (its replicate
  # planner).
  c.eval.num_pairs = 64
  c.eval.batch_size = 8

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every_steps = 1000  # train-state checkpoint interval in <workdir>/state; resume starts there
  c.checkpoint.keep = 3  # the last few, so a damaged latest one falls back to the one before
  c.checkpoint.async_save = True  # write in the background while training goes on

  c.parallel = ml_collections.ConfigDict()
  c.parallel.pack_runs = True  # train independent runs (replicates, baseline rounds) side by side in one step
  c.parallel.runs_per_step = 0  # the most runs per packed step; 0 = auto (devices and memory), 1 = one at a time
  return c


def use_demo_data(c: ml_collections.ConfigDict, *, steps: int, rounds: int, lr: float | None = 2e-4,
                  replicates: int = 2) -> None:
  """The embedded demo's shared settings: demo images, 64 px crops of 96 px resizes, batch 4, IMP plus random
  pruning, 16 held-out pairs, 2 replicates (the fewest that give an interval); `steps` per round and `rounds` sized
  so each model's demo takes minutes on a CPU."""
  c.data.content = c.data.style = c.data.eval_content = c.data.eval_style = "demo"
  c.model.allow_random_vgg = True  # a demo of a model the demo loss network cannot serve runs on a random VGG
  c.data.load_size = 96
  c.data.crop_size = 64
  c.train.batch_size = 4
  c.train.steps = steps
  if lr is not None:
    c.train.lr = lr  # a few dozen steps per round need a faster start than the paper's 1e-4
  c.train.log_every = 10
  c.checkpoint.every_steps = 10  # a killed demo resumes mid-round
  c.imp.rounds = rounds
  c.imp.branches = "imp,random_prune"
  c.imp.replicates = replicates
  c.eval.num_pairs = 16
  c.eval.batch_size = 8


def pick_variant(config: ml_collections.ConfigDict, arg: str, variants: Mapping[str, Callable], path: str):
  """`config` (a configs/*.py's paper-scale setting) changed by its variant `arg` ('' = paper scale): the one way
  every config file picks `--config=configs/<file>.py:<variant>`."""
  if arg and arg not in variants:
    names = ", ".join(repr(v) for v in variants)
    raise UserError(f"Unknown variant {arg!r} of configs/{os.path.basename(path)}: use '' (paper scale) or one of "
                    f"{names}.")
  if arg:
    variants[arg](config)
  return config


def model_options(config) -> ml_collections.ConfigDict:
  """config.model with config.train.dtype (when set) as the compute dtype the model is built with."""
  mc = ml_collections.ConfigDict(config.model.to_dict())
  if config.train.dtype:
    mc.dtype = config.train.dtype
  return mc


def checked_settings(config, devices=None, data: bool = True, *,
                     vgg_weights: str | None = None) -> settings.RunSettings:
  """validate, then resolve: what an entry point does with the config it is handed. `vgg_weights` is where
  config.model.vgg_weights was found from here (weights.locate_run_vgg), checked and used in its place; the caller's
  config is left as it was."""
  if vgg_weights is not None and vgg_weights != config.model.vgg_weights:
    config = config.copy_and_resolve_references()
    config.model.vgg_weights = vgg_weights
  validate(config, devices, data)
  return resolve(config)


def resolve(config) -> settings.RunSettings:
  """The config as the typed, frozen values the code below the entry takes (after validate: no checks here; every
  field is there, since configs are built on default_config and saved ones read on it by from_saved)."""
  m, d, t, s, i = config.model, config.data, config.train, config.sparsity, config.imp
  early = settings.EarlyBird(every=i.early_bird_every, epsilon=i.early_bird_epsilon, patience=i.early_bird_patience)
  return settings.RunSettings(
      model=settings.ModelSpec(name=m.name, options=ml_collections.FrozenConfigDict(model_options(config)),
                               vgg_weights=m.vgg_weights, init_from=m.init_from, seed=config.seed),
      data=settings.DataSpec(content=d.content, style=d.style, eval_content=d.eval_content, eval_style=d.eval_style,
                             tfds_data_dir=d.tfds_data_dir, tfds_image_key=d.tfds_image_key, load_size=d.load_size,
                             crop_size=d.crop_size, num_threads=d.num_threads, prefetch=d.prefetch,
                             num_pairs=config.eval.num_pairs, seed=config.seed),
      step=settings.StepSettings(batch_size=t.batch_size, steps=t.steps, lr=t.lr, schedule=t.schedule,
                                 warmup_steps=t.warmup_steps, lr_decay=t.lr_decay, adam_eps=t.adam_eps,
                                 epoch_steps=t.epoch_steps, lr_constant_epochs=t.lr_constant_epochs,
                                 lr_epoch_factor=t.lr_epoch_factor, nan_policy=t.nan_policy, log_every=t.log_every,
                                 checkpoint_every=config.checkpoint.every_steps),
      protocol=settings.Protocol(
          seed=config.seed, rounds=i.rounds, replicates=i.replicates, rewind_step=i.rewind_step,
          branches=tuple(branches(config)), target_sparsity=i.target_sparsity, match_tolerance=i.match_tolerance,
          pruning=settings.Pruning(scope=tuple(split_list(s.scope)), method=s.method, fraction=s.fraction,
                                   layer_cap=s.layer_cap),
          early_bird=early if i.early_bird else None, eval_batch_size=config.eval.batch_size),
      packing=settings.Packing(runs_per_step=config.parallel.runs_per_step if config.parallel.pack_runs else 1),
      checkpointing=settings.Checkpointing(keep=config.checkpoint.keep, async_save=config.checkpoint.async_save),
      resume=config.resume, record=json.loads(config.to_json()))


def split_list(value: str) -> list[str]:
  """'a, b,,c' -> ['a', 'b', 'c'] (comma-separated config lists stay easy to override on the command line)."""
  if isinstance(value, (list, tuple)):
    return [str(v).strip() for v in value if str(v).strip()]
  return [v.strip() for v in str(value).split(",") if v.strip()]


def branches(config) -> list[str]:
  """The branches to run, IMP first (the others are built from its masks)."""
  names = split_list(config.imp.branches)
  return ["imp"] + [b for b in names if b != "imp"]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unknown_fields(config) -> list[str]:
  """Fields nobody reads (typos such as train.lrr) in the sections this module owns."""
  known = default_config()
  p = []
  for key in sorted(config.keys()):
    if key not in known and not isinstance(config[key], ml_collections.ConfigDict):
      p.append(f"config.{key} is not a known field: the top-level fields are {', '.join(sorted(known.keys()))}.")
  for section in CLOSED_SECTIONS:
    if section not in config:
      p.append(f"config.{section} is missing: build the config on jaxtickets.config.default_config().")
      continue
    for key in sorted(set(config[section].keys()) - set(known[section].keys())):
      p.append(f"config.{section}.{key} is not a known field: config.{section} has "
               f"{', '.join(sorted(known[section].keys()))}.")
  return p


def _reachable(path: str, what: str, problems: list[str]) -> bool:
  """False, with the sentence added to `problems`, when `path` is on a store this install cannot open."""
  try:
    storage.check_reachable(path, what)
    return True
  except UserError as e:
    problems.append(str(e))
    return False


def _data_problems(d, need) -> list[str]:
  """Sources that are neither 'demo', 'tfds:NAME:SPLIT' nor an existing folder, and the TFDS settings."""
  p = []
  for f in ("content", "style", "eval_content", "eval_style", "tfds_data_dir"):
    need(isinstance(d[f], str), f"data.{f}", d[f], "use a string")
  for f in ("content", "style", "eval_content", "eval_style"):
    spec = d[f].strip() if isinstance(d[f], str) else ""
    if not spec or spec == "demo" or spec.startswith("tfds:"):
      continue
    if not _reachable(spec, f"config.data.{f} folder", p):
      continue
    if not storage.exists(spec):
      p.append(f"config.data.{f} = {spec!r} does not exist: give a folder of images, 'demo' or 'tfds:NAME:SPLIT'.")
    elif not storage.isdir(spec):
      p.append(f"config.data.{f} = {spec!r} is a file, not a folder: give a folder of images, 'demo' or "
               "'tfds:NAME:SPLIT'.")
  if isinstance(d.tfds_data_dir, str) and d.tfds_data_dir and not storage.is_url(d.tfds_data_dir) \
      and not os.path.isdir(d.tfds_data_dir):
    p.append(f"config.data.tfds_data_dir = {d.tfds_data_dir!r} is not a folder: point it at the --data_dir of "
             "`tfds build`, or leave it empty for TFDS's default.")
  need(isinstance(d.tfds_image_key, str) and d.tfds_image_key, "data.tfds_image_key", d.tfds_image_key,
       "name the dataset's image feature, e.g. 'image'")
  return p


def _random_vgg_problems(m, d) -> list[str]:
  """Training data that are not the demo's with a random VGG: at paper scale, chip-hours for nothing."""
  real = [f for f in ("content", "style") if isinstance(d[f], str) and d[f].strip() not in ("", "demo")]
  if not real or m.vgg_weights or m.get("allow_random_vgg", False) is True:
    return []
  name = "lst" if m.name == "lst" else "vgg"  # LST's loss network is its own vgg_r51.pth
  return [f"config.model.vgg_weights is empty, so training on config.data.{real[0]} = {d[real[0]]!r} would use a "
          f"random VGG and measure nothing: run python -m jaxtickets.weights fetch {name} and set "
          f"--config.model.vgg_weights=weights/{name}, or set --config.model.allow_random_vgg=true to run on a "
          "random VGG anyway."]


def _problems(config, model_names: Sequence[str], divisor: int | None, device_count: int | None = None,
              data: bool = True) -> list[str]:
  """Every problem in `config`, one sentence each (without those of the data sources unless `data`)."""
  p = _unknown_fields(config)
  if any(" is missing: " in x for x in p):
    return p

  def need(ok, field, value, allowed):
    if not ok:
      p.append(f"config.{field} = {value!r} is not allowed: {allowed}.")

  is_int, is_num = _is_int, _is_num
  m, d, t, s, i, e = config.model, config.data, config.train, config.sparsity, config.imp, config.eval
  need(is_int(config.seed), "seed", config.seed, "use an integer")
  need(isinstance(config.get("resume", True), bool), "resume", config.get("resume"), "use True or False")
  need(m.name in model_names, "model.name", m.name, f"choose one of {', '.join(model_names)}")
  need(is_num(m.width) and m.width > 0, "model.width", m.width, "use a positive channel multiplier (1.0 = the paper's width)")
  need(m.dtype in DTYPES, "model.dtype", m.dtype, f"choose one of {', '.join(DTYPES)}")
  train_dtype = config.train.get("dtype", "")
  need(train_dtype in ("",) + DTYPES, "train.dtype", train_dtype,
       f"choose one of {', '.join(DTYPES)}, or '' to use config.model.dtype")
  need(isinstance(m.get("train_encoder", True), bool), "model.train_encoder", m.get("train_encoder"),
       "use True or False")
  for f in sorted(k for k in m.keys() if k.endswith("_weight")):
    need(is_num(m[f]) and m[f] >= 0, f"model.{f}", m[f], "use a non-negative number")
  need(m.get("decoder_init", "reference") in DECODER_INITS, "model.decoder_init", m.get("decoder_init"),
       f"choose one of {', '.join(DECODER_INITS)}")
  need(isinstance(m.vgg_weights, str), "model.vgg_weights", m.vgg_weights, "use a path (a string)")
  reachable = isinstance(m.vgg_weights, str) and _reachable(m.vgg_weights, "config.model.vgg_weights", p)
  if (reachable and m.vgg_weights and m.vgg_weights != DEMO_VGG
      and not storage.exists(m.vgg_weights)):
    p.append(f"config.model.vgg_weights = {m.vgg_weights!r} does not exist: point it at a Flax-format VGG file "
             "written by scripts/port_weights.py, 'demo' for the demo loss network, or leave it empty for random "
             "weights.")
  need(isinstance(m.get("init_from", ""), str), "model.init_from", m.get("init_from"), "use a path (a string)")
  if isinstance(m.get("init_from", ""), str) and m.get("init_from") and not os.path.isdir(m.init_from):
    p.append(f"config.model.init_from = {m.init_from!r} is not a directory: point it at the --out directory of "
             "scripts/port_weights.py, or leave it empty for a random init.")
  need(isinstance(m.get("allow_random_vgg", False), bool), "model.allow_random_vgg", m.get("allow_random_vgg"),
       "use True or False")
  if data:
    p += _data_problems(d, need)
    p += _random_vgg_problems(m, d)
  for f in ("load_size", "crop_size", "num_threads", "prefetch"):
    need(is_int(d[f]) and d[f] > 0, f"data.{f}", d[f], "use a positive integer")
  if is_int(d.load_size) and is_int(d.crop_size) and 0 < d.load_size < d.crop_size:
    p.append(f"config.data.crop_size = {d.crop_size} is larger than config.data.load_size = {d.load_size}: "
             "the crop is taken from the resized image, so use crop_size <= load_size.")
  if divisor and is_int(d.crop_size) and d.crop_size % divisor:
    p.append(f"config.data.crop_size = {d.crop_size} is not a multiple of {divisor}, which {m.name} needs: "
             f"use e.g. {max(divisor, d.crop_size // divisor * divisor)}.")
  for f in ("batch_size", "steps", "log_every"):
    need(is_int(t[f]) and t[f] > 0, f"train.{f}", t[f], "use a positive integer")
  pl = config.parallel
  need(isinstance(pl.pack_runs, bool), "parallel.pack_runs", pl.pack_runs, "use True or False")
  need(is_int(pl.runs_per_step) and pl.runs_per_step >= 0, "parallel.runs_per_step", pl.runs_per_step,
       "use an integer >= 0 (0 = as many as the devices and memory allow)")
  if is_int(pl.runs_per_step) and pl.runs_per_step >= 0 and isinstance(pl.pack_runs, bool):
    p += _batch_problems(t.batch_size, pl.runs_per_step if pl.pack_runs else 1, device_count)
  need(is_num(t.lr) and t.lr > 0, "train.lr", t.lr, "use a positive learning rate")
  need(is_num(t.lr_decay) and t.lr_decay >= 0, "train.lr_decay", t.lr_decay, "use a non-negative number")
  need(is_num(t.adam_eps) and t.adam_eps > 0, "train.adam_eps", t.adam_eps, "use a small positive number like 1e-8")
  need(t.schedule in SCHEDULES, "train.schedule", t.schedule, f"choose one of {', '.join(SCHEDULES)}")
  if t.schedule == "cosine":
    # A bad train.steps has its own sentence.
    below = t.warmup_steps < t.steps if is_int(t.steps) and t.steps > 0 else True
    need(is_int(t.warmup_steps) and t.warmup_steps >= 0 and below, "train.warmup_steps", t.warmup_steps,
         "use an integer >= 0 and below train.steps (the cosine decay needs steps after the warm-up)")
  if t.schedule == "epoch_step":
    need(is_int(t.epoch_steps) and t.epoch_steps > 0, "train.epoch_steps", t.epoch_steps, "use a positive integer")
    need(is_int(t.lr_constant_epochs) and t.lr_constant_epochs >= 0, "train.lr_constant_epochs",
         t.lr_constant_epochs, "use an integer >= 0")
    need(is_num(t.lr_epoch_factor) and 0 < t.lr_epoch_factor <= 1, "train.lr_epoch_factor", t.lr_epoch_factor,
         "use a factor in (0, 1]")
  need(t.nan_policy in NAN_POLICIES, "train.nan_policy", t.nan_policy,
       f"choose one of {', '.join(NAN_POLICIES)} ('stop' ends the round at a non-finite loss, 'skip' skips the batch)")
  scope = split_list(s.scope) if isinstance(s.scope, (str, list, tuple)) else []
  need(bool(scope), "sparsity.scope", s.scope, f"name at least one of {', '.join(GROUPS)} or a glob like 'decoder/conv3_*'")
  for pattern in scope:
    group = pattern.split("/")[0]
    if not any(ch in group for ch in "*?[") and group not in GROUPS:
      p.append(f"config.sparsity.scope names {pattern!r}, whose group {group!r} is unknown: "
               f"scopes start with one of {', '.join(GROUPS)}.")
  need(s.method in PRUNE_METHODS, "sparsity.method", s.method, f"choose one of {', '.join(PRUNE_METHODS)}")
  need(is_num(s.fraction) and 0 < s.fraction < 1, "sparsity.fraction", s.fraction, "use a fraction in (0, 1), e.g. 0.2")
  need(is_num(s.layer_cap) and 0 < s.layer_cap <= 1, "sparsity.layer_cap", s.layer_cap,
       "use a fraction in (0, 1], e.g. 0.95 (1.0 turns the cap off)")
  need(is_int(i.replicates) and i.replicates >= 1, "imp.replicates", i.replicates,
       "use an integer >= 1 (3 or more for a verdict worth publishing)")
  need(is_int(i.rounds) and i.rounds >= 0, "imp.rounds", i.rounds, "use an integer >= 0 (0 trains the dense network only)")
  need(is_num(i.target_sparsity) and 0 <= i.target_sparsity < 1, "imp.target_sparsity", i.target_sparsity,
       "use a fraction in [0, 1); 0 turns the early stop off")
  if is_int(t.steps) and t.steps > 0 and not (is_int(i.rewind_step) and 0 <= i.rewind_step < t.steps):
    p.append(f"config.imp.rewind_step = {i.rewind_step!r} is not allowed: use an integer in [0, train.steps = {t.steps}).")
  need(isinstance(i.branches, (str, list, tuple)), "imp.branches", i.branches, "use a comma-separated string")
  for b in split_list(i.branches) if isinstance(i.branches, (str, list, tuple)) else []:
    need(b in BRANCHES, "imp.branches", b, f"choose from {', '.join(BRANCHES)}")
  need(isinstance(i.early_bird, bool), "imp.early_bird", i.early_bird, "use True or False")
  need(is_int(i.early_bird_every) and i.early_bird_every > 0, "imp.early_bird_every", i.early_bird_every,
       "use a positive number of steps between mask draws")
  need(is_num(i.early_bird_epsilon) and 0 < i.early_bird_epsilon < 1, "imp.early_bird_epsilon",
       i.early_bird_epsilon, "use a fraction in (0, 1), e.g. 0.1")
  need(is_int(i.early_bird_patience) and i.early_bird_patience >= 1, "imp.early_bird_patience",
       i.early_bird_patience, "use an integer >= 1, e.g. 3")
  need(is_num(i.match_tolerance) and i.match_tolerance >= 0, "imp.match_tolerance", i.match_tolerance,
       "use a non-negative relative tolerance, e.g. 0.02")
  for f in ("num_pairs", "batch_size"):
    need(is_int(e[f]) and e[f] > 0, f"eval.{f}", e[f], "use a positive integer")
  ck = config.checkpoint
  need(is_int(ck.every_steps) and ck.every_steps > 0, "checkpoint.every_steps", ck.every_steps,
       "use a positive number of steps between train-state checkpoints")
  need(is_int(ck.keep) and ck.keep >= 1, "checkpoint.keep", ck.keep,
       "use an integer >= 1 (2 or more lets a damaged latest checkpoint fall back to the one before)")
  need(isinstance(ck.async_save, bool), "checkpoint.async_save", ck.async_save, "use True or False")
  if data and not (d.content and d.style):
    missing = [f"config.data.{f}" for f in ("content", "style") if not d[f]]
    p.append(f"No training data is configured: set {' and '.join(missing)} (a folder of images, or "
             "'tfds:NAME:SPLIT'), or run the embedded demo with --config=configs/adain.py:demo.")
  return p


def runs_axis_sizes(devices: int, batch_size: int, runs_per_step: int | None = None) -> list[int]:
  """The sizes of the 'runs' axis that divide the devices (and `runs_per_step` when given) and leave each run's
  batch splitting evenly over the remaining 'data' devices, smallest first."""
  return [a for a in range(1, devices + 1) if devices % a == 0 and batch_size % (devices // a) == 0
          and (runs_per_step is None or runs_per_step % a == 0)]


def _batch_problems(batch_size, runs_per_step: int, device_count: int | None) -> list[str]:
  """Each run's batch must split evenly over the devices that share it (every device, without packing)."""
  if not (_is_int(batch_size) and batch_size > 0):
    return []
  if device_count is None:
    import jax  # only here: the rest of validation must not start a backend
    device_count = jax.device_count()
  n = device_count
  if runs_per_step == 1 and batch_size % n:
    return [f"config.train.batch_size = {batch_size} does not split over the {n} devices: use a multiple of {n}, "
            "or pack runs side by side (config.parallel.runs_per_step = 0)."]
  if runs_per_step > 1 and not runs_axis_sizes(n, batch_size, runs_per_step):
    return [f"config.parallel.runs_per_step = {runs_per_step} does not fit {n} devices at batch "
            f"{batch_size}: no number of runs side by side divides both {runs_per_step} and {n} and leaves "
            f"each run's batch splitting over the rest; use 0 (auto) or a multiple of {n}."]
  return []


def validate(config, devices=None, data: bool = True) -> None:
  """Raises UserError listing every problem of `config`, before anything is compiled; the batch is checked against
  `devices` (the run's target, default: every device of every process). data=False leaves the data sources
  unchecked, for tools that only build the step (a plan needs no images)."""
  import importlib  # pylint: disable=g-import-not-at-top

  names = tuple(MODELS)
  divisor = None
  if config.model.name in names:
    try:  # the model's module knows the size divisor its images need
      divisor = importlib.import_module(MODELS[config.model.name]).Model.divisor
    except ImportError:  # a registered model whose module is not installed: the name check cannot help here
      raise UserError(f"config.model.name = {config.model.name!r} is registered but its module is missing: "
                      "reinstall jaxtickets or choose another model.") from None
  problems = _problems(config, names, divisor, None if devices is None else len(devices), data=data)
  if problems:
    raise ConfigError("\n".join(problems))


# ----------------------------------------------------------------------------- resuming


def _flatten(tree: dict) -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  return traverse_util.flatten_dict(tree, sep=".")


_ABSENT = object()


def from_saved(saved: dict) -> ml_collections.ConfigDict:
  """A run's saved config.json as a config, with the defaults of fields written by an older version that lacked
  them (so readers never repeat a default)."""
  from flax import traverse_util  # pylint: disable=g-import-not-at-top

  merged = _flatten(json.loads(default_config().to_json()))
  merged.update(_flatten(saved))
  return ml_collections.ConfigDict(traverse_util.unflatten_dict(merged, sep="."))


def config_changes(saved: dict, record: dict) -> list[str]:
  """'field: old -> new' for each field (but the resume-safe ones) where `record` (a config as config.json keeps
  it) differs from a run's saved config.json.

  A field the saved config lacks (written by an older version) counts as unchanged when it has its default.
  """
  old = _flatten(saved)
  new = _flatten(record)
  name = record.get("model", {}).get("name")
  name = name if isinstance(name, str) and name in MODELS else None
  defaults = _flatten(json.loads(default_config(name).to_json()))
  changes = []
  for key in sorted(set(old) | set(new)):
    if key in RESUME_SAFE_FIELDS:
      continue
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if a is _ABSENT and defaults.get(key, _ABSENT) == b:
      continue
    if a != b:
      show = lambda v: "(absent)" if v is _ABSENT else repr(v)
      changes.append(f"{key}: {show(a)} -> {show(b)}")
  return changes


# ----------------------------------------------------------------------------- command lines


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags_parser for the command lines that take --config: a misspelled override (--config.imp.round=3)
  or an unknown variant (--config=configs/adain.py:dmeo) ends in one sentence and exit status 2, not
  ml_collections' traceback."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    rest = flags.FLAGS(argv)
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      loaded = flags.FLAGS.config
      if not isinstance(loaded, ml_collections.ConfigDict):
        loaded.keys()  # a file that failed to load raises its OSError on first use: here, not deep in the command
    return rest
  except (OSError, SyntaxError) as e:
    given = [a.split("=", 1)[1] if "=" in a else b for a, b in zip(argv, [*argv[1:], ""])
             if a == "--config" or a.startswith("--config=")]
    name = given[-1] if given else "?"
    path = name.split(":")[0]
    if isinstance(e, SyntaxError):
      why = f"a syntax error at line {e.lineno} ({e.msg})"
    else:
      why = ("no such file" if not os.path.exists(path) else
             f"it failed to load ({str(e).strip().splitlines()[-1].strip()})")
    print(f"error: --config={name}: {why}; pass a config file such as configs/adain.py (or configs/adain.py:demo).",
          file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:  # a value of the wrong type, an unknown flag: absl's own sentence
    # ml_collections re-raises a config file's error as the same type with its traceback pasted into the message;
    # the innermost one, when it is a UserError (an unknown variant), is already the sentence to show.
    sentence, cause = str(e), e
    while cause is not None:
      if isinstance(cause, UserError) and cause.args:
        sentence = str(cause.args[0])
      cause = cause.__cause__ or cause.__context__
    print(f"error: {sentence}", file=sys.stderr)
    sys.exit(2)
  except (AttributeError, KeyError) as e:
    while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(message))
      e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    name = text.splitlines()[0].strip().strip("'\"")
    overrides = [a[2:].split("=", 1)[0] for a in argv[1:] if a.startswith("--config.")]
    path = next((o for o in overrides if o.rsplit(".", 1)[-1] == name), None)
    if path is None:  # a section on the way is missing, e.g. --config.overrides.imp.rounds where overrides is {}
      section = next((o for o in overrides if name in o.split(".")[:-1]), None)
      if section is None:
        raise
      parts = section.split(".")
      missing = ".".join(parts[:parts.index(name) + 1])
      hint = ("the config sets no such section of overrides: add it to the config file's overrides (a variant such as "
              ":demo sets some), then the command line can change its fields" if parts[1:2] == ["overrides"] else
              "check the spelling against jaxtickets/config.py, which lists every field")
      print(f"error: {section} cannot be set: {missing} does not exist; {hint}.", file=sys.stderr)
      sys.exit(2)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    hint = (f"did you mean {path.rsplit('.', 1)[0]}.{suggestion.group(1)}?" if suggestion else
            "check the spelling against jaxtickets/config.py, which lists every field.")
    print(f"error: {path} does not exist; {hint}", file=sys.stderr)
    sys.exit(2)
