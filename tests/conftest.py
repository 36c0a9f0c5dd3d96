"""Test-wide settings. DDS stays on loopback for every rclpy process started by the tests."""

import os
import sys
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
# One BLAS/OpenMP thread per test process: on 2 shared cores, 2 torch threads were up to 25x slower.
os.environ["OMP_NUM_THREADS"] = "1"

# `training/` is imported as a top-level package from the repository root, as the README runs it.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
