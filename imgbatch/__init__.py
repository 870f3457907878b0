"""imgbatch: batch offline image classification with quantized ONNX models.

``imgbatch.core`` is the shared kernel every stage imports (settings, errors, preprocessing, the
model-file contract); it imports no stage. The stages are the top-level packages ``export``,
``producer``, ``worker`` and ``db``. On top of them sit the commands: ``imgbatch.cli`` (one module per
command group), ``imgbatch.bench`` and ``imgbatch.report``. This module imports nothing.
"""

__version__ = "0.1.0"
