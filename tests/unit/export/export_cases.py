"""Helpers shared by the export tests: the tiny dekr model every format exports, its config, and
running a .tflite.

The tiny dekr: configs/quickstart.yaml's dekr heads (heatmap head + regression head with
adaptive convolutions, quickstart widths and codec) at a SIZE px input on a two-conv stride-4
stem instead of HRNet (tracing, freezing and converting a whole HRNet takes minutes on 2 cores;
the ``large`` tests export the real Quickstart network). Seeded random weights with the final
convolutions scaled up (:func:`scale_final_convs`) so that images decode to several people.
"""

from pathlib import Path

import keras
import numpy as np

from tfpose.config import load_config
from tfpose.layers.normalize import ImageNormalization
from tfpose.models.backbones.hrnet import conv_bn
from tfpose.models.dekr import keypoint_heatmap_head, keypoint_regression_head

REPO = Path(__file__).resolve().parents[3]
QUICKSTART = REPO / "configs" / "quickstart.yaml"
SIZE = 64
# Final 1x1 convolutions start at N(0, 0.001): flat maps, nobody above the codec's thresholds.
# Scaled by these factors the maps of a random network reach about +-1 and the offsets a few map
# pixels, so every real image decodes to several people.
MAP_SCALE, OFFSET_SCALE = 60.0, 300.0


def tiny_config(*overrides, run_dir=None):
    """configs/quickstart.yaml at SIZE, with its run directory (codec assets) in `run_dir`, and
    one forward pass at test time (averaging flipped passes flattens a random network's peaks,
    and the tests want people to compare; `overrides` may turn flip test and scales back on)."""
    run = [f"train.out_dir={run_dir}"] if run_dir is not None else []
    return load_config(str(QUICKSTART), [f"data.input_size={SIZE}", "eval.flip_test=false",
                                         "eval.scales=[1.0]", *run, *overrides])


def tiny_dekr(cfg, seed: int = 0, scaled: bool = True) -> keras.Model:
    """The tiny dekr of the module docstring; `scaled`: final convolutions scaled up."""
    m, k = cfg.model, cfg.spec.num_keypoints
    keras.utils.set_random_seed(seed)
    images = keras.Input((None, None, 3))
    x = ImageNormalization(name="normalize")(images)
    x = conv_bn(x, m.width, 3, strides=2, name="stem1")
    x = conv_bn(x, m.width, 3, strides=2, name="stem2")
    heat = keypoint_heatmap_head(x, k, m.heatmap_width, m.heatmap_dilations)
    center, offsets = keypoint_regression_head(x, heat, k, m.regression_channels,
                                               m.offset_branch_channels)
    model = keras.Model(images, {"heatmaps": heat, "center": center, "offsets": offsets})
    if scaled:
        scale_final_convs(model, cfg)
    return model


def scale_final_convs(model, cfg):
    """Final convolutions of the dekr heads times MAP_SCALE / OFFSET_SCALE."""
    scales = {f"heatmap_branch{i}_final": MAP_SCALE
              for i in range(len(cfg.model.heatmap_dilations))}
    scales.update(regression_center=MAP_SCALE, regression_offsets=OFFSET_SCALE)
    for name, factor in scales.items():
        kernel, bias = model.get_layer(name).get_weights()
        model.get_layer(name).set_weights([kernel * factor, bias])


def run_tflite(content: bytes, image: np.ndarray) -> dict:
    """All outputs of a .tflite on one uint8 [S, S, 3] image: name -> (array, (scale, zero))."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
    interpreter.invoke()
    return {d["name"]: (interpreter.get_tensor(d["index"]), d["quantization"])
            for d in interpreter.get_output_details()}


def value(output) -> np.ndarray:
    """A :func:`run_tflite` output as float32, dequantised when it is quantised."""
    array, (scale, zero) = output
    return (array.astype(np.float32) - zero) * scale if scale else array


# --- posedet ------------------------------------------------------------------------------------

POSEDET_QUICKSTART = REPO / "configs" / "posedet" / "posedet_quickstart.yaml"
# The posedet head's final 1x1 convolutions start at N(0, 0.01) (classifier bias at the focal
# prior, sigmoid 0.01 < the 0.05 score threshold): nobody is decoded. Scaled by these factors a
# random network's stride-8 logits spread over about +-3 around POSEDET_LOGIT_BIAS (a few dozen
# candidates above the threshold, the flat coarser levels below it) and its poses over a few
# stride units.
POSEDET_SCALES = {"head_logits": 6000.0, "head_coarse": 1000.0, "head_refine": 300.0}
POSEDET_LOGIT_BIAS = -3.5


def tiny_posedet_config(*overrides, run_dir=None):
    """configs/posedet/posedet_quickstart.yaml (MobileNetV3 width 8) at SIZE px with 16-channel
    FPN and head, 20 decoded people, one forward pass at test time."""
    run = [f"train.out_dir={run_dir}"] if run_dir is not None else []
    return load_config(str(POSEDET_QUICKSTART), [
        f"data.input_size={SIZE}", "model.fpn_channels=16", "model.head_channels=16",
        "model.heatmap_channels=8", "codec.max_people=20", "eval.flip_test=false",
        "eval.scales=[1.0]", *run, *overrides])


def tiny_posedet(cfg, seed: int = 0, scaled: bool = True) -> keras.Model:
    """The posedet network of `cfg` with seeded random weights; `scaled`: final convolutions
    scaled (:data:`POSEDET_SCALES`), so that images decode to several people."""
    from tfpose.registry import METHODS

    keras.utils.set_random_seed(seed)
    model = METHODS["posedet"].build_model(cfg)
    for name, factor in POSEDET_SCALES.items() if scaled else ():
        kernel, bias = model.get_layer(name).get_weights()
        if name == "head_logits":
            bias = np.full_like(bias, POSEDET_LOGIT_BIAS)
        model.get_layer(name).set_weights([kernel * factor, bias])
    return model
