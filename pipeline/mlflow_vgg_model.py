"""The MLflow model of a trained VGG net, logged from code (MLflow's "models
from code"): MLflow stores this file, the `vgg` package and the net's folder
(`vgg.weights`: JSON arguments and safetensors weights) and nothing pickled.

`mlflow.pyfunc.load_model(uri)` runs this file where the model is loaded, so
only `vgg`, torch, safetensors and MLflow may be imported here, never
`pipeline`. `.unwrap_python_model().net` is the `vgg.VGG` module itself, to
evaluate, fine-tune or convert; `predict` takes NCHW float32 images (already
normalised) of the training crop size or larger and returns class scores,
averaged over the dense score map for a larger image as in the paper's
section 3.2.

This file is code from the store: `mlflow.pyfunc.load_model` runs it, so load
models this way only from stores you trust. The project's own commands read the
safetensors and JSON files directly (`pipeline.tracking.load_logged_net`).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel

# The artifact key of the net's folder, as `pipeline.tracking` logs it.
NET_ARTIFACT = "net"


class VGGModel(PythonModel):
    def load_context(self, context) -> None:
        from vgg.weights import load_net

        self.net = load_net(context.artifacts[NET_ARTIFACT])

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        from vgg import to_fully_convolutional

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.no_grad():
            if tuple(images.shape[-2:]) == (self.net.crop_size,) * 2:
                return self.net(images).numpy()
            score_map = to_fully_convolutional(self.net)(images)
            return score_map.mean(dim=(2, 3)).numpy()


mlflow.models.set_model(VGGModel())
