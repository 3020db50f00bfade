"""MCCNet (Deng et al., AAAI 2021) ticket search.

'' (default): the reference's scale (diyiiyiii/MCCNet train.py): batch 8, 256 px crops of 512x512 resizes,
              160k iterations per round at lr 1e-4 / (1 + 5e-5 i), loss weights content 3, style 10, identity1 70,
              identity2 1, noise 3000, TV 1e-4 (a raw sum over the batch, as the reference); 10 rounds of 20%
              global pruning over encoder, decoder and the MCC transform.
'demo':       the embedded demo: full width, scikit-image's photographs and textures, 64 px crops,
              4 rounds (dense + 3 pruned, 48.8% sparsity) of 15 steps plus the random-pruning baseline. An MCCNet
              step makes four decoder passes and runs the VGG to r51 on five image batches, so it costs several
              AdaIN steps: fewer steps and rounds than configs/adain.py:demo keep it to minutes on a laptop CPU.

Departures from the reference:
- model.mcc_eps (default 1e-5): the MCC weight w = sum_n G^2 / sum_n G divides by a sum that equals N times g's
  bias and has no eps in the reference, so it blows up (NaN at 0) as a bias nears 0. The default keeps the
  denominator's sign and floors its magnitude at mcc_eps per position (see jaxtickets/models/mccnet.py);
  --config.model.mcc_eps=0.0 reproduces the reference's bare division exactly.
- Not reproduced (no switch): the reference computes its losses inside nn.DataParallel on 2 GPUs and sums the
  replicas, so its objective is the sum of two half-batch means (TV: two half-batch sums), about 2x ours. Here
  every term is one mean (TV one sum) over the whole batch; Adam is nearly invariant to that scale.
- The transform has no `h` conv (defined but unused by the reference's forward pass): 1,050,624 parameters, not
  1,313,280. Its g conv starts from PyTorch's default bias init (the denominator above is N * bias).
"""

from jaxtickets import config as config_lib


def get_config(arg: str = ""):
  c = config_lib.default_config("mccnet")  # its loss weights: the model class's
  c.model.mcc_eps = 1e-5  # 0.0 = the reference's division without eps
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
