"""Stylize images with a ticket, ported weights or an export file.

  python -m jaxtickets.stylize --ticket=runs/adain/tickets/imp/rep_0/round_10 --content=photo.jpg --style=wave.jpg \
      --out=out.png [--alpha=0.8] [--size=512] [--preserve_color]
  python -m jaxtickets.stylize --weights=adain.npz --content=photos/ --style=a.jpg,b.jpg --style_weights=0.7,0.3 \
      --out=stylized/
  python -m jaxtickets.stylize --ticket=... --content_dir=photos/ --style_dir=styles/ --out=stylized/ \
      [--content_size=512] [--style_size=512] [--crop]

As the upstream test scripts do: --style_dir stylizes every content image with every style in the folder, and
an --out folder gets one '{content}_stylized_{style}.{ext}' per pair (a mix of --style=a.jpg,b.jpg is named
'{content}_stylized_a+b'; a content folder's subfolders are kept). Content and style are resized so that their
shorter side is --content_size / --style_size (each --size unless given; 0 keeps them as they are), and --crop
then takes the centered square of that side. Any size works (the model pads to its divisor and crops back). An
--out ending in .npy holds the float32 HxWx3 output before clamping. Several styles are mixed at the image level
(see jaxtickets/tickets/inference.py).
"""

import functools
import os

from absl import app, flags
import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxtickets import data, storage
from jaxtickets import errors
from jaxtickets.errors import UserError

IMAGE_OUT = (".png", ".jpg", ".jpeg")
OUT_EXTENSIONS = IMAGE_OUT + (".npy",)


