"""Binarization schemes in torch: weight and activation quantizers (formulas in docs/schemes.md).

Every quantizer has one float forward (used in training, with a surrogate gradient) and one `export`
that returns exactly the quantities the forward used, in the hardware's form:

* a weight quantizer turns a latent weight into M bases of +-1 and per-(basis, output channel)
  scales alpha[m, o]: the forward weight is sum over m of alpha[m, o] * B_m[o];
* an activation quantizer turns a real pre-activation y into N bit-planes h_n = +1 where
  y >= phi_n, else -1, with one scale beta_n per plane: the next layer sees sum over n of beta_n * h_n.

Activations travel between layers as `Act` (planes and their scales), so max pooling works on the
planes (a bitwise OR in the hardware) and convolutions pad every plane with -1, like the hardware.
"""

import statistics
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "Act", "sign_ste", "WeightQuantizer", "XnorWeights", "TrainedWeights", "AbcWeights", "PaWeights",
    "GroupWeights", "FloatWeights", "ThresholdActivation", "FloatActivation", "FPReLU", "Scheme",
    "SCHEMES", "make_scheme", "SchemeError",
]

SCHEMES = ("xnor", "trained", "abc", "pa", "groupnet", "ftbnn")


class SchemeError(ValueError):
    """A scheme name or its basis counts are not supported."""


class Act:
    """An activation as bit-planes: value = sum over n of betas[n] * planes[n].

    planes: (N, B, ...) float tensor (+-1 for binary planes, real for full precision);
    betas: (N,) tensor; pad: the value each plane takes at padded positions (-1 for binary planes and
    for the image, whose pixel 0 maps to -1).
    """

    def __init__(self, planes, betas, pad=-1.0):
        self.planes = planes
        self.betas = betas
        self.pad = pad

    def dense(self, padding=0):
        planes = self.planes
        if padding:
            planes = F.pad(planes, (padding,) * 4, value=self.pad)
        weights = self.betas.reshape((-1,) + (1,) * (planes.dim() - 1))
        return (weights * planes).sum(0)

    def maxpool(self, kernel, stride):
        n, b = self.planes.shape[:2]
        pooled = F.max_pool2d(self.planes.reshape((n * b,) + self.planes.shape[2:]), kernel, stride)
        return Act(pooled.reshape((n, b) + pooled.shape[1:]), self.betas, self.pad)


class _SignSTE(torch.autograd.Function):
    """sign(x) with +1 at 0 (the hardware's comparisons are inclusive) and a surrogate gradient.

    shape "box": d/dx = 1/h on |x| <= h (the clipped straight-through estimator is h = 1);
    shape "approx": d/dx = (2 - 2|x|/h)/h on |x| <= h (Bi-Real's piecewise-polynomial ApproxSign).
    """

    @staticmethod
    def forward(ctx, x, halfwidth, shape):
        ctx.save_for_backward(x)
        ctx.halfwidth = halfwidth
        ctx.shape = shape
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        u = (x / ctx.halfwidth).abs()
        inside = (u <= 1).to(grad.dtype)
        if ctx.shape == "approx":
            slope = (2 - 2 * u) * inside / ctx.halfwidth
        else:
            slope = inside / ctx.halfwidth
        return grad * slope, None, None


def sign_ste(x, halfwidth=1.0, shape="box"):
    return _SignSTE.apply(x, halfwidth, shape)


def _flat(weight):
    return weight.reshape(weight.shape[0], -1)


def _least_squares_alphas(weight, bases):
    """Per output channel, alphas minimising ||W[o] - sum_m alpha_m B_m[o]||^2. bases (M, O, K)."""
    w = _flat(weight)
    gram = torch.einsum("mok,nok->omn", bases, bases)
    rhs = torch.einsum("mok,ok->om", bases, w)
    ridge = 1e-6 * w.shape[1] * torch.eye(bases.shape[0], dtype=w.dtype, device=w.device)
    return torch.linalg.solve(gram + ridge, rhs.unsqueeze(-1)).squeeze(-1).transpose(0, 1)


