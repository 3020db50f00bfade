"""The paper's comparisons for AdaIN as one job: python -m jaxtickets.study --config=configs/study_adain.py[:demo].

Sub-runs (see jaxtickets/study.py): the reference (encoder trained, IMP + the three baselines) and the encoder
kept fixed; AdaIN's transform has no parameters, so finding 3 is noted as not applicable. Add models with
--config.models=adain,sanet (each uses configs/<model>.py with the same variant).
'' (default): paper scale, each model's configs/<model>.py as it is (10 rounds of 160k steps per sub-run).
'demo':       tiny: each model's demo config at 1/4 width, 32 px crops, 2 pruned rounds of 6 steps; minutes.
"""

import ml_collections


def get_config(arg: str = ""):
  c = ml_collections.ConfigDict()
  c.models = "adain"  # comma-separated model names
  c.variant = arg  # passed to each configs/<model>.py get_config
  c.comparisons = "encoder,transform,baselines"
  c.baselines = "random_prune,random_reinit,oneshot"
  c.workdir = "runs/study_adain"
  c.configs_dir = ""  # '' = the repository's configs/
  c.reports = True  # a report.md with figures for every sub-run
  # Applied to every sub-run's config, 'section.field=value' separated by ';' (a string, so that the command
  # line can set any field): e.g. --config.overrides='train.steps=100; imp.rounds=2'.
  c.overrides = ""
  if arg == "demo":
    c.workdir = "runs/study_adain_demo"
    c.overrides = ("model.width=0.25; data.load_size=48; data.crop_size=32; train.steps=6; train.batch_size=2; "
                   "train.log_every=3; train.lr=1e-3; imp.rounds=2; eval.num_pairs=2; eval.batch_size=2")
  elif arg:
    raise ValueError(f"Unknown variant {arg!r} of configs/study_adain.py: use '' (paper scale) or 'demo'.")
  return c
