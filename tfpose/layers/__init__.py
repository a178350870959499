"""Custom Keras layers (deformable/adaptive sampling, normalisation)."""

from tfpose.layers.deformable_conv import DeformableConv2D

__all__ = ["DeformableConv2D"]
