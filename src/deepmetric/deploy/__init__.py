"""Deployment: ONNX export with parity checks, and the onnxruntime path for embedding and serving."""
