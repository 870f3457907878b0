"""`imgbatch bench`: the bare decode+inference loop against the full pipeline, in one run, on the same images.

The command (``imgbatch.cli.bench``) turns its options into a ``plan.BenchPlan`` and calls ``run.run_bench``.

Modules: ``plan`` (what one bench measures: models, images, the grid of pipeline jobs), ``run`` (the
rounds, each figure the best of its rounds, and the JSON result), ``images`` (a realistic benchmark set
made offline from real photos, and the set a job covers), ``bare`` (the physical limit: one process per
core, no queue, no database), ``ray_data`` (the same job on Ray Data), ``pipeline`` (submit -> private
Redis -> Celery workers -> SQLite, with per-stage timings read back from the stored rows and peak RSS per
worker), ``models`` (the FP32 twin of the INT8 model for the INT8-vs-FP32 comparison), ``parity`` (the two
decoders' tensors and top-1), ``figures`` (ratios and targets), ``report`` (the text form: tables and
ratio lines).
"""
