"""Brevitas networks and qonnx's executor for tests and benchmarks of the ONNX interop.

    net = brevitas_fc("tfc_1w1a")                       # brevitas_examples.bnn_pynq's TFC / SFC / LFC
    net = brevitas_cnv(channels=(8, 8, 16, 16, 32, 32))  # its CNV 1W1A with narrower layers
    calibrate_batch_norms(net, images, seed=0)           # realistic running statistics, random gains
    train_briefly(net, images, labels, steps=40)
    export_brevitas(net, "tfc.onnx", batch=1)            # Brevitas' export_qonnx
    logits = qonnx_execute("tfc.onnx", pixels_to_input(images))

Needs torch, brevitas and onnxoptimizer (the `test` extra); nothing is downloaded.
"""

import contextlib
import io

import numpy as np

__all__ = ["brevitas_fc", "brevitas_cnv", "calibrate_batch_norms", "train_briefly", "export_brevitas",
           "qonnx_execute"]


def brevitas_fc(name):
    """TFC, SFC or LFC ("tfc_1w1a", ...) from brevitas_examples.bnn_pynq, untrained."""
    from brevitas_examples.bnn_pynq.models import model_with_cfg
    net, _ = model_with_cfg(name, pretrained=False)
    return net


def brevitas_cnv(channels=(8, 8, 16, 16, 32, 32), features=32, classes=10):
    """brevitas_examples.bnn_pynq's CNV 1W1A (8-bit input, 3x3 convolutions without padding, two max
    pools, three linear layers) with `channels` in its six convolutions and `features` in its two
    hidden linear layers, for 3 x 32 x 32 images."""
    from brevitas_examples.bnn_pynq.models import CNV as module
    saved = module.CNV_OUT_CH_POOL, module.INTERMEDIATE_FC_FEATURES, module.LAST_FC_IN_FEATURES
    module.CNV_OUT_CH_POOL = [(c, pool) for c, (_, pool) in zip(channels, saved[0])]
    module.INTERMEDIATE_FC_FEATURES = [(channels[-1], features), (features, features)]
    module.LAST_FC_IN_FEATURES = features
    try:
        return module.CNV(num_classes=classes, weight_bit_width=1, act_bit_width=1, in_bit_width=8, in_ch=3)
    finally:
        module.CNV_OUT_CH_POOL, module.INTERMEDIATE_FC_FEATURES, module.LAST_FC_IN_FEATURES = saved


def _torch_input(images):
    import torch
    return torch.from_numpy(np.asarray(images, np.float32) / 255.0)


def calibrate_batch_norms(net, images, seed=0):
    """Batch-norm running statistics measured on `images` (as after training), random gains and shifts
    with some negative gains, so that every channel's threshold sits inside its sums."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))]
    with torch.no_grad():
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None     # a plain average over the calibration batches
            o = norm.num_features
            norm.weight.copy_(torch.randn(o, generator=generator))
            norm.bias.copy_(torch.randn(o, generator=generator) * 0.3)
        net.train()
        x = _torch_input(images)
        for start in range(0, len(x), 100):
            net(x[start:start + 100])
    net.eval()


def train_briefly(net, images, labels, steps=40, batch=100, seed=0, lr=0.02):
    """A few Adam steps of cross-entropy with latent weights clipped to [-1, 1] (bnn_pynq's recipe)."""
    import torch
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    x, y = _torch_input(images), torch.from_numpy(np.asarray(labels, np.int64))
    net.train()
    for _ in range(steps):
        pick = torch.randint(0, len(x), (batch,), generator=generator)
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x[pick]), y[pick])
        loss.backward()
        optimizer.step()
        net.clip_weights(-1.0, 1.0)
    net.eval()


def export_brevitas(net, path, batch=1):
    """Brevitas' export_qonnx with an input of `batch` images (its progress lines are swallowed)."""
    import torch
    from brevitas.export import export_qonnx
    net.eval()
    shape = (batch,) + tuple(_input_shape(net))
    with contextlib.redirect_stdout(io.StringIO()):
        export_qonnx(net, torch.zeros(shape), export_path=str(path))
    return path


def _input_shape(net):
    from brevitas_examples.bnn_pynq.models.CNV import CNV
    return (3, 32, 32) if isinstance(net, CNV) else (1, 28, 28)


def qonnx_execute(path, x):
    """qonnx's execute_onnx on the file (after qonnx's cleanup): float32 input -> output array."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model
    model = cleanup_model(ModelWrapper(str(path)))
    name, out = model.graph.input[0].name, model.graph.output[0].name
    return execute_onnx(model, {name: np.asarray(x, np.float32)})[out]
