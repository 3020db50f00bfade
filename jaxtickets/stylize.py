"""Stylize images with a ticket, ported weights or an export file.

  python -m jaxtickets.stylize --ticket=runs/adain/tickets/imp/rep_0/round_10 --content=photo.jpg --style=wave.jpg \
      --out=out.png [--alpha=0.8] [--size=512] [--preserve_color]
  python -m jaxtickets.stylize --weights=adain.npz --content=photos/ --style=a.jpg,b.jpg --style_weights=0.7,0.3 \
      --out=stylized/

Both images are resized so that their shorter side is --size (0 keeps them as they are); any size works (the
model pads to its divisor and crops back). An --out ending in .npy holds the float32 HxWx3 output before
clamping. Several styles are mixed at the image level (see jaxtickets/inference.py).
"""

import os
import sys

from absl import app, flags
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxtickets import data
from jaxtickets.errors import UserError

IMAGE_OUT = (".png", ".jpg", ".jpeg")
OUT_EXTENSIONS = IMAGE_OUT + (".npy",)


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
  """uint8 HxWx3 resized (bilinear) so that its shorter side is `size`; 0 keeps it."""
  if size < 0:
    raise UserError(f"--size={size} is not allowed: give the shorter side in pixels, or 0 for the native size.")
  h, w = img.shape[:2]
  if size == 0 or min(h, w) == size:
    return img
  scale = size / min(h, w)
  new = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(img).resize(new, Image.Resampling.BILINEAR))


def load(path: str, size: int) -> np.ndarray:
  """An image file as float32 HxWx3 in [0, 1] (grayscale and alpha converted by data.load_image)."""
  return resize_shorter(data.load_image(path), size).astype(np.float32) / np.float32(255.0)


