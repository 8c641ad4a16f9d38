import numpy as np
import pytest
import torch

from sw.quant import (AbcWeights, FPReLU, GroupWeights, PaWeights, SchemeError, ThresholdActivation,
                      TrainedWeights, XnorWeights, make_scheme, sign_ste)

torch.set_num_threads(1)


def latent(shape, copies=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn((copies,) + shape, generator=g) * 0.1).requires_grad_(True)


@pytest.mark.parametrize("make", [lambda: XnorWeights(), lambda: TrainedWeights(), lambda: AbcWeights(3),
                                  lambda: PaWeights(2), lambda: GroupWeights(3)])
def test_forward_equals_exported_bases(make):
    q = make()
    w = latent((5, 3, 3, 3), q.copies)
    q.reset(w.data)
    value = q(w)
    bases, alphas = q.export(w)
    assert bases.dtype == np.int8 and set(np.unique(bases)) <= {-1, 1}
    assert bases.shape == (q.wbases, 5, 3, 3, 3) and alphas.shape == (q.wbases, 5)
    rebuilt = (alphas[:, :, None, None, None] * bases).sum(0)
    assert np.allclose(value.detach().numpy(), rebuilt, atol=1e-6)
    value.sum().backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0


def test_xnor_alpha_is_mean_abs_and_gradient_clipped():
    w = torch.tensor([[[0.5, -2.0, 0.25, -0.25]]], requires_grad=True)
    q = XnorWeights()
    bases, alphas = q.export(w)
    assert bases.tolist() == [[[1, -1, 1, -1]]]
    assert alphas[0, 0] == pytest.approx(0.75)
    out = q(w)
    out.backward(torch.ones_like(out))
    # d/dW of alpha * sign(W): alpha * 1{|W| <= 1} + sign(W) * d alpha / dW.
    mean_sign = float(np.sign([0.5, -2.0, 0.25, -0.25]).sum()) / 4
    expected = [0.75 * (abs(v) <= 1) + np.sign(v) * mean_sign for v in (0.5, -2.0, 0.25, -0.25)]
    assert np.allclose(w.grad.numpy()[0, 0], expected)


def test_abc_bases_and_least_squares_alphas():
    w = latent((4, 20), seed=1)
    q = AbcWeights(3)
    bases, alphas = q.export(w)
    flat = w.detach().numpy()[0]
    mean, std = flat.mean(1, keepdims=True), flat.std(1, ddof=1, keepdims=True)
    for m, u in enumerate((-1.0, 0.0, 1.0)):
        assert np.array_equal(bases[m], np.where(flat - mean + u * std >= 0, 1, -1))
    for o in range(4):
        a = bases[:, o, :].T.astype(np.float64)
        best = np.linalg.lstsq(a, flat[o], rcond=None)[0]
        assert np.allclose(alphas[:, o], best, atol=1e-4)


def test_pa_thresholds_are_equal_mass_pieces():
    q = PaWeights(3)
    assert np.allclose(q.points.numpy(), [-0.6745, 0.0, 0.6745], atol=1e-4)
    w = latent((2, 50), seed=2)
    q.reset(w.data)
    bases, _ = q.export(w)
    # Each piece edge splits the weights: base m is +1 where W >= mean + c_m std.
    frac_plus = (bases > 0).mean(axis=(1, 2))
    assert frac_plus[0] > frac_plus[1] > frac_plus[2]
    assert sum(p.numel() for p in q.parameters()) == 3 * 2  # one trained coefficient per piece and channel


def test_trained_scales_have_l2_penalty():
    q = TrainedWeights(l2=0.5)
    w = latent((3, 4))
    q.reset(w.data)
    assert float(q.regularization().detach()) == pytest.approx(0.5 * float((q.alpha.detach() ** 2).sum()))


def test_sign_surrogate_gradients():
    x = torch.tensor([-1.5, -0.5, 0.0, 0.25, 0.9, 1.2], requires_grad=True)
    y = sign_ste(x, 1.0, "box")
    assert y.tolist() == [-1, -1, 1, 1, 1, 1]  # +1 at 0: the hardware's comparison is inclusive
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]
    x.grad = None
    sign_ste(x, 1.0, "approx").sum().backward()
    assert np.allclose(x.grad.numpy(), [0, 1, 2, 1.5, 0.2, 0])


def test_abc_activation_matches_issue_formula():
    act = make_scheme("abc", 1, 3).activation_quantizer()
    with torch.no_grad():
        act.param_phi.copy_(torch.tensor([0.1, 0.5, 1.2]))  # the shifts v_n
    y = torch.linspace(-2, 2, 81)
    planes = act(y).planes
    for n, v in enumerate((0.1, 0.5, 1.2)):
        h = torch.sign(torch.clamp(y + v, 0, 1) - 0.5)
        h[h == 0] = 1
        assert torch.equal(planes[n], h)
    phi, betas = act.export()
    assert np.allclose(phi, [0.4, 0.0, -0.7]) and betas.shape == (3,)


def test_threshold_activation_planes_and_act_value():
    act = ThresholdActivation([-0.5, 0.5], [0.25, 0.75])
    out = act(torch.tensor([[-1.0, -0.5, 0.0, 0.5, 1.0]]))
    assert out.planes[:, 0].tolist() == [[-1, 1, 1, 1, 1], [-1, -1, -1, 1, 1]]
    assert out.dense().tolist() == [[-1.0, -0.5, -0.5, 1.0, 1.0]]
    # Padding uses -1 in every plane: the padded value is -(sum of betas).
    padded = act(torch.zeros(1, 1, 2, 2)).dense(padding=1)
    assert float(padded[0, 0, 0, 0]) == -1.0 and float(padded[0, 0, 1, 1]) == 0.25 - 0.75


def test_fprelu_is_monotone_and_constrained():
    f = FPReLU(2)
    y = torch.tensor([[-2.0, 3.0], [1.0, -1.0]])
    assert f(y).detach().tolist() == [[-0.5, 3.0], [1.0, -0.25]]
    with torch.no_grad():
        f.a_neg[0] = -0.3
    f.constrain()
    assert float(f.a_neg.detach()[0]) == pytest.approx(FPReLU.floor)


def test_scheme_validation():
    assert make_scheme("abc", 3, 3).wbases == 3
    assert make_scheme("ftbnn").groups == 2 and make_scheme("ftbnn").fprelu
    with pytest.raises(SchemeError, match="Unknown scheme 'bnn'"):
        make_scheme("bnn")
    with pytest.raises(SchemeError, match="Scheme xnor supports weight bases 1, not 2"):
        make_scheme("xnor", 2, 1)
    with pytest.raises(SchemeError, match="Scheme groupnet supports activation bases 1, not 2"):
        make_scheme("groupnet", 3, 2)
    with pytest.raises(SchemeError, match="Scheme abc supports weight bases 1 to 8, not 9"):
        make_scheme("abc", 9, 1)
