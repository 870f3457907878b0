"""The worker stage: one Celery app, one onnxruntime session per process, decode -> infer -> persist."""
