"""Binary network topologies built as explicit graphs the hardware can run.

A `Network` is an ordered list of nodes. Output 0 is the image (uint8 pixels, fed to the float model as
x = pixel / 127.5 - 1, so the pixel 0 used for padding is -1); node i writes output i + 1.

* `Node`: a sum of one or more branches (each a binary convolution or linear map of an earlier
  output), then batch norm, an optional monotone non-linearity (FPReLU) and the activation
  quantizer, whose bit-planes are the node's output. The last node returns logits
  (gain[o] * sum, no bias). Summed branches are explicit: a residual block's shortcut is a second branch
  of the block's last node, added before batch norm and the threshold.
* `Pool`: max pooling of every bit-plane of an earlier output (a bitwise OR in the hardware).

Models: `lfc` (FINN's LFC: 3 x 1024 fully connected), `cnv` (FINN's CNV: 64-64-P-128-128-P-256-256,
FC 512-512), `vgg_small` (128-128-P-256-256-P-512-512-P, FC), `resnet` (a stem and three residual
stages, Group-Net / FTBNN style, small for tests), `resnet18` (the seeds' ResNet-18: basic blocks
[2, 2, 2, 2] at w, 2w, 4w, 8w channels, a 3x3 stem) and `birealnet18` (the same with a shortcut around
every binary 3x3 convolution, the Bi-Real / FTBNN layout). `width` scales every model (its hidden
width / base channels).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from sw.quant import Act, FPReLU, Scheme, make_scheme

__all__ = ["Branch", "IdentityShortcut", "Node", "Pool", "Network", "MODELS", "DEFAULT_WIDTH",
           "build_model", "ModelError"]


class ModelError(ValueError):
    """A model name or shape is not supported."""


class Branch(nn.Module):
    """A binary convolution (kind "conv") or fully connected map (kind "linear") of an earlier output.

    A linear branch whose input is (C, H, W) flattens it in (c, h, w) order.
    """

    def __init__(self, kind, in_features, out_features, quantizer, kernel=1, stride=1, padding=0,
                 groups=1, source=0):
        super().__init__()
        self.kind = kind
        self.in_features = in_features
        self.out_features = out_features
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.groups = groups
        self.source = source
        self.quantizer = quantizer
        if kind == "conv":
            shape = (quantizer.copies, out_features, in_features // groups, kernel, kernel)
            fan_in = in_features // groups * kernel * kernel
        else:
            shape = (quantizer.copies, out_features, in_features)
            fan_in = in_features
        self.k = fan_in
        bound = math.sqrt(3.0 / fan_in)
        self.weight = nn.Parameter((torch.rand(shape) * 2 - 1) * bound)
        quantizer.reset(self.weight.data)

    def forward(self, act):
        weight = self.quantizer(self.weight)
        if self.kind == "conv":
            return F.conv2d(act.dense(self.padding), weight, stride=self.stride, groups=self.groups)
        x = act.dense()
        return F.linear(x.reshape(x.shape[0], -1), weight)

    def export(self):
        """(bases int8 (M, O, ...), alphas float64 (M, O))."""
        return self.quantizer.export(self.weight)


class IdentityShortcut(nn.Module):
    """y = r * x[:, :, ::stride, ::stride] (x the binarized block input, r a trained gain).

    Exported as an exact binary 1x1 convolution with two weight bases: B_0 all +1, B_1 all +1 except
    -1 on the diagonal, so dot(B_0, a) - dot(B_1, a) = 2 a[o]; alphas are (r / 2, -r / 2).
    """

    kind = "conv"
    kernel = 1
    padding = 0
    groups = 1

    def __init__(self, channels, stride=1, source=0):
        super().__init__()
        self.in_features = self.out_features = channels
        self.k = channels
        self.stride = stride
        self.source = source
        self.gain = nn.Parameter(torch.ones(()))

    def forward(self, act):
        return self.gain * act.dense()[:, :, ::self.stride, ::self.stride]

    @torch.no_grad()
    def export(self):
        import numpy as np
        c = self.out_features
        ones = np.ones((c, c, 1, 1), dtype=np.int8)
        diag = ones.copy()
        diag[np.arange(c), np.arange(c)] = -1
        r = float(self.gain)
        return np.stack([ones, diag]), np.array([[r / 2] * c, [-r / 2] * c], dtype=np.float64)


class Node(nn.Module):
    """Sum of branches -> batch norm -> [FPReLU] -> activation planes; or, if last, gain * sum.

    With `shortcut_after_norm` (a residual node: its last branch is the shortcut), batch norm applies
    to the other branches' sum and the shortcut is added after it, as Bi-Real does: y = BN(main) + sc.
    Batch norm is affine per channel, so y = g * main + sc + b is still one weighted sum of binary dot
    products, and the export folds g into the main branches' scales (docs/schemes.md)."""

    def __init__(self, branches, out_features, activation=None, fprelu=False, last=False, bias=False,
                 shortcut_after_norm=False):
        super().__init__()
        if shortcut_after_norm and (last or len(branches) < 2):
            raise ModelError("A node adds a shortcut after batch norm only when it has one and is not last")
        self.shortcut_after_norm = shortcut_after_norm
        self.branches = nn.ModuleList(branches)
        self.kind = branches[0].kind
        self.out_features = out_features
        self.last = last
        self.activation = activation
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        if last:
            self.norm = None
            self.nonlinearity = None
            self.gain = nn.Parameter(torch.ones(out_features))
        else:
            self.norm = (nn.BatchNorm2d if self.kind == "conv" else nn.BatchNorm1d)(out_features)
            self.nonlinearity = FPReLU(out_features) if fprelu else None

    def forward(self, outputs):
        total = None
        main = self.branches[:-1] if self.shortcut_after_norm else self.branches
        for branch in main:
            term = branch(outputs[branch.source])
            total = term if total is None else total + term
        if self.bias is not None:
            total = total + self.bias.reshape((1, -1) + (1,) * (total.dim() - 2))
        if self.last:
            return total * self.gain.reshape((1, -1) + (1,) * (total.dim() - 2))
        y = self.norm(total)
        if self.shortcut_after_norm:
            shortcut = self.branches[-1]
            y = y + shortcut(outputs[shortcut.source])
        if self.nonlinearity is not None:
            y = self.nonlinearity(y)
        return self.activation(y)


