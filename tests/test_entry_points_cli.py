"""Every ``rgbd-seg`` command, run as a user runs it (a subprocess), against a table of bad inputs.

Each case asserts the documented exit code, one error line naming the culprit, no traceback, and that every file
that existed before is byte-identical afterwards (and, for a refused command, that nothing new was written).
The failures are chosen to happen before a model loads where the command allows it, so the table stays fast.
"""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from entry_points import EXIT_NOTHING_DONE, EXIT_USAGE, ROOT, assert_clean_failure, rgbd_seg, run, snapshot

from rgbd_seg_ros.bag import COLOR_TOPIC, DEPTH_INFO_TOPIC, DEPTH_TOPIC, BagWriter, dataset_samples, write_dataset_bag
from rgbd_seg_ros.frames import CameraIntrinsics

BUNDLED = ROOT / "rgbd_seg_ros" / "data" / "sgnet_r18_synthetic.safetensors"


class _RunsCode:
    """Unpickling this runs a shell command: what a ``.pth`` from a stranger may hold."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def _truncated_onnx(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    data = helper.make_model(graph).SerializeToString()
    onnx.checker.check_model(onnx.load_from_string(data))  # a valid model, then cut
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Good and bad inputs in one folder (snapshotted around every case), and a work folder for outputs."""
    d = tmp_path_factory.mktemp("inputs")
    p = {"dir": d, "work": tmp_path_factory.mktemp("work"), "sentinel": d.parent / "pickle_ran_code"}
    names = {
        "bag": "bag",
        "cut": "cut.mcap",
        "notabag": "notabag.mcap",
        "aspect": "aspect_bag",
        "ckpt": "model.safetensors",
        "truncated": "truncated.safetensors",
        "garbage": "garbage.safetensors",
        "pickled": "code.pth",
        "onnx": "truncated.onnx",
        "file": "a_file",
    }
    p.update({key: d / name for key, name in names.items()})
    write_dataset_bag(p["bag"], dataset_samples("synthetic", 2, size=(24, 32)))
    data = (p["bag"] / "bag.mcap").read_bytes()
    p["cut"].write_bytes(data[: len(data) // 2])
    p["notabag"].write_bytes(np.random.default_rng(0).bytes(2000))
    with BagWriter(p["aspect"]) as writer:  # colour 30x40 (4:3), depth and its CameraInfo 40x40 (1:1)
        for i in range(3):
            stamp = 1_700_000_000_000_000_000 + i * 100_000_000
            writer.write_image(COLOR_TOPIC, np.full((30, 40, 3), 90, np.uint8), "rgb8", stamp, "cam")
            writer.write_image(DEPTH_TOPIC, np.full((40, 40), 1500, np.uint16), "16UC1", stamp, "cam")
            writer.write_camera_info(DEPTH_INFO_TOPIC, CameraIntrinsics(40, 40, 20, 20, 40, 40), stamp, "cam")
    shutil.copy(BUNDLED, p["ckpt"])
    raw = BUNDLED.read_bytes()
    p["truncated"].write_bytes(raw[: len(raw) // 3])
    p["garbage"].write_bytes(np.random.default_rng(1).bytes(4096))
    p["pickled"].write_bytes(pickle.dumps({"state_dict": _RunsCode(p["sentinel"])}))
    _truncated_onnx(p["onnx"])
    p["file"].write_text("a regular file, not a folder\n")
    p["previous"] = d / "previous_run"  # another replay's folder, plus a file of the user's
    p["previous"].mkdir()
    for name, text in (("report.json", "{}"), ("confusion.png", "png"), ("notes.txt", "mine")):
        (p["previous"] / name).write_text(text)
    p["existing_onnx"] = d / "exported.onnx"
    p["existing_onnx"].write_bytes(b"an earlier export")
    p["missing"] = d / "missing.safetensors"
    p["nowhere"] = d / "no_such_folder"
    return p


# (id, command line with {placeholders} from ``inputs``, culprit named in the error line, exit code)
CASES = [
    # demo
    ("demo-frames-0", "demo --frames 0", "--frames", EXIT_USAGE),
    ("demo-replay-frames-negative", "demo --replay-frames -2", "--replay-frames", EXIT_USAGE),
    ("demo-negative-size", "demo --size=-480x640", "--size", EXIT_USAGE),
    ("demo-out-under-a-file", "demo --out {file}/out", "a_file", EXIT_USAGE),
    # make-bag
    ("make-bag-frames-0", "make-bag --frames 0 --out {work}/b", "--frames", EXIT_USAGE),
    ("make-bag-fps-0", "make-bag --frames 2 --fps 0 --out {work}/b", "--fps", EXIT_USAGE),
    ("make-bag-negative-jitter", "make-bag --frames 2 --jitter-ms -1 --out {work}/b", "--jitter-ms", EXIT_USAGE),
    ("make-bag-small-size", "make-bag --frames 2 --size 8x8 --out {work}/b", "--size", EXIT_USAGE),
    ("make-bag-existing-out", "make-bag --frames 2 --size 24x32 --out {bag}", "exists already", EXIT_USAGE),
    ("make-bag-out-under-a-file", "make-bag --frames 2 --size 24x32 --out {file}/b", "a_file", EXIT_USAGE),
    ("make-bag-no-frame-count", "make-bag --out {work}/b", "number of frames", EXIT_USAGE),
    # replay: model inputs
    ("replay-missing-checkpoint", "replay {bag} --checkpoint {missing} --out {work}/r", "missing.safetensors", 2),
    ("replay-truncated-checkpoint", "replay {bag} --checkpoint {truncated} --out {work}/r", "truncated.safetensors", 2),
    ("replay-garbage-checkpoint", "replay {bag} --checkpoint {garbage} --out {work}/r", "garbage.safetensors", 2),
    ("replay-pickle-with-code", "replay {bag} --checkpoint {pickled} --out {work}/r", "code.pth", EXIT_USAGE),
    ("replay-truncated-onnx", "replay {bag} --checkpoint {onnx} --out {work}/r", "truncated.onnx", EXIT_USAGE),
    # replay: bags
    ("replay-missing-bag", "replay {dir}/nobag --checkpoint {ckpt} --out {work}/r", "nobag", EXIT_USAGE),
    ("replay-corrupt-bag", "replay {cut} --checkpoint {ckpt} --out {work}/r", "cut.mcap", EXIT_USAGE),
    ("replay-not-a-bag", "replay {notabag} --checkpoint {ckpt} --out {work}/r", "notabag.mcap", EXIT_USAGE),
    ("replay-missing-topic", "replay {bag} --topics /a /b /c --checkpoint {ckpt} --out {work}/r", "'/a'", 2),
    # replay: outputs and values
    ("replay-out-under-a-file", "replay {bag} --checkpoint {ckpt} --out {file}/out", "a_file", EXIT_USAGE),
    ("replay-out-is-a-file", "replay {bag} --checkpoint {ckpt} --out {file}", "a_file", EXIT_USAGE),
    ("replay-existing-run", "replay {bag} --checkpoint {ckpt} --out {previous}", "--overwrite", EXIT_USAGE),
    ("replay-realtime-0", "replay {bag} --checkpoint {ckpt} --out {work}/r --realtime 0", "--realtime", 2),
    ("replay-queue-size-0", "replay {bag} --checkpoint {ckpt} --out {work}/r --queue-size 0", "--queue-size", 2),
    ("replay-negative-slop", "replay {bag} --checkpoint {ckpt} --out {work}/r --slop -1", "--slop", EXIT_USAGE),
    ("replay-depth-scale-0", "replay {bag} --checkpoint {ckpt} --out {work}/r --depth-scale 0", "--depth-scale", 2),
    ("replay-negative-samples", "replay {bag} --checkpoint {ckpt} --out {work}/r --samples -1", "--samples", 2),
    ("replay-num-threads", "replay {bag} --checkpoint {ckpt} --out {work}/r --num-threads -1", "--num-threads", 2),
    # export
    ("export-missing-checkpoint", "export {missing} --onnx {work}/m.onnx", "missing.safetensors", EXIT_USAGE),
    ("export-pickle-with-code", "export {pickled} --onnx {work}/m.onnx", "code.pth", EXIT_USAGE),
    ("export-out-under-a-file", "export {ckpt} --onnx {file}/m.onnx", "a_file", EXIT_USAGE),
    ("export-not-onnx", "export {ckpt} --onnx {work}/m.safetensors", ".onnx", EXIT_USAGE),
    ("export-onto-its-input", "export {onnx} --onnx {onnx}", "truncated.onnx", EXIT_USAGE),
    ("export-small-size", "export {ckpt} --onnx {work}/m.onnx --input-size 8x8", "--input-size", EXIT_USAGE),
    # benchmark and models
    ("benchmark-frames-0", "benchmark --frames 0", "--frames", EXIT_USAGE),
    ("benchmark-missing-checkpoint", "benchmark --checkpoint {missing}", "missing.safetensors", EXIT_USAGE),
    ("benchmark-garbage-checkpoint", "benchmark --checkpoint {garbage} --backend torch", "garbage.safetensors", 2),
    ("benchmark-negative-size", "benchmark --size=-480x640", "--size", EXIT_USAGE),
    ("models-small-size", "models --size 10x10", "--size", EXIT_USAGE),
    ("unknown-command", "frobnicate", "frobnicate", EXIT_USAGE),
]


@pytest.mark.parametrize(("case", "command", "culprit", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_cleanly_and_touches_nothing(inputs, case, command, culprit, code):
    paths = {k: str(v) for k, v in inputs.items()}
    argv = [a.format(**paths) for a in command.split()]
    before = snapshot(inputs["dir"])
    work_before = sorted(inputs["work"].iterdir())
    result = run(rgbd_seg(*argv), cwd=inputs["work"])
    assert_clean_failure(result, culprit, code)
    assert snapshot(inputs["dir"]) == before  # byte-identical, and nothing new beside them
    assert sorted(inputs["work"].iterdir()) == work_before  # nothing half-written
    assert not inputs["sentinel"].exists(), "unpickling ran code from the checkpoint"


def test_the_pickled_code_file_does_run_code_when_unpickled(tmp_path):
    """Positive control for the cases above: unpickling the same kind of file naively does run its command, so the
    sentinel's absence there shows the loaders refused it (rather than the payload never working)."""
    sentinel = tmp_path / "ran"
    pickled = tmp_path / "code.pth"
    pickled.write_bytes(pickle.dumps({"state_dict": _RunsCode(sentinel)}))
    loader = f"import pickle; pickle.loads(open({str(pickled)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", loader], check=True, timeout=60)
    assert sentinel.exists()


def test_a_replay_that_rejects_every_set_exits_3_and_says_why(inputs):
    before = snapshot(inputs["dir"])
    out = inputs["work"] / "aspect_out"
    model = ["--checkpoint", str(inputs["ckpt"]), "--backend", "torch", "--device", "cpu"]
    result = run(rgbd_seg("replay", str(inputs["aspect"]), "--out", str(out), *model), cwd=inputs["work"])
    line = assert_clean_failure(result, "another aspect ratio", EXIT_NOTHING_DONE)
    assert "nothing processed: 3 ×" in line and "40x40" in line
    assert "3 × depth is 40x40" in result.stdout  # the summary lists the reasons with counts
    page = (out / "report.html").read_text()
    assert "Nothing was processed" in page and "3 × depth is 40x40" in page
    assert snapshot(inputs["dir"]) == before
    shutil.rmtree(out)


def test_the_help_documents_the_exit_codes():
    result = run(rgbd_seg("--help"))
    assert result.returncode == 0
    text = result.stdout
    for code in ("0", "1", "2", "3", "130"):
        assert f"\n  {code} " in text, text
    readme = (ROOT / "README.md").read_text()
    assert "**Exit codes**" in readme and "`130`" in readme and "`3`" in readme


# -- make-bag from the installed command: every dataset reader ships with the package -------------------------------
def _installed_rgbd_seg() -> Path:
    script = Path(sys.executable).parent / "rgbd-seg"
    assert script.is_file(), f"no installed rgbd-seg beside {sys.executable}: run the README's install line"
    return script


@pytest.mark.parametrize(
    ("dataset", "root", "culprit"),
    [
        ("nyudv2", "{nowhere}", "no_such_folder"),
        ("sunrgbd", "{dir}", "SUN RGB-D"),
        ("cityscapes", "{dir}", "Cityscapes"),
        ("nyudv2", None, "needs its root folder"),
    ],
)
def test_make_bag_for_a_dataset_from_the_installed_command_fails_cleanly(inputs, tmp_path, dataset, root, culprit):
    argv = [str(_installed_rgbd_seg()), "make-bag", "--dataset", dataset, "--out", str(tmp_path / "b")]
    if root is not None:
        argv += ["--root", root.format(**{k: str(v) for k, v in inputs.items()})]
    before = snapshot(inputs["dir"])
    result = run(argv, cwd=tmp_path, PYTHONPATH="")  # not the source checkout: only what pip installed
    assert_clean_failure(result, culprit, EXIT_USAGE)
    assert snapshot(inputs["dir"]) == before and list(tmp_path.iterdir()) == []


def test_make_bag_reads_a_real_dataset_layout_from_the_installed_command(tmp_path):
    from rgbd_seg_ros.bag import BagReader
    from rgbd_seg_ros.synthetic import write_dataset

    root = write_dataset(tmp_path / "nyu", n_train=1, n_test=2, size=(24, 32))  # NYUDv2's folder layout
    result = run(
        [str(_installed_rgbd_seg()), "make-bag", "--dataset", "nyudv2", "--root", str(root), "--out", "bag"],
        cwd=tmp_path,
        PYTHONPATH="",
    )
    assert result.returncode == 0, result.stderr
    with BagReader(tmp_path / "bag") as reader:
        assert reader.topics[COLOR_TOPIC].count == 2  # the test split


# -- what the README's install line installs ------------------------------------------------------------------------
#: Modules imported by optional code paths only, and what needs them.
_OPTIONAL = {"tensorflow": "converting the authors' TensorFlow checkpoints (rgbd-seg convert)"}
_DISTRIBUTIONS = {"cv2": "opencv-python-headless", "yaml": "pyyaml", "PIL": "pillow"}


def _install_requires() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = next(k.value for k in call.keywords if k.arg == "install_requires")
    names = set()
    for element in requires.elts:
        spec = ast.literal_eval(element)
        names.add(spec.split(";")[0].split("=")[0].split(">")[0].split("<")[0].split("[")[0].strip().lower())
    return names


def test_the_install_line_covers_every_module_the_commands_import():
    """``pip install -e .`` alone must be enough for every command the README names (not the ROS node's imports,
    which come from ROS or the ``[ros]`` extra)."""
    requires = _install_requires()
    assert "onnxscript" in requires  # rgbd-seg export and the CPU backend's ONNX export
    imported = set()
    for path in (ROOT / "rgbd_seg_ros").rglob("*.py"):
        if "ros" in path.relative_to(ROOT / "rgbd_seg_ros").parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"rgbd_seg_ros", "__future__"} - set(_OPTIONAL)
    missing = sorted(m for m in third_party if _DISTRIBUTIONS.get(m, m).lower().replace("_", "-") not in requires)
    assert not missing, f"imported by rgbd_seg_ros but not in setup.py's install_requires: {missing}"