class WeightQuantizer(nn.Module):
    """Base: `forward(latent)` -> float weight (O, ...); `export(latent)` -> (bases, alphas).

    latent has shape (L, O, ...) where L is `copies` (Group-Net keeps one latent tensor per branch).
    bases: int8 (M, O, ...) of +-1; alphas: float64 (M, O).
    """

    copies = 1
    clamp = 1.0  # latent weights are clipped to +-clamp after each step (BinaryConnect); None: no clip

    def __init__(self, wbases=1):
        super().__init__()
        self.wbases = wbases

    def reset(self, latent):
        """Initialise learnable scales from the initial latent weights."""

    def bases_and_alphas(self, latent):
        raise NotImplementedError

    def forward(self, latent):
        bases, alphas = self.bases_and_alphas(latent)
        view = alphas.reshape(alphas.shape + (1,) * (bases.dim() - 2))
        return (view * bases).sum(0)

    def regularization(self):
        return None

    @torch.no_grad()
    def export(self, latent):
        bases, alphas = self.bases_and_alphas(latent)
        return (bases.detach().cpu().numpy().astype("int8"),
                alphas.detach().cpu().double().numpy())


class XnorWeights(WeightQuantizer):
    """XNOR-Net: B = sign(W), alpha[o] = mean |W[o]|; clipped straight-through gradient."""

    def bases_and_alphas(self, latent):
        w = latent[0]
        alphas = _flat(w).abs().mean(1)
        return sign_ste(w).unsqueeze(0), alphas.unsqueeze(0)


class TrainedWeights(WeightQuantizer):
    """Xu & Cheung: B = sign(W), alpha[o] a trained parameter with an L2 penalty."""

    def __init__(self, wbases=1, l2=1e-4):
        super().__init__(wbases)
        self.l2 = l2
        self.alpha = None

    def reset(self, latent):
        self.alpha = nn.Parameter(_flat(latent[0]).abs().mean(1).detach().clone())

    def bases_and_alphas(self, latent):
        return sign_ste(latent[0]).unsqueeze(0), self.alpha.unsqueeze(0)

    def regularization(self):
        return self.l2 * (self.alpha ** 2).sum()


class AbcWeights(WeightQuantizer):
    """ABC-Net: B_m = sign(W - mean(W) + u_m std(W)), u_m evenly spread over [-1, 1] (u = 0 when
    M = 1), mean and std per output channel; alphas fitted by least squares in every forward pass.
    Straight-through gradient (identity) for W."""

    clamp = None

    def __init__(self, wbases=1):
        super().__init__(wbases)
        spread = torch.linspace(-1, 1, wbases) if wbases > 1 else torch.zeros(1)
        self.register_buffer("shifts", spread)

    def bases_and_alphas(self, latent):
        w = latent[0]
        flat = _flat(w.detach())
        mean = flat.mean(1, keepdim=True)
        std = flat.std(1, keepdim=True)
        centred = flat - mean
        bases = torch.stack([torch.where(centred + u * std >= 0, 1.0, -1.0) for u in self.shifts])
        alphas = _least_squares_alphas(w.detach(), bases).detach()
        return bases.reshape((self.wbases,) + w.shape), alphas

    def forward(self, latent):
        # Straight-through: the value is sum alpha_m B_m, the gradient with respect to W is identity.
        w = latent[0]
        quantized = super().forward(latent)
        return w + (quantized - w).detach()


def _equal_mass_points(count):
    """Standard-normal quantiles that split the line into count + 1 pieces of equal mass."""
    normal = statistics.NormalDist()
    return [normal.inv_cdf((i + 1) / (count + 1)) for i in range(count)]


