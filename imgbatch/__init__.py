"""imgbatch: batch offline image classification with quantized ONNX models.

This package holds what every stage shares (settings, preprocessing, the model-file
contract) and the command line; the stages live in the top-level packages
``export``, ``producer``, ``worker`` and ``db``.
"""

__version__ = "0.1.0"
