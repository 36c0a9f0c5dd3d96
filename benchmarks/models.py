"""Forward latency of the model zoo: eval mode, ``torch.inference_mode``, batch 1, with and without channels_last.

Each case is ``(model name, build kwargs, sizes)``; add a model by appending to :data:`CASES`. All runs are
timed in interleaved rounds, and every figure is also printed as a ratio to :data:`BASELINE` (same process,
same size and memory format), which keeps runs on a loaded machine comparable. Figures on a shared CPU are
noisy; the minimum over rounds is the least disturbed.

    .venv/bin/python benchmarks/models.py                       # all cases, CPU (CUDA when available)
    .venv/bin/python benchmarks/models.py --only sgnet --repeat 5 --threads 2
    .venv/bin/python benchmarks/models.py --only 'sgnet-resnet18$' --onnx     # + ONNX Runtime CPU
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rgbd_seg_ros.models import build_model

Size = tuple[int, int]
SIZES: list[Size] = [(240, 320), (480, 640)]

#: SGNet-R18's backbone and heads without S-Convs (the paper's "baseline" on ResNet-18).
#: Also timed at 384×768 (AdapNet++/SSMA's size) so those cases get a ratio.
BASELINE: tuple[str, dict, list[Size]] = ("sgnet", {"backbone": "resnet18", "sconv_stages": ()}, [*SIZES, (384, 768)])

CASES: list[tuple[str, dict, list[Size]]] = [
    ("sgnet", {"backbone": "resnet18"}, SIZES),
    ("sgnet", {"backbone": "resnet50"}, SIZES),
    ("sgnet", {"backbone": "resnet101"}, SIZES),
    ("sagate", {"backbone": "resnet50"}, [(480, 640)]),  # Table 1 setting (DeepLabV3+, output stride 16)
    ("acnet", {"backbone": "resnet50"}, [(480, 640)]),  # the paper's only backbone; H, W multiples of 32
    ("adapnet", {}, [(384, 768)]),  # the paper's 768×384 (Tables 2, 16); H, W multiples of 16
    ("ssma", {"modality": "hha"}, [(384, 768)]),  # two AdapNet++ encoders + SSMA, 768×384
    ("gff", {"backbone": "resnet101"}, [(480, 640)]),  # PSPNet-R101 (output stride 8) + GFF + DFP
    ("gff", {"backbone": "resnet101", "head": "psp"}, [(480, 640)]),  # its PSPNet baseline
]


@dataclass
class Run:
    """One (case, size, layout) to time; ``fn()`` runs one forward."""

    label: str
    size: Size
    layout: str  # contiguous | channels_last | onnxruntime
    fn: Callable[[], object]
    times_ms: list[float] = field(default_factory=list)

    def time(self, device: str) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        self.fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) * 1e3


def _onnx_fn(model: torch.nn.Module, inputs: tuple, workdir: Path, tag: str) -> Callable[[], object]:
    """Export ``model(*inputs)`` to ONNX and return an ONNX Runtime (CPU) forward with the same inputs."""
    import onnxruntime as ort

    from rgbd_seg_ros.onnx_ops import export_onnx

    names = ["rgb", "depth"][: sum(t is not None for t in inputs)]
    args = tuple(t for t in inputs if t is not None)
    path = export_onnx(model, args, workdir / f"{tag}.onnx", input_names=names)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {n: t.numpy() for n, t in zip(names, args)}
    return lambda: session.run(None, feed)


def make_runs(name: str, kwargs: dict, sizes: list[Size], layouts: list[str], device: str, workdir: Path) -> list[Run]:
    """Build ``build_model(name, 40, **kwargs)`` once per layout and its inputs for every size."""
    runs = []
    options = dict(kwargs)
    backbone = options.pop("backbone", None)
    label = _label(name, kwargs)
    for layout in layouts:
        model = build_model(name, 40, backbone=backbone, **options).eval().to(device)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        channels = model.input_spec.depth_channels
        for size in sizes:
            rgb = torch.randn(1, 3, *size, device=device).contiguous(memory_format=fmt)
            depth = torch.rand(1, channels, *size, device=device) * 4 + 0.5 if channels else None
            depth = None if depth is None else depth.contiguous(memory_format=fmt)
            if layout == "onnxruntime":
                tag = re.sub(r"\W+", "_", f"{label}_{size[0]}x{size[1]}")
                fn = _onnx_fn(model, (rgb, depth), workdir, tag)
            else:
                fn = functools.partial(model, rgb, depth)
            runs.append(Run(label, size, layout, fn))
    return runs


def _label(name: str, kwargs: dict) -> str:
    extra = ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "backbone")
    return f"{name}-{kwargs.get('backbone', 'default')}" + (f"[{extra}]" if extra else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="regex on the case label, e.g. 'sgnet-resnet(18|50)'")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds (every run once per round)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-channels-last", action="store_true", help="skip the channels_last runs")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (CPU) on the exported model")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = ["contiguous"] + ([] if args.no_channels_last else ["channels_last"]) + (["onnxruntime"] * args.onnx)
    cases = [c for c in CASES if re.search(args.only, _label(c[0], c[1]))]
    with tempfile.TemporaryDirectory() as tmp:
        baseline_runs = make_runs(*BASELINE, layouts, args.device, Path(tmp))
        runs = baseline_runs + [r for c in cases for r in make_runs(*c, layouts, args.device, Path(tmp))]
        # Rounds interleave all runs, so a load spike on a shared machine hits every case alike.
        with torch.inference_mode():
            for round_index in range(args.warmup + args.repeat):
                for run in runs:
                    ms = run.time(args.device)
                    if round_index >= args.warmup:
                        run.times_ms.append(ms)
    base = {(r.size, r.layout): min(r.times_ms) for r in baseline_runs}
    print(
        f"device={args.device} threads={torch.get_num_threads()} torch={torch.__version__} batch=1 eval inference_mode"
    )
    print(
        f"rounds={args.repeat} (+{args.warmup} warm-up); ratio = min ms / baseline min ms at the same size and layout"
    )
    print(f"{'case':<44} {'size':>9} {'layout':>13} {'min ms':>9} {'median ms':>10} {'x baseline':>10}")
    for i, run in enumerate(runs):
        label = ("baseline " if i < len(baseline_runs) else "") + run.label
        size = f"{run.size[0]}x{run.size[1]}"
        best, median = min(run.times_ms), statistics.median(run.times_ms)
        ratio = best / base[(run.size, run.layout)] if (run.size, run.layout) in base else float("nan")
        print(f"{label:<44} {size:>9} {run.layout:>13} {best:>9.1f} {median:>10.1f} {ratio:>10.2f}")


if __name__ == "__main__":
    main()
