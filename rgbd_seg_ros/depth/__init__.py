"""The depth side: hole completion, HHA, point maps and the per-model input encodings."""
