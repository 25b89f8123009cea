"""Offline ONNX models: the manifest every model directory carries, install and conversion."""
