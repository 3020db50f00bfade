"""AdaAttN (Liu et al. 2021, released config: shallow_layer + skip_connection_3) ticket search.

'' (default): the reference's scale: batch 8, 256 px crops of 512x512 resizes, Adam lr 2e-4 with betas
              (0.9, 0.999) (the reference's beta1 = 0.5 option is never passed to Adam), 5 epochs per round:
              2 at 2e-4, then x0.3 per epoch ('epoch_step'). An epoch is 10,348 steps: 82,783 COCO train2014
              images / batch 8, rounded up. That number is DERIVED (the reference counts epochs, not steps),
              so 5 epochs = 51,740 steps. Loss weights: global style 10, local feature 3, content 0.
              10 rounds of 20% global pruning over encoder, decoder and transform; VGG encoder trained too.
              (The reference also flips training crops horizontally; the shared data pipeline does not.)
'demo':       the embedded demo: full-width VGG, scikit-image's photographs and textures, 64 px crops (a
              multiple of 16: AdaAttN adds r41 and up2(r51)), batch 4, 30 steps per round at a constant 2e-4
              (epoch_steps = steps: the reference's first 2 epochs are constant too, and a few dozen steps need
              the full rate), 4 rounds (dense + 3 pruned, 48.8% sparsity) plus the random-pruning baseline:
              7 rounds x 30 steps. A step runs the VGG to r51, the r31-skip decoder, the transform and the
              attention losses, so it costs more than an AdaIN demo step and compiles longer; this demo is sized
              to take minutes on a CPU.

model.std_grad_eps (default 0 = the reference): an eps under the sqrt of the attention std for its GRADIENT
only (the value stays exact). sqrt(relu(v)) has an infinite derivative as v -> 0+; the reference keeps it, and
the demo trains without NaN at the default. Set e.g. 1e-8 if a run hits a non-finite loss.
"""

from jaxtickets import config as config_lib

EPOCH_STEPS = 10_348  # ceil(82,783 / 8): derived, see above


def demo(c):
  config_lib.use_demo_data(c, steps=30, rounds=3, lr=None)
  c.train.epoch_steps = c.train.steps  # one epoch per round: the lr stays at 2e-4


def get_config(arg: str = ""):
  c = config_lib.default_config("adaattn")  # its loss weights: the model class's
  c.model.std_grad_eps = 0.0
  c.data.load_size = 512
  c.data.crop_size = 256
  c.train.lr = 2e-4
  c.train.schedule = "epoch_step"
  c.train.epoch_steps = EPOCH_STEPS
  c.train.lr_constant_epochs = 2
  c.train.lr_epoch_factor = 0.3
  c.train.batch_size = 8
  c.train.steps = 5 * EPOCH_STEPS
  c.imp.rounds = 10
  c.sparsity.scope = "encoder,decoder,transform"
  return config_lib.pick_variant(c, arg, {"demo": demo}, __file__)
