"""MANet (Deng et al. 2020) ticket search.

'' (default): the reference train.py's scale: batch 8, 256 px crops of 512x512 resizes, 160k iterations per round
              at lr 1e-4 / (1 + 5e-5 i), loss weights content 1, style 5, identity1 50, identity2 1,
              disentanglement 1 (switched on while 1 L_c + 5 L_s < disentangle_threshold = 10); 10 rounds of 20%
              global pruning over encoder (VGG to r41, all the transform reads), decoder and transform.
'demo':       the embedded demo: full-width VGG, scikit-image's photographs and textures, 64 px crops, batch 4,
              15 steps, 3 rounds plus the random-pruning baseline. A MANet step decodes five images per pair
              (Ics, Icc, Iss, Ic1s, Ics1) and runs each through the loss VGG to r51, so it costs several AdaIN
              steps and compiles longer: fewer steps and rounds than AdaIN's demo keep it to minutes on a CPU.

config.model.manet_original_pairing (default False) picks the disentanglement pairs:
  False: the paper's intent. Ic1s = D(MA(c1, s)) stylizes ONE content c1 (drawn from the batch) with each style of
         the batch and Ics1 = D(MA(c, s1)) each content with ONE style s1; L_dc compares two random permutations
         of Ic1s (same content, different styles), L_ds two of Ics1 (same style, different contents).
  True:  the reference code, which builds batch-1 loaders but draws c1 and s1 from the batch-B loaders, so
         `.expand` does nothing and randomly paired outputs are pushed together; here c1 and s1 are random
         permutations of the batch's own contents and styles.
"""

from jaxtickets import config as config_lib


def get_config(arg: str = ""):
  c = config_lib.default_config("manet")  # its loss weights: the model class's
  c.model.disentangle_threshold = 10.0  # on while content_weight * L_c + style_weight * L_s is below this
  c.model.manet_original_pairing = False
  c.train.lr = 1e-4
  c.train.schedule = "inverse"
  c.train.lr_decay = 5e-5
  c.train.batch_size = 8
  c.train.steps = 160_000
  c.data.load_size = 512
  c.data.crop_size = 256
  c.sparsity.scope = "encoder,decoder,transform"
  c.imp.rounds = 10
  return config_lib.pick_variant(c, arg, {"demo": lambda c: config_lib.use_demo_data(c, steps=15, rounds=3)},
                                 __file__)
