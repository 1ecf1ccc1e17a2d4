"""Estimation: the network (ONNX), point-pair votes, the pose search, the honesty checks, served objects."""
