"""Training: configs, the training loop (torchrun too), accuracy, progress, ONNX export."""
