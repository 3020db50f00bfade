"""A ticket as one compact file: python -m jaxtickets.export --ticket=DIR --out=FILE(.npz|.safetensors).

Layout (the same tensors in both formats; names are '<tree>/<leaf path>'):
  params/<path>.values   float32, the kept weights of a pruned leaf in row-major order
  params/<path>.mask     uint8, np.packbits of the leaf's flattened boolean mask
  params/<path>          float32, a leaf with nothing pruned (biases, unpruned layers), stored whole
  vgg/<path>             float32, the frozen VGG, only when the model's stylize reads it (a fixed encoder)
and JSON metadata (model name, model config, each leaf's shape, dtype and storage); in .npz it is the uint8
array '__metadata__', in .safetensors the header's metadata entry 'jaxtickets'. Loading puts each kept value
back at its mask position and zeros elsewhere, so the params are rebuilt bit for bit.

--format=torch --out=FOLDER writes the upstream repositories' own .pth files instead (jaxtickets/tickets/export_torch.py).
"""

import os

from absl import app, flags

from jaxtickets import errors
from jaxtickets.errors import UserError

from jaxtickets.tickets.export_format import (EXTENSIONS, FORMAT, VERSION, Exported, _check_out, encode,  # noqa: F401
                                     load_export, safetensors_numpy, write)


def export_ticket(ticket_dir: str, out: str, which: str = "trained", **stylizer_kwargs) -> dict:
  """Writes the ticket's (masked) weights to `out`; returns the byte counts for `format_sizes`."""
  from jaxtickets.tickets import inference

  _check_out(out)
  st = inference.Stylizer.from_ticket(ticket_dir, which, **stylizer_kwargs)  # vgg_weights, allow_vgg_mismatch
  vgg = st.vgg_params if inference.stylize_reads_vgg(st.model, st.params, st.vgg_params) else None
  tensors, metadata, sizes = encode(st.model.name, st.model_config, st.params, st.masks, vgg,
                                    source=os.path.abspath(ticket_dir))
  write(out, tensors, metadata)
  sizes["file"] = os.path.getsize(out)
  return sizes


def format_sizes(sizes: dict, out: str = "") -> str:
  """The size table: each part of the file against the dense float32 model."""
  dense = sizes["dense"]
  rows = [("dense float32 model", dense),
          (f"kept values ({sizes['kept']:,} weights kept, {sizes['pruned']:,} pruned)", sizes["values"]),
          ("bit-packed masks", sizes["masks"]),
          ("unpruned leaves (biases, ...)", sizes["unpruned"])]
  if sizes["vgg"]:
    rows.append(("frozen VGG (the fixed encoder)", sizes["vgg"]))
  payload = sizes["values"] + sizes["masks"] + sizes["unpruned"] + sizes["vgg"]
  rows.append(("headers and metadata", sizes["file"] - payload))
  rows.append((f"file {os.path.basename(out)}".rstrip(), sizes["file"]))
  width = max(len(r[0]) for r in rows)
  lines = [f"{'part':<{width}}  {'bytes':>12}  {'vs dense':>8}", "-" * (width + 24)]
  for i, (name, n) in enumerate(rows):
    if i == len(rows) - 1:
      lines.append("-" * (width + 24))
    lines.append(f"{name:<{width}}  {n:>12,}  {n / dense:>8.1%}")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Only when run as a program: other CLIs (stylize, main) define flags of the same names."""
  flags.DEFINE_string("ticket", None, "A ticket directory, WORKDIR/tickets/<branch>/rep_<r>/round_NN.")
  flags.DEFINE_string("out", None, "The file to write: .npz or .safetensors (a folder with --format=torch).")
  flags.DEFINE_enum("format", "jaxtickets", ["jaxtickets", "torch"], "jaxtickets: one compact file (kept values + "
                    "packed masks); torch: the upstream repository's .pth files, pruned weights as zeros.")
  flags.DEFINE_enum("which", "trained", ["trained", "rewind"], "The round's trained weights, or its rewind point.")
  flags.DEFINE_string("vgg_weights", None, "The VGG weights the run trained with, where they are now (default: where "
                      "the run found them, checked against the run's vgg.json).")
  flags.DEFINE_bool("allow_vgg_mismatch", False, "With --vgg_weights: use them although their SHA-256 is not the "
                    "run's.")


def main(argv):
  def work():
    if not FLAGS.ticket or not FLAGS.out:
      raise UserError("Pass --ticket=WORKDIR/tickets/imp/rep_0/round_NN and --out=FILE.npz (or .safetensors, or a "
                      "folder with --format=torch).")
    if FLAGS.format == "torch":
      return _main_torch()
    return export_ticket(FLAGS.ticket, FLAGS.out, FLAGS.which, vgg_weights=FLAGS.vgg_weights,
                         allow_vgg_mismatch=FLAGS.allow_vgg_mismatch)

  sizes = errors.run_command(work, "jaxtickets.export", argv)
  if sizes is None:
    return
  print(format_sizes(sizes, FLAGS.out))
  print(f"Wrote {FLAGS.out}; load it with jaxtickets.export.load_export or stylize with "
        f"python -m jaxtickets.stylize --weights={FLAGS.out}.")


def _main_torch() -> None:
  """--format=torch: the upstream .pth files into the folder --out (see jaxtickets/tickets/export_torch.py)."""
  from jaxtickets.tickets import export_torch

  files, notes = export_torch.export_ticket(FLAGS.ticket, FLAGS.out, FLAGS.which, vgg_weights=FLAGS.vgg_weights,
                                            allow_vgg_mismatch=FLAGS.allow_vgg_mismatch)
  print(export_torch.summary(files, FLAGS.out))
  for note in notes:
    print(f"note: {note}")
  print(f"Wrote {len(files)} files to {FLAGS.out}; they load with torch.load(path, weights_only=True) and "
        "load_state_dict(strict=True) in the upstream code.")


if __name__ == "__main__":
  define_flags()
  app.run(main)
