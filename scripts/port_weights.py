"""Ports released PyTorch weights to a directory of Flax weights (jaxtickets.weights describes it).

  python scripts/port_weights.py --vgg=vgg_normalised.pth --out=weights/vgg
  python scripts/port_weights.py --model=sanet --vgg=vgg_normalised.pth --decoder=decoder_iter_500000.pth \\
      --transform=transformer_iter_500000.pth --out=weights/sanet

Use the directory as --config.model.vgg_weights=DIR (its VGG) and, for a whole model, --config.model.init_from=DIR
(its decoder/transform as theta_0). AdaAttN takes two --transform files (latest_net_transformer.pth and
latest_net_adaattn_3.pth); .pth needs torch (pip install "jaxtickets[port]"), .safetensors and .npz do not.
"""

import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
# Porting is numpy work plus a checkpoint write: leave any TPU/GPU free for the runs that need it.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "adain, sanet, lst, manet, adaattn or mccnet; omit for a VGG-only port.")
flags.DEFINE_string("vgg", None, "VGG19 weights: vgg_normalised.pth, torchvision vgg19-*.pth or LST vgg_r51.pth.")
flags.DEFINE_string("decoder", None, "The model's released decoder file.")
flags.DEFINE_multi_string("transform", [], "The model's released transform file(s); repeat the flag for several.")
flags.DEFINE_string("out", None, "The directory to write the ported weights to.")
flags.DEFINE_bool("overwrite", False, "Replace ported weights already in --out.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  if not FLAGS.vgg or not FLAGS.out:
    sys.exit("error: pass --vgg=FILE and --out=DIR (and --model, --decoder, --transform for a whole model).")
  from jaxtickets.weights import port
  from jaxtickets.errors import UserError

  try:
    ported = port.port(FLAGS.model, vgg=FLAGS.vgg, decoder=FLAGS.decoder, transforms=FLAGS.transform,
                       out=FLAGS.out, overwrite=FLAGS.overwrite)
  except UserError as e:
    sys.exit(f"error: {e}")
  for note in ported.notes:
    print(note if note.startswith("WARNING") else f"note: {note}", file=sys.stderr)
  what = f"the {ported.model} model" if ported.params is not None else "the VGG encoder"
  print(f"Ported {what} to {FLAGS.out}: use --config.model.vgg_weights={FLAGS.out}"
        + (f" --config.model.init_from={FLAGS.out}" if ported.params is not None else ""))


if __name__ == "__main__":
  app.run(main)
