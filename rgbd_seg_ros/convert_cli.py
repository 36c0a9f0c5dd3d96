"""``rgbd-seg convert``: an authors' released checkpoint → our checkpoint with full metadata (README "Model zoo")."""

from __future__ import annotations

import argparse


def add_convert_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``convert`` on the ``rgbd-seg`` sub-command parsers (imports nothing heavy)."""
    parser = sub.add_parser(
        "convert",
        help="convert an authors' released checkpoint (torch or TensorFlow) into an rgbd_seg_ros checkpoint",
        description=(
            "Detects the model from the file's keys and shapes, loads it strictly (every tensor used, every "
            "target filled, shapes checked) and writes a .safetensors checkpoint whose metadata (label set, "
            "input spec, test input size, source SHA-256, paper mIoU) lets every command run it without options. "
            "TensorFlow checkpoints (AdapNet++, SSMA) need the [tf] extra."
        ),
    )
    parser.add_argument("src", help="the authors' file: .pth/.pth.tar, or a TensorFlow checkpoint prefix or folder")
    parser.add_argument("-o", "--out", required=True, help="output .safetensors file")
    parser.add_argument(
        "--release",
        metavar="NAME",
        help="which release the file is, when its weights do not say (e.g. AdapNet++'s dataset and modality); "
        "the names are in the README's Model zoo, and an ambiguous file's error lists the ones that fit",
    )
    parser.add_argument("--model", help="model name, for files whose layout is not detected (see `rgbd-seg models`)")
    parser.add_argument("--backbone", help="backbone, with --model")
    parser.add_argument("--num-classes", type=int, help="class count, with --model")
    parser.add_argument("--label-set", help="label set of the classes (default: the release's)")
    parser.add_argument("--modality", choices=("rgb", "jet", "hha"), help="AdapNet++/SSMA second input")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(func=cmd_convert)
    return parser


def cmd_convert(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.out`` and print the load report and where the values came from."""
    from rgbd_seg_ros.models.convert import convert

    result = convert(
        args.src,
        args.out,
        release=args.release,
        model=args.model,
        backbone=args.backbone,
        num_classes=args.num_classes,
        label_set=args.label_set,
        modality=args.modality,
        force=args.force,
    )
    for line in result.report.lines():
        print(line)
    meta = result.metadata
    size = meta.get("input_size")
    print(f"  label set {meta['label_set']}; test input size {'x'.join(map(str, size)) if size else 'the frame size'}")
    miou = meta.get("reported_miou") or {}
    if miou.get("value") is not None:
        print(f"  reported mIoU {miou['value']} ({miou['dataset']}; {miou['note']})")
    print(f"wrote {result.path}")
    return 0


__all__ = ["add_convert_parser", "cmd_convert"]