class PaWeights(WeightQuantizer):
    """Piecewise approximation (Zhu et al.): W is cut at thresholds t_m = mean + c_m std (c_m the
    equal-mass normal quantiles, per output channel) and approximated by sum_m alpha_m sign(W - t_m);
    each piece's coefficient alpha_m[o] is a trained parameter (initialised by least squares). The
    gradient of W is the derivative of the piecewise-linear approximation: identity inside the
    outermost pieces' range, 0 beyond mean +- 3 std."""

    clamp = None

    def __init__(self, wbases=1):
        super().__init__(wbases)
        self.register_buffer("points", torch.tensor(_equal_mass_points(wbases)))
        self.alpha = None

    def _bases(self, w):
        flat = _flat(w)
        mean = flat.mean(1, keepdim=True)
        std = flat.std(1, keepdim=True)
        bases = torch.stack([torch.where(flat - (mean + c * std) >= 0, 1.0, -1.0) for c in self.points])
        return bases, mean, std

    def reset(self, latent):
        bases, _, _ = self._bases(latent[0].detach())
        self.alpha = nn.Parameter(_least_squares_alphas(latent[0].detach(), bases).clone())

    def bases_and_alphas(self, latent):
        w = latent[0]
        bases, _, _ = self._bases(w.detach())
        return bases.reshape((self.wbases,) + w.shape), self.alpha

    def forward(self, latent):
        w = latent[0]
        flat = _flat(w)
        bases, mean, std = self._bases(w.detach())
        inside = ((flat - mean).abs() <= 3 * std).to(w.dtype).detach()
        quantized = (self.alpha.unsqueeze(-1) * bases).sum(0)
        passthrough = flat * inside
        return (quantized + passthrough - passthrough.detach()).reshape(w.shape)


class GroupWeights(WeightQuantizer):
    """Group-Net (layer-wise): K binary branches with their own latent weights W_k; branch k is
    sign(W_k) scaled by mean|W_k[o]| and by a learned combination scale lambda_k (init 1/K)."""

    def __init__(self, wbases=1):
        super().__init__(wbases)
        self.copies = wbases
        self.lam = nn.Parameter(torch.full((wbases,), 1.0 / wbases))

    def bases_and_alphas(self, latent):
        bases = sign_ste(latent)
        alphas = latent.reshape(latent.shape[0], latent.shape[1], -1).abs().mean(2) * self.lam[:, None]
        return bases, alphas


class FloatWeights(WeightQuantizer):
    """Full precision (the baseline); cannot be exported."""

    clamp = None

    def forward(self, latent):
        return latent[0]

    def bases_and_alphas(self, latent):
        raise NotImplementedError("full-precision weights have no binary bases")


class ThresholdActivation(nn.Module):
    """N bit-planes h_n = sign(y - phi_n) (+1 at equality) with scales beta_n.

    phi: thresholds (fixed or trained); betas: plane scales (fixed or trained); halfwidth and shape
    choose the surrogate gradient of each sign (see `sign_ste`). `shifts=True` stores ABC-Net's shifts
    v_n with phi_n = 0.5 - v_n, since sign(clip(y + v, 0, 1) - 0.5) = sign(y - (0.5 - v)).
    """

    binary = True

    def __init__(self, phi, betas, learn_phi=False, learn_betas=False, halfwidth=1.0, shape="box",
                 shifts=False):
        super().__init__()
        phi = torch.tensor(phi, dtype=torch.float32)
        betas = torch.tensor(betas, dtype=torch.float32)
        self.shifts = shifts
        stored = 0.5 - phi if shifts else phi
        if learn_phi:
            self.param_phi = nn.Parameter(stored)
        else:
            self.register_buffer("param_phi", stored)
        if learn_betas:
            self.betas = nn.Parameter(betas)
        else:
            self.register_buffer("betas", betas)
        self.halfwidth = halfwidth
        self.shape = shape

    @property
    def abases(self):
        return self.betas.shape[0]

    def thresholds(self):
        return 0.5 - self.param_phi if self.shifts else self.param_phi

    def forward(self, y):
        phi = self.thresholds()
        planes = torch.stack([sign_ste(y - phi[n], self.halfwidth, self.shape) for n in range(self.abases)])
        return Act(planes, self.betas, -1.0)

    @torch.no_grad()
    def export(self):
        return self.thresholds().detach().cpu().double().numpy(), self.betas.detach().cpu().double().numpy()


class FloatActivation(nn.Module):
    """Full-precision ReLU (the baseline); cannot be exported."""

    binary = False
    abases = 1

    def forward(self, y):
        return Act(F.relu(y).unsqueeze(0), torch.ones(1, device=y.device), 0.0)


