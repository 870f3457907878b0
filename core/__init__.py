"""The shared kernel: settings, errors, CPUs, preprocessing, the model-file contract and sample photos.

Every stage (export, producer, worker, db) and every command imports from here; nothing here imports
a stage or a command.
"""
