"""AdaIN (Huang & Belongie 2017) ticket search.

'' (default): the paper's scale: batch 8, 256 px crops of 512x512 resizes, 160k iterations per round, 10 rounds
              of 20% global pruning (89.3% sparsity at the end), VGG encoder trained too.
'demo':       the embedded demo: full-width VGG, scikit-image's photographs and textures, 64 px crops,
              5 rounds (dense + 4 pruned) plus the random-pruning baseline, minutes on a laptop CPU.
"""

from jaxtickets import config as config_lib


def get_config(arg: str = ""):
  c = config_lib.default_config()
  c.model.name = "adain"
  c.model.content_weight = 1.0
  c.model.style_weight = 10.0
  c.train.lr = 1e-4
  c.train.lr_decay = 5e-5
  c.train.batch_size = 8
  c.train.steps = 160_000
  c.imp.rounds = 10
  if arg == "demo":
    config_lib.use_demo_data(c, steps=40, rounds=4)
  elif arg:
    raise ValueError(f"Unknown variant {arg!r} of configs/adain.py: use '' (paper scale) or 'demo'.")
  return c
