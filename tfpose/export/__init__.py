"""Export: SavedModel, TFLite and ONNX writers and the TFLite GPU-delegate check."""
