"""Build the imgbatch model file: EfficientNet-Lite0 -> FP32 ONNX -> static INT8 ONNX with metadata.

Needs the ``export`` extra (torch, onnx); workers and producers never import this package.
"""
