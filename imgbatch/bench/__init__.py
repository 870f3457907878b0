"""`imgbatch bench`: the bare decode+inference loop against the full pipeline, in one run, on the same images.

Modules: ``images`` (a realistic benchmark set made offline from real photos), ``bare`` (the physical
limit: one process per core, no queue, no database), ``pipeline`` (submit -> private Redis -> Celery
workers -> SQLite, with per-stage timings read back from the stored rows and peak RSS per worker),
``models`` (the FP32 twin of the INT8 model for the INT8-vs-FP32 comparison), ``parity`` (the two
decoders' tensors and top-1), ``report`` (tables and ratio lines).
"""
