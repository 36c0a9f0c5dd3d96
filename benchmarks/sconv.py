"""S-Conv on the CPU: torchvision's ``deform_conv2d`` kernel ("old") against the gather + GEMM path ("new").

Both paths run in the same process, in interleaved rounds (a load spike on a shared machine hits both alike),
on the same model and inputs; each figure is the minimum over ``--repeat`` rounds after one warm-up. Per
thread count (``torch.set_num_threads``):

* SGNet forward (eval, ``torch.inference_mode``, batch 1, 480×640) per backbone: old / new ms, speed-up,
  max relative logit difference (max |new − old| / max |old|) and the share of pixels with the same argmax;
* the default CPU path: the same model exported to ONNX (ending at its coarse logits, as the export cache does)
  and run by ONNX Runtime (what ``backend: auto`` runs), its ratio to the ideal, and the post-process
  (``rgbd_seg_ros.postprocess``: its final upsampling, labels and confidence at 480×640) as a share of that
  forward;
* an SGNet-R18 training step (batch 4, 240×320, train mode, cross-entropy on main + aux logits, backward,
  SGD step with momentum): old / new ms;
* every figure as a ratio to its ideal = 2 × MACs / the FP32 GEMM rate measured with ``torch.mm`` (n×n×n,
  ``--gemm-size``) on the same threads. MACs come from ``rgbd_seg_ros.models.summary`` (S-Conv counted as a
  convolution); a training step's ideal takes 3 × the forward MACs of the batch (forward, input and weight
  gradients; aux heads not counted).

S-Convs get random non-zero offsets (offset generators re-initialised, std 0.02 / bias std 1) so that taps
sample between pixels as a trained model's do; BN gets random running statistics.

    .venv/bin/python benchmarks/sconv.py                                   # R18 + R101, 1 and 2 threads
    .venv/bin/python benchmarks/sconv.py --backbones resnet18 --threads 2 --repeat 2 --gemm-size 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from rgbd_seg_ros.backends import OnnxRuntimeBackend, export_model_onnx
from rgbd_seg_ros.models import build_model
from rgbd_seg_ros.models.sconv import SConv, use_sconv_implementation
from rgbd_seg_ros.models.summary import model_row
from rgbd_seg_ros.postprocess import labels_and_confidence, upsample

PATHS = {"old": "torchvision", "new": "gather"}
FORWARD_SIZE = (480, 640)
TRAIN_SIZE, TRAIN_BATCH = (240, 320), 4


def loadavg() -> str:
    """The 1/5/15-minute load averages (``/proc/loadavg``), or "n/a"."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def gemm_gflops(n: int, repeat: int) -> float:
    """Best FP32 ``torch.mm`` rate (GFLOP/s) of an n×n by n×n product on the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero S-Conv offsets (fractional, some pixels) and non-trivial BN statistics, reproducibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SConv):
                w, b = module.offset_generator.weight, module.offset_generator.bias
                w.copy_(torch.randn(w.shape, generator=gen) * 0.02)
                b.copy_(torch.randn(b.shape, generator=gen))
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
    return model


def interleaved_min_ms(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """One warm-up call each, then ``repeat`` rounds calling every fn once: min ms per name."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_index in range(1 + repeat):
        for name, fn in fns.items():
            seconds = _seconds(fn)
            if round_index:
                times[name].append(seconds * 1e3)
    return {name: min(t) for name, t in times.items()}


