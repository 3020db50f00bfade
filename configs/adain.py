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
    c.data.content = "demo"
    c.data.style = "demo"
    c.data.eval_content = "demo"
    c.data.eval_style = "demo"
    c.data.load_size = 96
    c.data.crop_size = 64
    c.train.batch_size = 4
    c.train.steps = 40
    c.train.lr = 2e-4  # a few dozen steps per round need a faster start than the paper's 1e-4
    c.train.log_every = 10
    c.checkpoint.every_steps = 10  # a killed demo resumes mid-round
    c.imp.rounds = 4
    c.imp.branches = "imp,random_prune"
    c.eval.num_pairs = 4
    c.eval.batch_size = 4
  elif arg:
    raise ValueError(f"Unknown variant {arg!r} of configs/adain.py: use '' (paper scale) or 'demo'.")
  return c
