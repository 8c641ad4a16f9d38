"""Brevitas networks and qonnx's executor for tests and benchmarks of the ONNX interop.

    net = brevitas_fc("tfc_1w1a")                       # brevitas_examples.bnn_pynq's TFC / SFC / LFC
    net = brevitas_cnv(channels=(8, 8, 16, 16, 32, 32))  # its CNV 1W1A with narrower layers
    net = brevitas_residual("identity")                  # a binary residual block (or "projection", "both")
    calibrate_batch_norms(net, images, seed=0)           # realistic running statistics, random gains
    train_briefly(net, images, labels, steps=40)
    export_brevitas(net, "tfc.onnx", batch=1)            # Brevitas' export_qonnx
    logits = qonnx_execute("tfc.onnx", pixels_to_input(images))
    path = qonnx_graph("g.onnx", [qonnx_node("MatMul", ["x", "w"], "y", "fc")], {"w": w}, [1, 16], [1, 4])

Needs torch, brevitas and onnxoptimizer (the `test` extra); nothing is downloaded.
"""

import contextlib
import io

import numpy as np

__all__ = ["brevitas_fc", "brevitas_cnv", "brevitas_residual", "calibrate_batch_norms", "train_briefly",
           "export_brevitas", "qonnx_execute", "qonnx_graph", "qonnx_node"]


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


def brevitas_residual(blocks="identity", channels=8, size=8, classes=10):
    """A small binary ResNet on 1 x size x size images: a 3x3 convolution of the pixels, then
    "identity": a Bi-Real block, y = BN(conv3x3(a)) + a with the same map a through the 3x3 and the
    shortcut; "projection": a downsampling basic block, a 3x3 stride-2 layer, then
    BN(conv3x3(b)) + BN(conv1x1 stride 2 (a)); "strided": BN(conv3x3 stride 2 (a)) + MaxPool(1, 2)(a), the
    identity of every other position; "bireal": Bi-Real's downsampling, BN(conv3x3 stride 2 (a)) +
    BN(conv1x1(AvgPool 2x2 (a))); "both": "identity", then "projection"; then a linear layer.
    Activations are BipolarQuant's +-1 mapped to {0, 1} ((q + 1) / 2), so that zero padding is a level;
    weights are binary (scale 1), the convolutions pad by 1 and have no bias."""
    import torch
    from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear
    from brevitas_examples.bnn_pynq.models.common import CommonActQuant, CommonWeightQuant

    def conv(cin, cout, kernel=3, stride=1):
        return QuantConv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False,
                           weight_quant=CommonWeightQuant, weight_bit_width=1)

    def act():
        return QuantIdentity(act_quant=CommonActQuant, bit_width=1)

    kinds = {"identity": ["identity"], "projection": ["projection"], "strided": ["strided"], "bireal": ["bireal"],
             "both": ["identity", "projection"]}[blocks]

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.input_shape = (1, size, size)
            c = channels
            self.stem = torch.nn.ModuleList([conv(1, c), torch.nn.BatchNorm2d(c), act()])
            self.blocks = torch.nn.ModuleList()
            out, side = c, size
            for kind in kinds:
                if kind in ("identity", "strided"):
                    stride = 2 if kind == "strided" else 1
                    self.blocks.append(torch.nn.ModuleDict({"conv": conv(out, out, stride=stride),
                                                            "bn": torch.nn.BatchNorm2d(out), "act": act()}))
                    side = (side + stride - 1) // stride
                elif kind == "projection":
                    wide = 2 * out
                    self.blocks.append(torch.nn.ModuleDict({
                        "conv1": conv(out, wide, stride=2), "bn1": torch.nn.BatchNorm2d(wide), "act1": act(),
                        "conv2": conv(wide, wide), "bn2": torch.nn.BatchNorm2d(wide),
                        "short": conv(out, wide, kernel=1, stride=2), "bns": torch.nn.BatchNorm2d(wide),
                        "act": act()}))
                    out, side = wide, (side + 1) // 2
                else:   # bireal: the shortcut averages 2x2 windows, then a 1x1 convolution
                    wide = 2 * out
                    self.blocks.append(torch.nn.ModuleDict({
                        "conv": conv(out, wide, stride=2), "bn": torch.nn.BatchNorm2d(wide),
                        "short": conv(out, wide, kernel=1), "bns": torch.nn.BatchNorm2d(wide), "act": act()}))
                    out, side = wide, side // 2
            self.fc = QuantLinear(out * side * side, classes, bias=False, weight_quant=CommonWeightQuant,
                                  weight_bit_width=1)
            self.kinds = kinds

        @staticmethod
        def levels(q):
            return (q + 1) * 0.5

        def forward(self, x):
            conv0, bn0, act0 = self.stem
            a = self.levels(act0(bn0(conv0(x))))
            for kind, block in zip(self.kinds, self.blocks):
                if kind == "identity":
                    a = self.levels(block["act"](block["bn"](block["conv"](a)) + a))
                elif kind == "strided":
                    short = torch.nn.functional.max_pool2d(a, kernel_size=1, stride=2)
                    a = self.levels(block["act"](block["bn"](block["conv"](a)) + short))
                elif kind == "bireal":
                    short = block["bns"](block["short"](torch.nn.functional.avg_pool2d(a, 2)))
                    a = self.levels(block["act"](block["bn"](block["conv"](a)) + short))
                else:
                    b = self.levels(block["act1"](block["bn1"](block["conv1"](a))))
                    a = self.levels(block["act"](block["bn2"](block["conv2"](b)) + block["bns"](block["short"](a))))
            return self.fc(torch.flatten(a, 1))

        def clip_weights(self, lo, hi):
            for module in self.modules():
                if isinstance(module, (QuantConv2d, QuantLinear)):
                    module.weight.data.clamp_(lo, hi)

    return Residual()


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
    if hasattr(net, "input_shape"):
        return net.input_shape
    return (3, 32, 32) if isinstance(net, CNV) else (1, 28, 28)


def qonnx_execute(path, x):
    """qonnx's execute_onnx on the file (after qonnx's cleanup): float32 input -> output array."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.util.cleanup import cleanup_model
    model = cleanup_model(ModelWrapper(str(path)))
    name, out = model.graph.input[0].name, model.graph.output[0].name
    return execute_onnx(model, {name: np.asarray(x, np.float32)})[out]


def qonnx_graph(path, nodes, initializers, in_shape, out_shape):
    """A hand-made QONNX file: input 'x', output 'y', float initializers (int64 for integer arrays)."""
    from onnx import TensorProto, helper, numpy_helper, save
    inits = [numpy_helper.from_array(np.asarray(v, np.float32 if np.asarray(v).dtype.kind == "f" else np.int64),
                                     name) for name, v in initializers.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("qonnx.custom_op.general", 1)])
    save(model, str(path))
    return path


def qonnx_node(op, inputs, output, name, **attrs):
    """One node; BipolarQuant, Quant and MultiThreshold in qonnx's custom-op domain."""
    from onnx import helper
    domain = "qonnx.custom_op.general" if op in ("BipolarQuant", "Quant", "MultiThreshold") else ""
    return helper.make_node(op, inputs, [output], name=name, domain=domain, **attrs)
