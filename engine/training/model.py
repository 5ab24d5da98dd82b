"""The deployable classifier: a backbone's feature model with the trained softmax head on top."""

from __future__ import annotations

import numpy as np


def assemble_classifier(feature_model, kernel, bias, backbone: str):
    """0..255 pixels -> preprocessing -> backbone -> softmax head, as one Keras model.

    Args:
        feature_model: `backbones.build_feature_extractor(...)`, frozen or fine-tuned; shared, not copied.
        kernel, bias: the head's (feature_dim, C) weights and (C,) biases.
        backbone: registry name, for the model's name.
    """
    import keras

    kernel, bias = np.asarray(kernel, np.float32), np.asarray(bias, np.float32)
    head = keras.layers.Dense(kernel.shape[1], activation="softmax", name="head")
    outputs = head(feature_model.output)
    head.set_weights([kernel, bias])
    return keras.Model(feature_model.input, outputs, name=f"classifier_{backbone}")