def forward_case(backbone: str, repeat: int, gflops: float, onnx: bool = True) -> list[str]:
    """Forward of SGNet-``backbone`` at 480×640: eager old vs new, and the default CPU path (ONNX Runtime on the
    exported model, as ``backend: auto`` runs it) with the share of the post-process: table lines."""
    torch.manual_seed(0)
    model = randomise(build_model("sgnet", 40, backbone=backbone)).eval()
    rgb = torch.randn(1, 3, *FORWARD_SIZE)
    depth = torch.rand(1, 1, *FORWARD_SIZE) * 4 + 0.5
    logits = {}

    def run(path: str) -> Callable[[], object]:
        def fn() -> None:
            with use_sconv_implementation(PATHS[path]), torch.inference_mode():
                logits[path] = model(rgb, depth)

        return fn

    fns = {path: run(path) for path in PATHS}
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_model_onnx(model, (rgb, depth), Path(tmp) / "m.onnx", {"model": "sgnet"}, coarse=True)
            session = OnnxRuntimeBackend(path, "cpu", num_threads=torch.get_num_threads())

        def run_onnx() -> None:
            logits["onnx"] = session(rgb, depth)

        fns["onnx"] = run_onnx
    best = interleaved_min_ms(fns, repeat)
    old, new = logits["old"], logits["new"]
    rel = ((new - old).abs().max() / old.abs().max()).item()
    same = (new.argmax(1) == old.argmax(1)).float().mean().item()
    gmacs = model_row("sgnet", backbone, FORWARD_SIZE).gmacs
    ideal = 2 * gmacs / gflops * 1e3
    label = f"SGNet-{backbone.replace('resnet', 'R')} forward {FORWARD_SIZE[0]}x{FORWARD_SIZE[1]}"
    lines = [
        f"{label:<34} {gmacs:>7.1f} {ideal:>9.0f} {best['old']:>9.0f} {best['old'] / ideal:>6.2f}x "
        f"{best['new']:>9.0f} {best['new'] / ideal:>6.2f}x {best['old'] / best['new']:>8.2f}x  "
        f"max rel diff {rel:.1e}, argmax equal {same:.4%}"
    ]
    if onnx:
        steps = [(FORWARD_SIZE, session.final_align_corners)]  # the graph ends before SGNet's final upsampling
        post = interleaved_min_ms({"post": lambda: labels_and_confidence(logits["onnx"][0], steps)}, repeat)
        rel_onnx = ((upsample(logits["onnx"], steps) - old).abs().max() / old.abs().max()).item()
        lines.append(
            f"{'  default path (ONNX Runtime)':<34} {'':>7} {'':>9} {'':>9} {'':>7} {best['onnx']:>9.0f} "
            f"{best['onnx'] / ideal:>6.2f}x {best['old'] / best['onnx']:>8.2f}x  max rel diff {rel_onnx:.1e}; "
            f"post-process {post['post']:.1f} ms = {100 * post['post'] / best['onnx']:.1f} % of the forward"
        )
    return lines


def train_case(repeat: int, gflops: float) -> list[str]:
    """One SGNet-R18 training step (batch 4, 240×320, SGD), old vs new: table lines."""
    torch.manual_seed(0)
    model = randomise(build_model("sgnet", 40, backbone="resnet18")).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    rgb = torch.randn(TRAIN_BATCH, 3, *TRAIN_SIZE)
    depth = torch.rand(TRAIN_BATCH, 1, *TRAIN_SIZE) * 4 + 0.5
    target = torch.randint(0, 40, (TRAIN_BATCH, *TRAIN_SIZE))

    def run(path: str) -> Callable[[], object]:
        def fn() -> None:
            with use_sconv_implementation(PATHS[path]):
                out = model(rgb, depth)
                loss = F.cross_entropy(out["out"], target) + sum(
                    w * F.cross_entropy(aux, target) for w, aux in zip(model.aux_weights, out["aux"])
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()

        return fn

    best = interleaved_min_ms({path: run(path) for path in PATHS}, repeat)
    gmacs = 3 * TRAIN_BATCH * model_row("sgnet", "resnet18", TRAIN_SIZE).gmacs
    ideal = 2 * gmacs / gflops * 1e3
    label = f"SGNet-R18 train step b{TRAIN_BATCH} {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]}"
    return [
        f"{label:<34} {gmacs:>7.1f} {ideal:>9.0f} {best['old']:>9.0f} {best['old'] / ideal:>6.2f}x "
        f"{best['new']:>9.0f} {best['new'] / ideal:>6.2f}x {best['old'] / best['new']:>8.2f}x"
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "resnet101"])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch.set_num_threads values")
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds per case (after one warm-up)")
    parser.add_argument("--train-repeat", type=int, default=2, help="timed training steps per path")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--no-onnx", action="store_true", help="skip the default path (ONNX Runtime)")
    parser.add_argument("--gemm-size", type=int, default=4096, help="n of the torch.mm n^3 rate measurement")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}; old = torchvision deform_conv2d, new = gather + GEMM (sconv.py)")
    print(f"loadavg at start: {loadavg()}; min of {args.repeat} rounds (train: {args.train_repeat}) after 1 warm-up")
    for threads in args.threads:
        torch.set_num_threads(threads)
        gflops = gemm_gflops(args.gemm_size, repeat=3)
        print(f"\nthreads={threads}: torch.mm {args.gemm_size}^3 FP32 = {gflops:.1f} GFLOP/s (loadavg {loadavg()})")
        head = f"{'case':<34} {'GMACs':>7} {'ideal ms':>9} {'old ms':>9} {'/ideal':>7} {'new ms':>9} {'/ideal':>7}"
        print(f"{head} {'speed-up':>9}")
        for backbone in args.backbones:
            for line in forward_case(backbone, args.repeat, gflops, onnx=not args.no_onnx):
                print(line, flush=True)
        if not args.no_train:
            for line in train_case(args.train_repeat, gflops):
                print(line, flush=True)
    print(f"\nloadavg at end: {loadavg()}")


if __name__ == "__main__":
    main()
