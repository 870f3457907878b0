"""``python -m imgbatch.export OUTPUT``: build the default INT8 model file and print one summary line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgbatch.core.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgbatch.export", description=__doc__)
    parser.add_argument("output", type=Path, help="model file to write, e.g. efficientnet_lite0.int8.onnx")
    parser.add_argument("--calib-count", type=int, default=100, help="calibration photos (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration photo variants")
    args = parser.parse_args(argv)
    try:
        # Imported here so that a missing torch/onnx becomes a one-line error, not a traceback.
        from imgbatch.export.build import build_model

        report = build_model(args.output, calib_count=args.calib_count, seed=args.seed)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc.name or exc} is missing: pip install 'imgbatch[export]'", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
