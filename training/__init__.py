"""Training-side code: dataset loaders, joint RGB-D augmentation and offline preparation (HHA / filled depth).

Run from the repository root (``python -m training.prepare ...``); the runtime package ``rgbd_seg_ros`` never
imports from here.
"""
