"""The model zoo: SGNet (S-Conv), SA-Gate, AdapNet++/SSMA, ACNet, GFF behind one registry."""

from rgbd_seg_ros.models.registry import build_model, input_spec_for, list_models

__all__ = ["build_model", "input_spec_for", "list_models"]