class Pool(nn.Module):
    kind = "maxpool"

    def __init__(self, kernel=2, stride=None, source=0):
        super().__init__()
        self.kernel = kernel
        self.stride = stride or kernel
        self.source = source

    def forward(self, outputs):
        return outputs[self.source].maxpool(self.kernel, self.stride)


class Network(nn.Module):
    """nodes: list of Node / Pool; output i + 1 is node i's, output 0 the image."""

    def __init__(self, nodes, input_shape, classes, scheme, name="custom", width=None):
        super().__init__()
        self.nodes = nn.ModuleList(nodes)
        self.input_shape = tuple(input_shape)
        self.classes = classes
        self.scheme = scheme
        self.name = name
        self.width = width

    def forward(self, images):
        x = images.to(torch.float32) / 127.5 - 1.0
        outputs = [Act(x.unsqueeze(0), torch.ones(1, device=x.device), -1.0)]
        for node in self.nodes:
            outputs.append(node(outputs))
        return outputs[-1]

    def regularization(self):
        terms = [m.regularization() for m in self.modules() if hasattr(m, "regularization") and m is not self]
        terms = [t for t in terms if t is not None]
        return sum(terms) if terms else None

    @torch.no_grad()
    def constrain(self):
        """Projections after each optimiser step: clip latent weights, keep FPReLU slopes positive."""
        for module in self.modules():
            if isinstance(module, Branch) and module.quantizer.clamp is not None:
                module.weight.clamp_(-module.quantizer.clamp, module.quantizer.clamp)
            if isinstance(module, FPReLU):
                module.constrain()


#: A residual node's shortcut adds about +-1 (gain r times the block input's +-beta planes) to the
#: batch-normalised main branch, so most of its pre-activations sit near +-1, at or past the edge of a
#: surrogate gradient window of half-width 1 (0.5 for ABC-Net): the main branch then gets almost no
#: gradient. A single-plane activation of a residual node widens its window by this much. Training
#: only: the forward pass, the export and the hardware are unchanged (docs/schemes.md "Residual networks").
SHORTCUT_WINDOW = 1.0


def _widen_for_shortcut(activation):
    if getattr(activation, "binary", False) and activation.abases == 1:
        activation.halfwidth = activation.halfwidth + SHORTCUT_WINDOW


