"""Test-wide settings. DDS stays on loopback for every rclpy process started by the tests."""

import atexit
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
# One BLAS/OpenMP thread per test process: on 2 shared cores, 2 torch threads were up to 25x slower.
os.environ["OMP_NUM_THREADS"] = "1"

# The ONNX export cache of `backend: auto` goes to a per-process temporary folder, never the user's home.
os.environ["RGBD_SEG_CACHE"] = tempfile.mkdtemp(prefix="rgbd_seg_cache_")
atexit.register(shutil.rmtree, os.environ["RGBD_SEG_CACHE"], True)

# `training/` is imported as a top-level package from the repository root, as the README runs it.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# A test module that imports ROS 2 (rclpy, message packages, launch, the node harness) is ROS-facing: its tests get
# the `ros` mark, and .ci/run repeats `-m ros` against the Jazzy wheels.
_ROS_IMPORT = re.compile(
    r"^\s*(?:from|import)\s+(?:rclpy|sensor_msgs|std_msgs|lifecycle_msgs|diagnostic_msgs|message_filters|launch_ros"
    r"|launch_testing|ros_harness)\b|importorskip\(\s*[\"'](?:rclpy|sensor_msgs)",
    re.MULTILINE,
)


def pytest_collection_modifyitems(config, items):
    ros_facing: dict[Path, bool] = {}
    for item in items:
        path = Path(item.path)
        if path not in ros_facing:
            ros_facing[path] = bool(_ROS_IMPORT.search(path.read_text(encoding="utf-8")))
        if ros_facing[path]:
            item.add_marker(pytest.mark.ros)
