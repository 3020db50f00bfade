"""The paper's comparisons for AdaIN as one job: python -m jaxtickets.study --config=configs/study_adain.py[:demo].

Sub-runs (see jaxtickets/study.py): the reference (encoder trained, IMP + the three baselines) and the encoder
kept fixed; AdaIN's transform has no parameters, so finding 3 is noted as not applicable. Add models with
--config.models=adain,sanet (each uses configs/<model>.py with the same variant).
'' (default): paper scale, each model's configs/<model>.py as it is (10 rounds of 160k steps per sub-run).
'demo':       tiny: each model's demo config at 1/4 width, 32 px crops, 2 pruned rounds of 6 steps; minutes.
'sweep':      the rewind sweep (k = 0, 0.5% and 2% of a round) with each round's stability, and early-bird
              tickets against full IMP, at paper scale; 'demo_sweep' is the same at the demo's tiny size.
"""

import ml_collections

from jaxtickets import config as config_lib

# Each model's demo config at 1/4 width, 32 px crops, 2 pruned rounds of 6 steps.
DEMO_OVERRIDES = {"model": {"width": 0.25}, "data": {"load_size": 48, "crop_size": 32},
                  "train": {"steps": 6, "batch_size": 2, "log_every": 3, "lr": 1e-3}, "imp": {"rounds": 2},
                  "eval": {"num_pairs": 2, "batch_size": 2}}


def demo(c):
  c.variant = "demo"
  c.workdir = "runs/study_adain_demo"
  c.overrides = DEMO_OVERRIDES


def sweep(c):
  c.comparisons = "rewind,early_bird"
  c.rewind_steps = "0,0.5%,2%"
  c.workdir = "runs/study_adain_sweep"


def demo_sweep(c):
  sweep(c)
  demo(c)
  c.rewind_steps = "0,2"
  c.workdir = "runs/study_adain_demo_sweep"
  # the demo's rounds are 6 steps: draw the early-bird mask every 2
  c.overrides.imp.update(early_bird_every=2, early_bird_epsilon=0.5, early_bird_patience=1)


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.models = "adain"  # comma-separated model names
  c.variant = ""  # passed to each configs/<model>.py get_config
  c.comparisons = "encoder,transform,baselines"
  c.baselines = "random_prune,random_reinit,oneshot"
  c.workdir = "runs/study_adain"
  c.configs_dir = ""  # '' = the repository's configs/
  c.reports = True  # a report.md with figures for every sub-run
  # Fields set in every sub-run's config, by section: e.g. {"train": {"steps": 100}, "imp": {"rounds": 2}}. The
  # command line changes the ones a variant sets, e.g. --config.overrides.train.steps=100 with :demo.
  c.overrides = ml_collections.ConfigDict()
  c.rewind_steps = ""  # 'rewind' comparison: comma-separated steps or shares of a round, e.g. '0,0.5%,2%'
  return config_lib.pick_variant(c, arg, {"demo": demo, "sweep": sweep, "demo_sweep": demo_sweep}, __file__)
