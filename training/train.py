"""Train a segmentation model from a recipe.

Usage::

    python training/train.py --config training/configs/synthetic_sgnet_r18.yaml out_dir=runs/syn max_iters=500
    python training/train.py --config training/configs/synthetic_sgnet_r18.yaml out_dir=runs/syn --resume
    torchrun --nproc_per_node=8 training/train.py --config training/configs/sgnet_nyudv2.yaml \
        data.root=/data/NYUDepthv2 model.pretrained=/weights/resnet101-deep.pth out_dir=runs/sgnet_nyu

Overrides are ``key=value`` (dotted ``section.key`` or a unique bare key; values parsed as YAML). ``--resume``
continues from ``<out_dir>/checkpoints/last.pt``; without ``--config`` it reuses ``<out_dir>/config.yaml``
(then ``out_dir=`` must be among the overrides). An ``out_dir`` that already holds a run is refused unless
``--resume`` continues it or ``--force`` replaces it (exactly the run's files; other files stay).

Ctrl-C or SIGTERM during the training steps stops after the current step and writes ``checkpoints/last.pt``;
the line it prints gives the command that continues the run. A second Ctrl-C (a second later or more) stops at
once. See training/README.md for ``torchrun``.

Exit codes: 0 trained; 2 bad command line, recipe or input (one line ``train.py: error: …`` names it; nothing
was written); 130 interrupted (one line ``train.py: interrupted: …``); 1 an unexpected error (a bug: the
traceback is printed, please report it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rgbd_seg_ros.allocator import tune_allocator
from training.config import ConfigError, apply_overrides, config_from_dict, load_config, read_recipe
from training.entry import RunError, guarded

#: The line after "interrupted" when a second Ctrl-C ends the run at once.
INTERRUPTED_AT_ONCE = (
    "stopped at once; --resume continues from the run's last checkpoint (<out_dir>/checkpoints/last.pt), "
    "if one was written"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--config", help="recipe YAML (training/configs/*.yaml)")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from <out_dir>/checkpoints/last.pt")
    again.add_argument("--force", action="store_true", help="replace the run already in out_dir (its files only)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved recipe and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    return parser.parse_args(argv)


def resolve_config(args: argparse.Namespace):
    if args.config:
        return load_config(args.config, args.overrides)
    if not args.resume:
        raise ConfigError("--config is required (or --resume with out_dir=DIR to reuse DIR/config.yaml)")
    out = [o.split("=", 1)[1] for o in args.overrides if o.split("=", 1)[0] in ("out_dir", "train.out_dir")]
    if not out:
        raise ConfigError("--resume without --config needs out_dir=DIR")
    return config_from_dict(apply_overrides(read_recipe(Path(out[-1]) / "config.yaml"), args.overrides))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_allocator()

    def body() -> int:
        cfg = resolve_config(args)
        if args.print_config:
            print(cfg.to_yaml())
            return 0
        from training.engine import Trainer

        Trainer(cfg, resume=args.resume, force=args.force).run()
        return 0

    return guarded("train.py", body, (ConfigError, RunError), interrupted=INTERRUPTED_AT_ONCE)


if __name__ == "__main__":
    sys.exit(main())
