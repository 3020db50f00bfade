"""Makes the demo's loss network: a VGG (vgg_normalised's layout up to relu4_1) trained here as the encoder of a pixel
autoencoder, so that its features keep what an image looks like.

    python scripts/make_demo_vgg.py                # writes jaxtickets/assets/demo_vgg_w0.25.npz and prints its SHA-256

A random VGG is no loss network: a decoder trained against it does not even reproduce its own training contents
(docs/study_cpu/pilots). ImageNet's VGG cannot be downloaded here, so the demo, the CPU study and the tests use this
one instead (`--config.model.vgg_weights=demo`). It is trained on every photograph and texture the install ships
(scikit-image's and matplotlib's sample images) except the demo's held-out evaluation images, which stay unseen,
with random scales, crops, flips and colour jitter. Seeded: the same command on the same versions gives the same
file. After changing it, put the printed SHA-256 into jaxtickets/weights/files.py's DEMO_VGG.
"""

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxtickets import data as data_lib, storage
from jaxtickets.core import evaluate
from jaxtickets.weights import files as weights
from jaxtickets.models import decoder as decoder_lib, layers, vgg as vgg_lib

# The demo's held-out images (and the right view of the held-out motorcycle) are never trained on.
_HELD_OUT = {*data_lib.DEMO_IMAGES["eval_content"], *data_lib.DEMO_IMAGES["eval_style"], "motorcycle_right.png"}
_SCALES = (64, 96, 128, 192, 256)  # short sides the images are resized to before a crop is drawn


def training_images() -> list[str]:
  """Every image file shipped by scikit-image and matplotlib, minus the demo's held-out ones, sorted."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import skimage.data  # pylint: disable=import-outside-toplevel
  folders = (os.path.dirname(skimage.data.__file__), os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data",
                                                                   "sample_data"))
  paths = []
  for folder in folders:
    for name in sorted(os.listdir(folder)):
      if name.lower().endswith((".png", ".jpg", ".jpeg")) and name not in _HELD_OUT:
        paths.append(os.path.join(folder, name))
  return paths


def _resize_short(img: np.ndarray, short: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=import-outside-toplevel
  h, w = img.shape[:2]
  scale = short / min(h, w)
  size = (max(short, round(w * scale)), max(short, round(h * scale)))
  return np.asarray(Image.fromarray(img).resize(size, Image.BICUBIC))


def _augment(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
  """A random crop, flip and colour jitter (brightness, contrast, saturation) of a uint8 image, as float in [0, 1]."""
  h, w = img.shape[:2]
  y, x = rng.integers(0, h - crop + 1), rng.integers(0, w - crop + 1)
  out = img[y:y + crop, x:x + crop].astype(np.float32) / 255.0
  if rng.random() < 0.5:
    out = out[:, ::-1]
  grey = out.mean(axis=-1, keepdims=True)
  out = grey + rng.uniform(0.7, 1.3) * (out - grey)  # saturation
  out = out.mean() + rng.uniform(0.8, 1.2) * (out - out.mean())  # contrast
  out = out + rng.uniform(-0.1, 0.1)  # brightness
  return np.clip(out, 0.0, 1.0)


def train(width: float, steps: int, batch: int, crop: int, lr: float, seed: int, log=None) -> tuple[dict, dict]:
  """(the VGG params up to r41, what was measured): encoder and decoder trained together on pixel MSE."""
  log = log or (lambda msg: print(msg, flush=True))
  paths = training_images()
  pyramid = [[_resize_short(data_lib.load_image(p), s) for s in _SCALES] for p in paths]
  log(f"{len(paths)} training images: {', '.join(os.path.basename(p) for p in paths)}")
  encoder = vgg_lib.VGGEncoder(depth="r41", width=width)
  decoder = decoder_lib.Decoder(width=width, kernel_init=vgg_lib.vgg_init)
  key = jax.random.PRNGKey(seed)
  x0 = jnp.zeros((1, crop, crop, 3), jnp.float32)
  params = {"encoder": layers.init_params(encoder, jax.random.fold_in(key, 0), x0)}
  params["decoder"] = layers.init_params(decoder, jax.random.fold_in(key, 1), encoder.apply(
      {"params": params["encoder"]}, x0)["r41"])
  tx = optax.adam(optax.warmup_cosine_decay_schedule(0.0, lr, min(100, steps // 10), steps))
  opt_state = tx.init(params)

  def reconstruct(p, x):
    return decoder.apply({"params": p["decoder"]}, encoder.apply({"params": p["encoder"]}, x)["r41"])

  @jax.jit
  def step(p, o, x):
    loss, grads = jax.value_and_grad(lambda q: jnp.mean((reconstruct(q, x) - x) ** 2))(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  held_out = np.stack([data_lib.preprocess_eval(data_lib.load_image(p), 96, crop)
                       for p in data_lib.demo_images("eval_content")])

  @jax.jit
  def held_out_psnr(p):
    rec = jnp.clip(reconstruct(p, held_out), 0.0, 1.0)
    return jnp.mean(jax.vmap(evaluate.psnr)(rec, held_out))

  rng = np.random.default_rng(seed)
  start = time.time()
  for i in range(steps):
    x = np.stack([_augment(pyramid[k][rng.integers(len(_SCALES))], crop, rng) for k in rng.integers(len(paths),
                                                                                                       size=batch)])
    params, opt_state, loss = step(params, opt_state, x)
    if (i + 1) % max(1, steps // 10) == 0 or i + 1 == steps:
      log(f"step {i + 1}/{steps}: pixel MSE {float(loss):.5f}, held-out reconstruction "
          f"{float(held_out_psnr(params)):.2f} dB ({time.time() - start:.0f} s)")
  measured = {"held_out_psnr": float(held_out_psnr(params)), "seconds": time.time() - start,
              "images": [os.path.basename(p) for p in paths]}
  return jax.device_get(params["encoder"]), measured


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--width", type=float, default=0.25, help="the VGG's channel multiplier")
  parser.add_argument("--steps", type=int, default=2000)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--crop", type=int, default=64)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="", help="default: jaxtickets/assets/demo_vgg_w<width>.npz")
  args = parser.parse_args(argv)
  out = args.out or weights.demo_vgg_path(args.width)
  params, measured = train(args.width, args.steps, args.batch, args.crop, args.lr, args.seed)
  arrays = {k: np.asarray(v, np.float32) for k, v in weights.flatten(params).items()}
  storage.write_atomically(out, lambda tmp: weights.write_npz(tmp, arrays))
  print(f"wrote {out}: held-out reconstruction {measured['held_out_psnr']:.2f} dB after {args.steps} steps "
        f"({measured['seconds']:.0f} s)")
  print(f"SHA-256 {weights.file_sha256(out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
