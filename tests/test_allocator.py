"""malloc tuning: a steady loop of frame-sized temporaries stops page-faulting."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys
import numpy as np
from rgbd_seg_ros.allocator import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tuned" else None
def frame():  # eight 1.2 MB temporaries alive at once, then all freed: the heap top shrinks past the trim threshold
    arrays = [np.ones((480, 640), np.float32) * i for i in range(8)]
    return sum(float(a[0, 0]) for a in arrays)
for _ in range(5):
    frame()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    frame()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_frame(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, check=True).stdout
    tuned, faults = out.split()
    return tuned, float(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are glibc's")
def test_tuned_allocator_keeps_frame_buffers_mapped():
    tuned, faults = _faults_per_frame("tuned")
    assert tuned == "True"
    pages_per_frame = 8 * 480 * 640 * 4 / 4096
    assert faults < 0.02 * pages_per_frame, faults
    _, default_faults = _faults_per_frame("default")
    assert default_faults > 10 * max(faults, 1), (default_faults, faults)  # the loop does fault by default
