"""Exports a checkpoint of the tiny dekr (export_cases) in a fresh interpreter, as a script:

    python tests/unit/export/fresh_export.py RUN_DIR CHECKPOINT OUT MODEL_NAME FORMATS

``tfpose.export.__main__.export_model`` restores CHECKPOINT into the tiny network (built with
another seed than the checkpointed one) and writes FORMATS (comma-separated, TFLite fp32 only)
under OUT. The last stdout line is one JSON object: ``written`` (export_model's result), ``lines``
(what it printed) and ``training_modules``, the tfpose.training modules imported by then (the
whole export package imported too), which DESIGN.md section 2 wants empty.
"""

import importlib
import json
import sys


def main(argv):
    run_dir, checkpoint, out, name, formats = argv[1:]
    from export_cases import tiny_config, tiny_dekr

    from tfpose.export.__main__ import export_model
    from tfpose.registry import METHODS

    for module in ("check_gpu", "onnx", "tflite"):  # the whole package, not only what runs
        importlib.import_module(f"tfpose.export.{module}")

    cfg = tiny_config(run_dir=run_dir)
    METHODS["dekr"].build_model = lambda c: tiny_dekr(c, seed=1)
    lines = []
    written = export_model(cfg, checkpoint, out, formats.split(","), model_name=name,
                           echo=lines.append)
    training = sorted(m for m in sys.modules if m.split(".")[:2] == ["tfpose", "training"])
    print(json.dumps({"written": written, "lines": lines, "training_modules": training}))


if __name__ == "__main__":
    main(sys.argv)