class FPReLU(nn.Module):
    """FTBNN's learnable non-linearity: f(y) = a_pos[c] * y for y >= 0, a_neg[c] * y for y < 0.

    Monotone increasing while both slopes are positive, so sign(f(y) - theta) = sign(y - f^-1(theta))
    folds into a threshold; the trainer keeps slopes >= `floor` (`constrain`), the exporter refuses a
    non-positive slope.
    """

    floor = 1e-3

    def __init__(self, channels, positive=1.0, negative=0.25):
        super().__init__()
        self.a_pos = nn.Parameter(torch.full((channels,), positive))
        self.a_neg = nn.Parameter(torch.full((channels,), negative))

    def forward(self, y):
        shape = (1, -1) + (1,) * (y.dim() - 2)
        return torch.where(y >= 0, y * self.a_pos.reshape(shape), y * self.a_neg.reshape(shape))

    @torch.no_grad()
    def constrain(self):
        self.a_pos.clamp_(min=self.floor)
        self.a_neg.clamp_(min=self.floor)


def _spread(count, low, high):
    if count == 1:
        return [0.0]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


@dataclass(frozen=True)
class Scheme:
    """A binarization scheme with its basis counts; builds the quantizers of one layer."""

    name: str
    wbases: int = 1
    abases: int = 1

    @property
    def groups(self):
        """Group execution of hidden convolutions (FTBNN)."""
        return 2 if self.name == "ftbnn" else 1

    @property
    def fprelu(self):
        return self.name == "ftbnn"

    @property
    def binary(self):
        return self.name != "fp"

    def weight_quantizer(self):
        return {"xnor": XnorWeights, "trained": TrainedWeights, "abc": AbcWeights, "pa": PaWeights,
                "groupnet": GroupWeights, "ftbnn": XnorWeights, "fp": FloatWeights}[self.name](self.wbases)

    def activation_quantizer(self):
        n = self.abases
        if self.name == "fp":
            return FloatActivation()
        if self.name == "xnor":
            return ThresholdActivation([0.0], [1.0])
        if self.name == "trained":
            return ThresholdActivation([0.0], [1.0], learn_betas=True, shape="approx")
        if self.name == "abc":
            # H_v(y) = sign(clip(y + v, 0, 1) - 0.5): the surrogate gradient is that of the clip, a box
            # of width 1 around each threshold.
            return ThresholdActivation(_spread(n, -0.6, 0.6), [1.0 / n] * n, learn_phi=True,
                                       learn_betas=True, halfwidth=0.5, shape="box", shifts=True)
        if self.name == "pa":
            # Pieces of width 2/N tile [-1, 1]; each sign's gradient is the slope of its own piece.
            edges = [-1 + (2 * i + 1) / n for i in range(n)] if n > 1 else [0.0]
            return ThresholdActivation(edges, [1.0 / n] * n, learn_phi=True, learn_betas=True,
                                       halfwidth=1.0 / n, shape="box")
        if self.name == "groupnet":
            return ThresholdActivation([0.0], [1.0])
        if self.name == "ftbnn":
            return ThresholdActivation([0.0], [1.0], shape="approx")
        raise SchemeError(f"Unknown scheme {self.name!r}")


# (weight bases allowed, activation bases allowed) per scheme.
_BASES = {
    "xnor": ((1,), (1,)), "trained": ((1,), (1,)), "ftbnn": ((1,), (1,)), "groupnet": (range(1, 9), (1,)),
    "abc": (range(1, 9), range(1, 9)), "pa": (range(1, 9), range(1, 9)), "fp": ((1,), (1,)),
}


def make_scheme(name, wbases=1, abases=1):
    """Validated `Scheme`. "fp" (full precision, not exportable) is accepted for baselines."""
    if name not in _BASES:
        raise SchemeError(f"Unknown scheme {name!r}; choose from: {', '.join(SCHEMES)}")
    wallowed, aallowed = _BASES[name]
    if wbases not in wallowed:
        raise SchemeError(f"Scheme {name} supports weight bases {_describe(wallowed)}, not {wbases}")
    if abases not in aallowed:
        raise SchemeError(f"Scheme {name} supports activation bases {_describe(aallowed)}, not {abases}")
    return Scheme(name, wbases, abases)


def _describe(allowed):
    allowed = list(allowed)
    return str(allowed[0]) if len(allowed) == 1 else f"{allowed[0]} to {allowed[-1]}"