def resize_shorter(img: np.ndarray, size: int, flag: str = "--size") -> np.ndarray:
  """uint8 HxWx3 resized (bilinear) so that its shorter side is `size`; 0 keeps it."""
  if size < 0:
    raise UserError(f"{flag}={size} is not allowed: give the shorter side in pixels, or 0 for the native size.")
  h, w = img.shape[:2]
  if size == 0 or min(h, w) == size:
    return img
  scale = size / min(h, w)
  new = (max(1, round(w * scale)), max(1, round(h * scale)))
  return np.asarray(Image.fromarray(img).resize(new, Image.Resampling.BILINEAR))


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The centered size x size square (0: the shorter side's), its corner rounded as torchvision's CenterCrop."""
  h, w = img.shape[:2]
  side = min(h, w) if size == 0 else min(size, h, w)
  top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
  return img[top:top + side, left:left + side]


def load(path: str, size: int, crop: bool = False, flag: str = "--size") -> np.ndarray:
  """An image file as float32 HxWx3 in [0, 1] (grayscale and alpha converted by data.load_image), its shorter side
  resized to `size` and, with `crop`, cut to the centered square."""
  # A large file is decoded reduced, still at least twice `size` on each side (data.load_image); 0 keeps it whole.
  img = resize_shorter(data.load_image(path, min_size=size if size > 0 else None), size, flag)
  if crop:
    img = center_crop(img, size)
  return img.astype(np.float32) / np.float32(255.0)


def save(path: str, image: np.ndarray) -> None:
  """PNG/JPEG (clamped to [0, 1], rounded to 8 bits) or .npy (float32, as computed), by the extension."""
  ext = os.path.splitext(path)[1].lower()
  if ext not in OUT_EXTENSIONS:
    raise UserError(f"The output '{path}' has the extension '{ext}': use one of {', '.join(OUT_EXTENSIONS)}.")
  storage.makedirs(os.path.dirname(os.path.abspath(path)))
  try:
    if ext == ".npy":
      np.save(path, np.asarray(image, np.float32))
      return
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(pixels).save(path, **({"quality": 95} if ext != ".png" else {}))
  except OSError as err:
    raise UserError(f"Could not write '{path}' ({err.strerror or err}): choose a writable path.") from None


def style_sets(styles: list[str] | None, style_dir: str | None = None) -> list[list[str]]:
  """The styles of each pair: one mix of `styles` (--style), or each image of `style_dir` on its own."""
  if styles and style_dir:
    raise UserError("Pass one of --style=FILE[,FILE...] (one style, or a mix) and --style_dir=DIR (every style in "
                    "it), not both.")
  if not style_dir:
    if not styles:
      raise UserError("--style is empty: pass one style image or several separated by commas (or --style_dir=DIR).")
    return [list(styles)]
  if not os.path.isdir(style_dir):
    raise UserError(f"--style_dir='{style_dir}' is not a folder: pass a folder of style images (or one image as "
                    "--style=FILE).")
  try:
    return [[p] for p in data.list_images(style_dir, "style")]
  except UserError:
    raise UserError(f"The style folder '{style_dir}' has no images ({', '.join(data.IMAGE_EXTENSIONS)}): put images "
                    "there or pass one image as --style=FILE.") from None


def _stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def plan(content: str, out: str, ext: str = ".png", styles: list[list[str]] | None = None
         ) -> list[tuple[str, int, str]]:
  """(content, index into `styles`, output) of every pair: an --out file takes one pair, an --out folder one
  '{content}_stylized_{style}{ext}' per pair (a content folder's subfolders kept)."""
  styles = styles if styles is not None else [[]]
  if os.path.isdir(content):
    if os.path.splitext(out)[1].lower() in OUT_EXTENSIONS:
      raise UserError(f"--content='{content}' is a folder, so --out='{out}' must be a folder, not an image file.")
    try:
      paths = data.list_images(content, "content")
    except UserError:
      raise UserError(f"The content folder '{content}' has no images ({', '.join(data.IMAGE_EXTENSIONS)}): "
                      "put images there or pass one image.") from None
    inputs = [(p, os.path.splitext(os.path.relpath(p, content))[0]) for p in paths]
  elif not os.path.isfile(content):
    raise UserError(f"--content='{content}' does not exist: pass an image file or a folder of images.")
  else:
    inputs = [(content, _stem(content))]
  out_ext = os.path.splitext(out)[1].lower()
  if out_ext in OUT_EXTENSIONS:
    if len(styles) > 1:
      raise UserError(f"--out='{out}' is one file, but --style_dir gives {len(styles)} styles: pass a folder as "
                      "--out.")
    return [(content, 0, out)]
  if out_ext and not os.path.isdir(out):
    raise UserError(f"--out='{out}' has the extension '{out_ext}': use one of {', '.join(OUT_EXTENSIONS)}, or a "
                    "folder.")
  jobs, seen = [], {}
  for src, rel in inputs:
    for k, mix in enumerate(styles):
      dst = os.path.join(out, f"{rel}_stylized_{'+'.join(_stem(s) for s in mix)}{ext}")
      if dst in seen:  # e.g. a.jpg and a.png side by side
        raise UserError(f"'{seen[dst][0]}' with '{'+'.join(seen[dst][1])}' and '{src}' with '{'+'.join(mix)}' "
                        f"would both be written to '{dst}': rename one of the images.")
      seen[dst] = (src, mix)
      jobs.append((src, k, dst))
  return jobs


def run(stylizer, content: str, styles: list[str] | None, out: str, *, style_dir: str | None = None,
        style_weights=None, alpha: float = 1.0, size: int = 512, content_size: int | None = None,
        style_size: int | None = None, crop: bool = False, preserve_color: bool = False,
        ext: str = ".png") -> list[str]:
  """Stylizes one image or a folder with the mix of `styles`, or with each style of `style_dir` in turn; returns
  the written paths. `content_size` and `style_size` default to `size`."""
  sets = style_sets(styles, style_dir)
  if style_dir and style_weights:
    raise UserError("--style_weights mixes the images of --style; with --style_dir each style makes its own pair: "
                    "drop --style_weights.")
  from jaxtickets.tickets import inference

  inference.mix_weights(style_weights, len(sets[0]))  # fail before any work
  jobs = plan(content, out, ext, sets)
  load_content = functools.partial(load, size=size if content_size is None else content_size, crop=crop,
                                   flag="--size" if content_size is None else "--content_size")
  load_style = functools.lru_cache(maxsize=32)(functools.partial(
      load, size=size if style_size is None else style_size, crop=crop,
      flag="--size" if style_size is None else "--style_size"))
  for path in sets[0] if not style_dir else ():
    load_style(path)  # a missing style file fails before any work
  written, current = [], (None, None)
  for src, k, dst in tqdm(jobs, desc="stylize", unit="pair", disable=None if len(jobs) > 1 else True):
    if current[0] != src:
      current = (src, load_content(src))
    result = stylizer.stylize_mix(current[1], [load_style(s) for s in sets[k]], style_weights, alpha,
                                  preserve_color=preserve_color)
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
  flags.DEFINE_string("content_dir", None, "A folder of content images (the same as --content=DIR).")
  flags.DEFINE_string("style", None, "A style image, or several separated by commas (mixed into one style).")
  flags.DEFINE_string("style_dir", None, "A folder of style images: every content image with every style.")
  flags.DEFINE_string("style_weights", None, "Weights of the styles, e.g. 0.7,0.3 (default: equal).")
  flags.DEFINE_string("out", None, "The output file (.png, .jpg, .npy) or folder.")
  flags.DEFINE_float("alpha", 1.0, "Style strength in [0, 1].")
  flags.DEFINE_integer("size", 512, "Shorter side of content and style in pixels; 0 = native size.")
  flags.DEFINE_integer("content_size", None, "Shorter side of the content in pixels, 0 = native (default: --size).")
  flags.DEFINE_integer("style_size", None, "Shorter side of the style in pixels, 0 = native (default: --size).")
  flags.DEFINE_bool("crop", False, "After resizing, cut content and style to the centered square of their shorter "
                    "side.")
  flags.DEFINE_bool("preserve_color", False, "Luminance-only transfer: keep the content's colors.")
  flags.DEFINE_enum("ext", "png", ["png", "jpg", "npy"], "Output format for folders.")


def main(argv):
  from jaxtickets.tickets import inference

  def work():
    if bool(FLAGS.ticket) == bool(FLAGS.weights):
      raise UserError("Pass exactly one of --ticket=WORKDIR/tickets/<branch>/rep_<r>/round_NN and --weights=DIR|FILE.")
    if FLAGS.content and FLAGS.content_dir:
      raise UserError("Pass one of --content and --content_dir, not both.")
    if FLAGS.content_dir and not os.path.isdir(FLAGS.content_dir):
      raise UserError(f"--content_dir='{FLAGS.content_dir}' is not a folder: pass a folder of content images.")
    content = FLAGS.content or FLAGS.content_dir
    missing = [f for f, v in (("--content", content), ("--style", FLAGS.style or FLAGS.style_dir),
                              ("--out", FLAGS.out)) if not v]
    if missing:
      raise UserError(f"Pass {', '.join(missing)}: e.g. --content=photo.jpg --style=art.jpg --out=result.png.")
    styles = [s.strip() for s in (FLAGS.style or "").split(",") if s.strip()]
    plan(content, FLAGS.out, "." + FLAGS.ext, style_sets(styles, FLAGS.style_dir))  # input mistakes before loading
    if FLAGS.ticket:
      stylizer = inference.Stylizer.from_ticket(FLAGS.ticket, FLAGS.which, FLAGS.vgg_weights,
                                                FLAGS.allow_vgg_mismatch)
    elif os.path.isfile(FLAGS.weights):
      stylizer = inference.Stylizer.from_export(FLAGS.weights)
    else:
      stylizer = inference.Stylizer.from_ported(FLAGS.weights)
    written = run(stylizer, content, styles, FLAGS.out, style_dir=FLAGS.style_dir,
                  style_weights=parse_weights(FLAGS.style_weights), alpha=FLAGS.alpha, size=FLAGS.size,
                  content_size=FLAGS.content_size, style_size=FLAGS.style_size, crop=FLAGS.crop,
                  preserve_color=FLAGS.preserve_color, ext="." + FLAGS.ext)
    return written

  written = errors.run_command(work, "jaxtickets.stylize", argv)
  print(f"Wrote {written[0]}" if len(written) == 1 else f"Wrote {len(written)} images to {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