class _Builder:
    """Appends nodes while tracking every output's shape: (C, H, W) or (K,)."""

    def __init__(self, scheme, input_shape):
        self.scheme = scheme
        self.nodes = []
        self.shapes = [tuple(input_shape)]

    @property
    def current(self):
        return len(self.shapes) - 1

    def _push(self, node, shape):
        self.nodes.append(node)
        self.shapes.append(tuple(shape))
        return self.current

    def conv(self, out, kernel=3, stride=1, padding=1, grouped=True, shortcut=None, last=False):
        c, h, w = self.shapes[-1]
        groups = self.scheme.groups if grouped and c % self.scheme.groups == 0 and out % self.scheme.groups == 0 else 1
        branch = Branch("conv", c, out, self.scheme.weight_quantizer(), kernel, stride, padding, groups,
                        self.current)
        ho = (h + 2 * padding - kernel) // stride + 1
        wo = (w + 2 * padding - kernel) // stride + 1
        if ho < 1 or wo < 1:
            raise ModelError(f"The input {self.shapes[0]} is too small for this model")
        branches = [branch] + ([shortcut] if shortcut is not None else [])
        activation = None if last else self.scheme.activation_quantizer()
        if shortcut is not None and activation is not None:
            _widen_for_shortcut(activation)
        node = Node(branches, out, activation, self.scheme.fprelu, last,
                    shortcut_after_norm=shortcut is not None and not last)
        return self._push(node, (out, ho, wo))

    def pool(self):
        c, h, w = self.shapes[-1]
        if h < 2 or w < 2:
            return self.current
        return self._push(Pool(2, 2, self.current), (c, h // 2, w // 2))

    def linear(self, out, last=False):
        k = math.prod(self.shapes[-1])
        branch = Branch("linear", k, out, self.scheme.weight_quantizer(), source=self.current)
        node = Node([branch], out, None if last else self.scheme.activation_quantizer(),
                    self.scheme.fprelu, last)
        return self._push(node, (out,))


def _lfc(b, classes, width):
    for _ in range(3):
        b.linear(width)
    b.linear(classes, last=True)


def _cnv(b, classes, width):
    # FINN's CNV uses unpadded convolutions on 32x32 inputs; smaller inputs use -1 padding.
    padding = 0 if min(b.shapes[0][1:]) >= 32 else 1
    for stage, channels in enumerate((width, 2 * width, 4 * width)):
        b.conv(channels, padding=padding, grouped=stage > 0)
        b.conv(channels, padding=padding)
        if stage < 2 or (padding and b.shapes[-1][1] > 2):
            b.pool()
    b.linear(8 * width)
    b.linear(8 * width)
    b.linear(classes, last=True)


def _vgg_small(b, classes, width):
    for stage, channels in enumerate((width, 2 * width, 4 * width)):
        b.conv(channels, grouped=stage > 0)
        b.conv(channels)
        b.pool()
    b.linear(classes, last=True)


def _resnet(b, classes, width):
    b.conv(width, grouped=False)
    for stage, channels in enumerate((width, 2 * width, 4 * width)):
        stride = 1 if stage == 0 else 2
        block_input = b.current
        c = b.shapes[-1][0]
        b.conv(channels, stride=stride)
        if stride == 1 and c == channels:
            shortcut = IdentityShortcut(channels, 1, block_input)
        else:
            # A downsampling block's shortcut is a binary 1x1 convolution with the scheme's weights.
            shortcut = Branch("conv", c, channels, b.scheme.weight_quantizer(), 1, stride, 0, 1, block_input)
        b.conv(channels, shortcut=shortcut)
    while b.shapes[-1][1] > 2:
        b.pool()
    b.linear(classes, last=True)


def _shortcut(b, channels, stride, source):
    """The shortcut of a block from output `source` to `channels` at `stride`: the identity (exported as
    an exact binary 1x1 convolution) when the shape allows it, else a binary 1x1 convolution."""
    c = b.shapes[source][0]
    if stride == 1 and c == channels:
        return IdentityShortcut(channels, 1, source)
    return Branch("conv", c, channels, b.scheme.weight_quantizer(), 1, stride, 0, 1, source)


def _resnet18(b, classes, width, bireal=False):
    """The seeds' ResNet-18: a 3x3 stem (the CIFAR variant's, for small images), four stages of two basic
    blocks at w, 2w, 4w, 8w channels (stride 2 at each stage's first block), pooling down to 2x2 and a
    fully connected head. A block's shortcut joins its second convolution; with `bireal` (Bi-Real /
    FTBNN layout) every binary 3x3 convolution has its own shortcut from its input."""
    b.conv(width, grouped=False)
    for stage, channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            block_input = b.current
            if bireal:
                b.conv(channels, stride=stride, shortcut=_shortcut(b, channels, stride, block_input))
                b.conv(channels, shortcut=_shortcut(b, channels, 1, b.current))
            else:
                b.conv(channels, stride=stride)
                b.conv(channels, shortcut=_shortcut(b, channels, stride, block_input))
    while b.shapes[-1][1] > 2:
        b.pool()
    b.linear(classes, last=True)


def _birealnet18(b, classes, width):
    _resnet18(b, classes, width, bireal=True)


MODELS = {"lfc": _lfc, "cnv": _cnv, "vgg_small": _vgg_small, "resnet": _resnet, "resnet18": _resnet18,
          "birealnet18": _birealnet18}
DEFAULT_WIDTH = {"lfc": 1024, "cnv": 64, "vgg_small": 128, "resnet": 16, "resnet18": 16, "birealnet18": 16}


def build_model(name, scheme, input_shape, classes, width=None):
    """A `Network` for images of `input_shape` (C, H, W). scheme: a `Scheme` or a scheme name."""
    if name not in MODELS:
        raise ModelError(f"Unknown model {name!r}; choose from: {', '.join(MODELS)}")
    if isinstance(scheme, str):
        scheme = make_scheme(scheme)
    if not isinstance(scheme, Scheme):
        raise ModelError(f"scheme must be a Scheme or a scheme name, not {scheme!r}")
    width = DEFAULT_WIDTH[name] if width is None else width
    if not isinstance(width, int) or width < 1:
        raise ModelError(f"Width must be a positive integer, not {width!r}")
    builder = _Builder(scheme, input_shape)
    MODELS[name](builder, classes, width)
    return Network(builder.nodes, input_shape, classes, scheme, name, width)
