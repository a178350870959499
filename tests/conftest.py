"""Shared test fixtures: paths to the real mini datasets and small helpers."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data relative to the repository root (the real mini datasets)."""
    if not DATA.is_dir():
        pytest.fail(f"mini datasets not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def repo_dir() -> Path:
    return REPO


@pytest.fixture
def run_tflite():
    """Runs a .tflite flatbuffer on one input with the LiteRT interpreter; returns output 0."""
    interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")

    def run(content: bytes, x):
        interpreter = interpreter_module.Interpreter(model_content=content)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return run
