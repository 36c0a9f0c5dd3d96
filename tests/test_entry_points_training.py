"""``training/train.py`` and ``training/evaluate.py`` run as a user runs them, against a table of bad inputs: each
fails before any training or evaluation with exit code 2, one error line naming the culprit, no traceback, and
every file that existed before byte-identical. Also: ``--force`` replaces exactly a run's files, what a run
writes gets ordinary permissions, and Ctrl-C ends an evaluation in one line. (``rgbd-seg make-bag`` on real
datasets: ``test_entry_points_cli.py``.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from entry_points import (
    EXIT_USAGE,
    ROOT,
    assert_clean_failure,
    child_env,
    run,
    script,
    snapshot,
    start_as_from_a_terminal,
)

RECIPE = str(ROOT / "training" / "configs" / "synthetic_sgnet_r18.yaml")


def train_args(rooms: Path, out: Path, *extra: str) -> list[str]:
    """train.py on tiny synthetic rooms: two steps of seconds on a CPU."""
    return ["--config", RECIPE, f"out_dir={out}", f"data.root={rooms}", "max_iters=2", "batch_size=2", "threads=1",
            "augment.crop=[32,40]", "data.num_workers=0", "checkpoint_every=0", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """Synthetic rooms, one finished run (the "existing run"), and damaged copies of its files."""
    from rgbd_seg_ros.synthetic import write_dataset

    base = tmp_path_factory.mktemp("entry_points_training")
    rooms = write_dataset(base / "rooms", n_train=4, n_test=2, size=(48, 64), seed=1)
    existing = base / "existing"
    result = run(script("training/train.py", *train_args(rooms, existing)))
    assert result.returncode == 0, result.stderr[-3000:]
    bad = base / "bad"
    bad.mkdir()
    weights = (existing / "model.safetensors").read_bytes()
    (bad / "truncated.safetensors").write_bytes(weights[: len(weights) // 3])
    (bad / "garbage.safetensors").write_bytes(b"not a checkpoint at all" * 10)
    (bad / "truncated.pt").write_bytes((existing / "checkpoints" / "last.pt").read_bytes()[:4096])
    (bad / "truncated.onnx").write_bytes(_onnx_bytes()[:-40])
    (bad / "a_file").write_text("a file, not a folder\n")
    resumable = base / "corrupt_resume"
    shutil.copytree(existing, resumable)
    last = resumable / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:4096])
    return {"base": base, "rooms": rooms, "existing": existing, "bad": bad, "corrupt_resume": resumable}


def _onnx_bytes() -> bytes:
    """A small valid ONNX model with our metadata key (truncated, it is what a cut-off download looks like)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["rgb"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("rgb", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, {"rgbd_seg_ros": '{"model": "x"}', "padding": "p" * 200})
    return model.SerializeToString()


def test_the_truncated_onnx_is_what_protobuf_rejects(work):
    """The truncated-.onnx case below is the real thing: onnx's own loader fails with protobuf's DecodeError."""
    import onnx
    from google.protobuf.message import DecodeError

    onnx.load_from_string(_onnx_bytes())  # the whole file loads
    with pytest.raises(DecodeError):
        onnx.load(str(work["bad"] / "truncated.onnx"))


# (id, arguments given the work folders, the culprit(s) the error line must name)
TRAIN_CASES = [
    ("existing-run", lambda w: train_args(w["rooms"], w["existing"]), ("--resume", "--force", "out_dir")),
    ("max-iters-zero", lambda w: train_args(w["rooms"], w["base"] / "new", "max_iters=0"), "train.max_iters"),
    ("max-iters-negative", lambda w: train_args(w["rooms"], w["base"] / "new", "max_iters=-3"), "train.max_iters"),
    ("negative-batch", lambda w: train_args(w["rooms"], w["base"] / "new", "batch_size=-2"), "train.batch_size"),
    ("zero-crop", lambda w: train_args(w["rooms"], w["base"] / "new", "augment.crop=[0,40]"), "augment.crop"),
    ("negative-lr", lambda w: train_args(w["rooms"], w["base"] / "new", "optim.lr=-0.1"), "optim.lr"),
    ("out-dir-under-a-file", lambda w: train_args(w["rooms"], w["bad"] / "a_file" / "run"), "train.out_dir"),
    ("missing-pretrained", lambda w: train_args(w["rooms"], w["base"] / "new", f"model.pretrained={w['bad']}/no.pth"),
     "model.pretrained"),
    ("truncated-init-from", lambda w: train_args(w["rooms"], w["base"] / "new",
                                                 f"model.init_from={w['bad']}/truncated.safetensors"),
     "model.init_from"),
    ("truncated-init-from-pt", lambda w: train_args(w["rooms"], w["base"] / "new",
                                                    f"model.init_from={w['bad']}/truncated.pt"), "model.init_from"),
    ("corrupt-resume-checkpoint", lambda w: [*train_args(w["rooms"], w["corrupt_resume"]), "--resume"], "last.pt"),
    ("missing-dataset", lambda w: train_args(w["base"] / "no_rooms", w["base"] / "new"), "no_rooms"),
    ("missing-recipe", lambda w: ["--config", str(w["base"] / "none.yaml"), "max_iters=2"], "none.yaml"),
    ("unknown-model", lambda w: train_args(w["rooms"], w["base"] / "new", "model.name=nonet"), "nonet"),
    ("resume-and-force", lambda w: [*train_args(w["rooms"], w["existing"]), "--resume", "--force"], "--force"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "culprit"), [c[1:] for c in TRAIN_CASES], ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_input_cleanly(work, args, culprit):
    culprits = (culprit,) if isinstance(culprit, str) else culprit
    before = snapshot(work["base"])
    result = run(script("training/train.py", *args(work)))
    line = assert_clean_failure(result, culprits[0], EXIT_USAGE)
    assert all(c in line for c in culprits), line
    assert snapshot(work["base"]) == before, f"files changed by a refused run ({line})"
    assert "train:" not in result.stderr  # no progress bar: it failed before training


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_train_refuses_a_read_only_out_dir(work, tmp_path):
    tmp_path.chmod(0o555)
    try:
        result = run(script("training/train.py", *train_args(work["rooms"], tmp_path / "run")))
    finally:
        tmp_path.chmod(0o755)
    assert_clean_failure(result, "train.out_dir")


def _evaluate_args(w: dict[str, Path], checkpoint: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--dataset", "synthetic", "--root", str(w["rooms"]), "--device", "cpu",
            "--num-workers", "0", "--out", str(w["base"] / "eval_out"), *extra]  # fmt: skip


EVALUATE_CASES = [
    ("missing-checkpoint", lambda w: _evaluate_args(w, w["bad"] / "none.safetensors"), "none.safetensors"),
    ("garbage-checkpoint", lambda w: _evaluate_args(w, w["bad"] / "garbage.safetensors"), "garbage.safetensors"),
    ("truncated-checkpoint", lambda w: _evaluate_args(w, w["bad"] / "truncated.safetensors"), "truncated.safetensors"),
    ("truncated-onnx", lambda w: _evaluate_args(w, w["bad"] / "truncated.onnx"), "truncated.onnx"),
    ("missing-dataset", lambda w: [*_evaluate_args(w, w["existing"] / "model.safetensors")[:4], "--root",
                                   str(w["base"] / "no_rooms")], "no_rooms"),
    ("out-under-a-file", lambda w: [*_evaluate_args(w, w["existing"] / "model.safetensors"), "--out",
                                    str(w["bad"] / "a_file" / "eval")], "--out"),
    ("zero-limit", lambda w: _evaluate_args(w, w["existing"] / "model.safetensors", "--limit", "0"), "--limit"),
    ("negative-scale", lambda w: _evaluate_args(w, w["existing"] / "model.safetensors", "--scales", "1,-0.5"),
     "--scales"),
    ("zero-crop", lambda w: _evaluate_args(w, w["existing"] / "model.safetensors", "--crop", "0,8"), "--crop"),
    ("bad-option", lambda w: _evaluate_args(w, w["existing"] / "model.safetensors", "--option", "depth"), "--option"),
    ("sliding-without-window", lambda w: _evaluate_args(w, w["existing"] / "model.safetensors", "--sliding"),
     "--crop"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "culprit"), [c[1:] for c in EVALUATE_CASES], ids=[c[0] for c in EVALUATE_CASES])
def test_evaluate_refuses_bad_input_cleanly(work, args, culprit):
    before = snapshot(work["base"])
    result = run(script("training/evaluate.py", *args(work)))
    line = assert_clean_failure(result, culprit, EXIT_USAGE)
    assert snapshot(work["base"]) == before, f"files changed by a refused evaluation ({line})"
    assert "frames), input size" not in result.stderr  # it failed before evaluating


def test_force_replaces_exactly_the_runs_files(work, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(work["existing"], run_dir)
    (run_dir / "notes.txt").write_text("mine\n")
    (run_dir / "eval_synthetic_test").mkdir()
    (run_dir / "eval_synthetic_test" / "metrics.json").write_text("{}")
    (run_dir / "tb" / "events.out.tfevents.0.stale").write_bytes(b"old")
    old_log = (run_dir / "log.jsonl").read_text()
    result = run(script("training/train.py", *train_args(work["rooms"], run_dir, "max_iters=1"), "--force"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "notes.txt").read_text() == "mine\n"
    assert not (run_dir / "eval_synthetic_test").exists()
    assert not (run_dir / "tb" / "events.out.tfevents.0.stale").exists()
    log = (run_dir / "log.jsonl").read_text()
    assert log != old_log and [line for line in log.splitlines() if '"loss"' in line][-1].startswith('{"iter": 1,')
    assert len(list((run_dir / "tb").iterdir())) == 1  # one TensorBoard event file, the new run's


def test_written_files_get_ordinary_permissions(work):
    """Checkpoints, weights and the recipe get a new file's permissions (0666 minus the umask), not 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (work["existing"] / "model.safetensors", work["existing"] / "checkpoints" / "last.pt",
                 work["existing"] / "config.yaml"):  # fmt: skip
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_ctrl_c_ends_an_evaluation_in_one_line_and_writes_nothing(work, tmp_path):
    from rgbd_seg_ros.synthetic import write_dataset

    rooms = write_dataset(tmp_path / "rooms", n_train=1, n_test=60, size=(48, 64), seed=2)
    out = tmp_path / "eval"
    cmd = script("training/evaluate.py", "--checkpoint", str(work["existing"] / "model.safetensors"), "--dataset",
                 "synthetic", "--root", str(rooms), "--backend", "torch", "--input-size", "480,640", "--num-workers",
                 "1", "--out", str(out))  # fmt: skip
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        # A terminal's Ctrl-C: SIGINT to the process group, the evaluation and its DataLoader worker alike.
        proc = start_as_from_a_terminal(cmd, child_env(), stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 300
        while "evaluate:" not in (tmp_path / "stderr.txt").read_text() and time.monotonic() < deadline:
            time.sleep(0.01)  # the progress bar: the frames are running (60 at 480x640: seconds at least)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=300)
    err = (tmp_path / "stderr.txt").read_text()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "evaluate.py: interrupted: stopped"
    assert not (out / "metrics.json").exists()
