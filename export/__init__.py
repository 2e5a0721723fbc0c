"""Model definitions (VAR, VQVAE), checkpoint loading, the per-scale graph contract and ONNX export."""
