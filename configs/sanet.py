"""SANet (Park & Lee 2019) ticket search.

'' (default): the reference notebook's scale: batch 5, 256 px crops of 512x512 resizes, 160k iterations per round
              at lr 1e-4 / (1 + 5e-5 i), loss weights content 1, style 3, identity1 50, identity2 1; 10 rounds of
              20% global pruning over encoder, decoder and transform (the paper's SANet ticket is at 6 rounds).
'demo':       the embedded demo: full-width VGG, scikit-image's photographs and textures, 64 px crops (a multiple
              of SANet's divisor 16, so r51 is 4x4), batch 4, 25 steps, 3 rounds plus the random-pruning
              baseline. A SANet step runs the VGG to r51 and decodes three images per pair (for the identity
              losses), so it costs more than an AdaIN step and compiles longer: fewer steps and rounds than
              AdaIN's demo keep it to minutes on a CPU.
"""

from jaxtickets import config as config_lib


def get_config(arg: str = ""):
  c = config_lib.default_config("sanet")  # its loss weights: the model class's
  c.train.lr = 1e-4
  c.train.schedule = "inverse"
  c.train.lr_decay = 5e-5
  c.train.batch_size = 5
  c.train.steps = 160_000
  c.data.load_size = 512
  c.data.crop_size = 256
  c.sparsity.scope = "encoder,decoder,transform"
  c.imp.rounds = 10
  return config_lib.pick_variant(c, arg, {"demo": lambda c: config_lib.use_demo_data(c, steps=25, rounds=3)},
                                 __file__)
