"""Test-wide settings. DDS stays on loopback for every rclpy process started by the tests."""

import os
import sys
from pathlib import Path

os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ["ROS_LOCALHOST_ONLY"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

# `training/` is imported as a top-level package from the repository root, as the README runs it.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