def save(path: str, image: np.ndarray) -> None:
  """PNG/JPEG (clamped to [0, 1], rounded to 8 bits) or .npy (float32, as computed), by the extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in OUT_EXTENSIONS:
    raise UserError(f"The output '{path}' has the extension '{ext}': use one of {', '.join(OUT_EXTENSIONS)}.")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  try:
    if ext == ".npy":
      np.save(path, np.asarray(image, np.float32))
      return
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(pixels).save(path, **({"quality": 95} if ext != ".png" else {}))
  except OSError as err:
    raise UserError(f"Could not write '{path}' ({err.strerror or err}): choose a writable path.") from None


def plan(content: str, out: str, ext: str = ".png") -> list[tuple[str, str]]:
  """(input, output) paths: a folder maps to a folder (same relative paths, extension `ext`), a file to a file."""
  if os.path.isdir(content):
    if os.path.splitext(out)[1].lower() in OUT_EXTENSIONS:
      raise UserError(f"--content='{content}' is a folder, so --out='{out}' must be a folder, not an image file.")
    try:
      inputs = data.list_images(content, "content")
    except UserError:
      raise UserError(f"The content folder '{content}' has no images ({', '.join(data.IMAGE_EXTENSIONS)}): "
                      "put images there or pass one image.") from None
    return [(p, os.path.join(out, os.path.splitext(os.path.relpath(p, content))[0] + ext)) for p in inputs]
  if not os.path.isfile(content):
    raise UserError(f"--content='{content}' does not exist: pass an image file or a folder of images.")
  out_ext = os.path.splitext(out)[1].lower()
  if out_ext in OUT_EXTENSIONS:
    return [(content, out)]
  if out_ext and not os.path.isdir(out):
    raise UserError(f"--out='{out}' has the extension '{out_ext}': use one of {', '.join(OUT_EXTENSIONS)}, or a "
                    "folder.")
  return [(content, os.path.join(out, os.path.splitext(os.path.basename(content))[0] + ext))]


def run(stylizer, content: str, styles: list[str], out: str, *, style_weights=None, alpha: float = 1.0,
        size: int = 512, preserve_color: bool = False, ext: str = ".png") -> list[str]:
  """Stylizes one image or a folder with the mix of `styles`; returns the written paths."""
  if not styles:
    raise UserError("--style is empty: pass one style image or several separated by commas.")
  from jaxtickets import inference

  inference.mix_weights(style_weights, len(styles))  # fail before any work
  jobs = plan(content, out, ext)
  style_images = [load(s, size) for s in styles]
  written = []
  for src, dst in tqdm(jobs, desc="stylize", unit="image", disable=None if len(jobs) > 1 else True):
    result = stylizer.stylize_mix(load(src, size), style_images, style_weights, alpha, preserve_color=preserve_color)
    save(dst, result)
    written.append(dst)
  return written


def parse_weights(text: str | None) -> list[float] | None:
  if not text:
    return None
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise UserError(f"--style_weights='{text}' is not a list of numbers: write e.g. 0.5,0.5.") from None


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: other CLIs (export, main) define flags of the same names."""
  flags.DEFINE_string("ticket", None, "A ticket directory, WORKDIR/tickets/<branch>/rep_<r>/round_NN.")
  flags.DEFINE_string("weights", None, "Ported weights (a directory written by scripts/port_weights.py) or an "
                      "export file.")
  flags.DEFINE_string("vgg_weights", None, "With --ticket: the VGG weights the run trained with, where they are now "
                      "(default: where the run found them, checked against the run's vgg.json).")
  flags.DEFINE_bool("allow_vgg_mismatch", False, "With --vgg_weights: use them although their SHA-256 is not the "
                    "run's.")
  flags.DEFINE_enum("which", "trained", ["trained", "rewind"], "With --ticket: the trained weights or the rewind "
                    "point.")
  flags.DEFINE_string("content", None, "A content image or a folder of them.")
  flags.DEFINE_string("style", None, "A style image, or several separated by commas.")
  flags.DEFINE_string("style_weights", None, "Weights of the styles, e.g. 0.7,0.3 (default: equal).")
  flags.DEFINE_string("out", None, "The output file (.png, .jpg, .npy) or folder.")
  flags.DEFINE_float("alpha", 1.0, "Style strength in [0, 1].")
  flags.DEFINE_integer("size", 512, "Shorter side of content and style in pixels; 0 = native size.")
  flags.DEFINE_bool("preserve_color", False, "Luminance-only transfer: keep the content's colors.")
  flags.DEFINE_enum("ext", "png", ["png", "jpg", "npy"], "Output format for folders.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from jaxtickets import inference

  try:
    if bool(FLAGS.ticket) == bool(FLAGS.weights):
      raise UserError("Pass exactly one of --ticket=WORKDIR/tickets/<branch>/rep_<r>/round_NN and --weights=DIR|FILE.")
    missing = [f"--{f}" for f in ("content", "style", "out") if not getattr(FLAGS, f)]
    if missing:
      raise UserError(f"Pass {', '.join(missing)}: e.g. --content=photo.jpg --style=art.jpg --out=result.png.")
    if FLAGS.ticket:
      stylizer = inference.Stylizer.from_ticket(FLAGS.ticket, FLAGS.which, FLAGS.vgg_weights,
                                                FLAGS.allow_vgg_mismatch)
    elif os.path.isfile(FLAGS.weights):
      stylizer = inference.Stylizer.from_export(FLAGS.weights)
    else:
      stylizer = inference.Stylizer.from_ported(FLAGS.weights)
    styles = [s.strip() for s in FLAGS.style.split(",") if s.strip()]
    written = run(stylizer, FLAGS.content, styles, FLAGS.out, style_weights=parse_weights(FLAGS.style_weights),
                  alpha=FLAGS.alpha, size=FLAGS.size, preserve_color=FLAGS.preserve_color, ext="." + FLAGS.ext)
  except UserError as e:
    sys.exit(f"error: {e}")
  print(f"Wrote {written[0]}" if len(written) == 1 else f"Wrote {len(written)} images to {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
