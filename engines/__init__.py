"""Backends behind one ``Engine`` protocol: eager torch, ONNX Runtime, TensorRT, torch CUDA graphs."""
