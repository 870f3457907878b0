"""Workers and producers must import and run with torch and onnx absent."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BLOCKER = """
import importlib.abc, sys
BLOCKED = {"torch", "onnx", "onnxscript", "torchvision"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Blocker())
"""


def test_worker_and_producer_import_and_classify_without_torch(model_path: Path, photo_dir: Path) -> None:
    code = (
        BLOCKER
        + f"""
import imgbatch.worker.tasks, imgbatch.worker.main, imgbatch.worker.batch
import imgbatch.producer.submit, imgbatch.producer.embedded, imgbatch.producer.scan
import imgbatch.db.jobs, imgbatch.db.writes, imgbatch.cli.app
from imgbatch.worker.classify import Classifier
clf = Classifier.load({str(model_path)!r}, 1)
pred = clf.classify([{str(photo_dir / "cat.jpg")!r}])[0]
assert pred.top is not None, pred.error
loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not loaded, loaded
print("class", pred.top[0][0])
"""
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) in {281, 282, 283, 284, 285, 287}


def test_blocker_really_blocks() -> None:
    proc = subprocess.run([sys.executable, "-c", BLOCKER + "import torch"], capture_output=True, text=True)
    assert proc.returncode != 0 and "blocked" in proc.stderr
