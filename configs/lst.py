"""LST (Li et al. 2019, r41 model) ticket search.

'' (default): the reference's scale (Train.py): only the transform (MulLayer) is trained, with the VGG encoder
              and the decoder frozen (train_encoder=False, train_decoder=False); batch 8, 100k iterations per
              round, Adam at 1e-4 / (1 + 1e-5 k), content 1.0 + style 0.02, 256 px images; 10 rounds of 20%
              global pruning. The scope names every group, but only trained groups are ever pruned, so the
              frozen decoder stays dense. The decoder is meant to be the pre-trained dec_r41.pth, loaded
              through config.model.init_from (ported weights); without it the frozen decoder is
              random and the run is not meaningful for style transfer.
              Data: the reference resizes the shorter side to 256 and takes a random 256 crop (plus a random
              horizontal flip); our pipeline resizes to load_size x load_size (aspect ratio not kept) and
              crops, so load 256 / crop 256 is the whole image squashed to 256x256, without the flip.
'demo':       the embedded demo: full width, 64 px crops of 96 px resizes, 40 steps per round, 5 rounds
              (dense + 4 pruned) plus the random-pruning baseline, as configs/adain.py:demo: an LST step costs
              about 0.7x an AdaIN demo step on CPU (no encoder backward; the loss VGG stops at r41), so the run
              takes about 7 minutes on a 2-core CPU. No pre-trained decoder exists here, so the demo trains the
              decoder too (train_decoder=True; it is then pruned as well): a transform trained against a frozen
              random decoder would learn nothing about style transfer.
"""

from jaxtickets import config as config_lib


def demo(c):
  config_lib.use_demo_data(c, steps=40, rounds=4)
  c.model.train_decoder = True  # no pre-trained decoder is available offline


def get_config(arg: str = ""):
  c = config_lib.default_config("lst")  # its loss weights: the model class's
  c.model.train_encoder = False  # LST trains only its transform
  c.model.train_decoder = False  # decoder4 is pre-trained and frozen in the reference
  c.data.load_size = 256
  c.data.crop_size = 256
  c.train.lr = 1e-4
  c.train.schedule = "inverse"
  c.train.lr_decay = 1e-5  # LST's "1e-4 / (1 + 1e-5 k) set after step k" equals this form before step k
  c.train.batch_size = 8
  c.train.steps = 100_000
  c.imp.rounds = 10
  c.sparsity.scope = "encoder,decoder,transform"
  return config_lib.pick_variant(c, arg, {"demo": demo}, __file__)
