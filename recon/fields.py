"""The neural fields of our NeuS: SDF (hash grid + small MLP), colour, learned inverse variance.

The SDF network returns the signed distance, a geometry feature for the colour network, and the
spatial gradient. With the PyTorch hash grid the gradient is computed *explicitly* (encoding Jacobian
times the MLP's Jacobian, both closed-form), so the eikonal loss needs only first-order autograd;
with a tcnn grid it falls back to ``torch.autograd.grad(create_graph=True)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from recon.encoding import HashGridConfig, make_encoding

SOFTPLUS_BETA = 100.0


@dataclass(frozen=True)
class FieldConfig:
    """Sizes of the three networks. ``bound``: the hash grid covers [-bound, bound]^3."""

    grid: HashGridConfig = HashGridConfig()
    bound: float = 0.6
    sdf_hidden: int = 64
    sdf_layers: int = 1
    feature_dim: int = 15
    color_hidden: int = 64
    color_layers: int = 2
    sphere_radius: float = 0.5
    init_variance: float = 0.4  # s = e^4 ~ 55: sharp enough for a hull-initialised SDF
    encoding_backend: str = "torch"  # recon.encoding.BACKENDS: torch (default), triton, tcnn, auto


def _softplus(z: torch.Tensor) -> torch.Tensor:
    return F.softplus(z, beta=SOFTPLUS_BETA)


class SDFNetwork(nn.Module):
    """x -> (sdf, feature, grad sdf). Input: raw xyz concatenated with the hash-grid features.

    Geometric ("sphere") initialisation (IDR/NeuS): the first layer sees only xyz at init (weights
    on the grid features are zero), the last layer's weights are ~ sqrt(pi)/sqrt(hidden) and its
    bias is -radius, so the initial SDF is close to ``|x| - radius``.
    """

    def __init__(
        self, cfg: FieldConfig, device: torch.device, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoding = make_encoding(cfg.grid, device, backend=cfg.encoding_backend, generator=generator)
        dims = [3 + self.encoding.n_output_dims] + [cfg.sdf_hidden] * cfg.sdf_layers + [1 + cfg.feature_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self._geometric_init(generator)
        self.to(device)
        # per output feature, None = no scaling (a buffer, so it follows the module across devices)
        self.register_buffer("_level_scale", None, persistent=False)

    def set_level_weights(self, weights: torch.Tensor | None) -> None:
        """Scale each hash level's features (and their Jacobian) by ``weights`` (n_levels,) in [0, 1].

        Why: a level that switches on at full strength lets its fine cells start fitting the
        views' disagreements at once; ramping it in (coarse-to-fine) keeps the coarse shape in
        charge a while longer. ``None`` (the default) multiplies nothing.
        """
        if weights is None:
            self._level_scale = None
            return
        per = self.cfg.grid.n_features_per_level
        scale = weights.to(self.layers[0].weight).repeat_interleave(per)
        if self._level_scale is not None and self._level_scale.shape == scale.shape:
            self._level_scale.copy_(scale)  # in place: a captured CUDA graph reads this very tensor
        else:
            self._level_scale = scale

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoding(self._normalise(x))
        return enc if self._level_scale is None else enc * self._level_scale

    @torch.no_grad()
    def _geometric_init(self, generator: torch.Generator | None) -> None:
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            out_dim, in_dim = layer.weight.shape
            if i == n - 1:
                mean = math.sqrt(math.pi) / math.sqrt(in_dim)
                layer.weight.copy_(mean + 1e-4 * torch.randn(out_dim, in_dim, generator=generator))
                layer.bias.fill_(-self.cfg.sphere_radius)
            else:
                std = math.sqrt(2.0) / math.sqrt(out_dim)
                layer.weight.copy_(std * torch.randn(out_dim, in_dim, generator=generator))
                layer.bias.zero_()
                if i == 0:
                    layer.weight[:, 3:] = 0.0

    @property
    def analytic_gradient(self) -> bool:
        return bool(getattr(self.encoding, "supports_jacobian", False))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        b = self.cfg.bound
        return ((x + b) / (2 * b)).clamp(0.0, 1.0)

    def _mlp(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        pre = []
        for layer in self.layers[:-1]:
            z = layer(h)
            pre.append(z)
            h = _softplus(z)
        return self.layers[-1](h), pre

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        """SDF only (mesh extraction, occupancy updates): (N,)."""
        out, _ = self._mlp(torch.cat([x, self._encode(x)], dim=-1))
        return out[:, 0]

    def forward(
        self, x: torch.Tensor, with_grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(sdf (N,), feature (N, feature_dim), grad (N, 3) or None)."""
        if not with_grad:
            out, _ = self._mlp(torch.cat([x, self._encode(x)], dim=-1))
            return out[:, 0], out[:, 1:], None
        if not self.analytic_gradient:
            return self._forward_autograd(x)
        u = self._normalise(x)
        enc, jac = self.encoding.forward_with_jacobian(u.detach())
        if u.requires_grad:
            # Positions with a gradient (rays moved by learned camera corrections): the features
            # follow u to first order through their Jacobian. Adds exact zeros to the values; the
            # normals' own dependence on u through the grid (its second derivative) is left out.
            enc = enc + (jac.detach() * (u - u.detach())[:, None, :]).sum(-1)
        if self._level_scale is not None:
            enc, jac = enc * self._level_scale, jac * self._level_scale[:, None]
        out, pre = self._mlp(torch.cat([x, enc], dim=-1))
        # Reverse-mode Jacobian of output 0 through the MLP, closed form (softplus' = sigmoid(beta z)).
        g = self.layers[-1].weight[0].expand(x.shape[0], -1)
        for layer, z in zip(reversed(self.layers[:-1]), reversed(pre), strict=True):
            g = (g * torch.sigmoid(SOFTPLUS_BETA * z)) @ layer.weight
        # inputs are [x, enc(u(x))], du/dx = 1/(2 bound)
        grad = g[:, :3] + (g[:, 3:, None] * jac).sum(1) / (2 * self.cfg.bound)
        return out[:, 0], out[:, 1:], grad

    def _forward_autograd(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            out, _ = self._mlp(torch.cat([x, self._encode(x)], dim=-1))
            sdf = out[:, 0]
            (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=torch.is_grad_enabled())
        return sdf, out[:, 1:], grad


def _monomial(*axes: int) -> int:
    """Column of the monomial ``d[a0] d[a1] ...`` in ``[1, d, d (x) d, d (x) d (x) d]`` (40 columns)."""
    offset = (0, 1, 4, 13)[len(axes)]
    return offset + sum(a * 3 ** (len(axes) - 1 - i) for i, a in enumerate(axes))


def sh_coefficients(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> torch.Tensor:
    """(40, 16): the real spherical harmonics up to degree 3 as a linear map of the monomials of
    degree <= 3 of a unit vector (tcnn's "degree 4" encoding, its constants)."""
    x, y, z = 0, 1, 2
    c = torch.zeros(40, 16, dtype=torch.float64)
    terms = {
        0: {(): 0.28209479177387814},
        1: {(y,): -0.48860251190291987},
        2: {(z,): 0.48860251190291987},
        3: {(x,): -0.48860251190291987},
        4: {(x, y): 1.0925484305920792},
        5: {(y, z): -1.0925484305920792},
        6: {(z, z): 0.94617469575755997, (): -0.31539156525251999},
        7: {(x, z): -1.0925484305920792},
        8: {(x, x): 0.54627421529603959, (y, y): -0.54627421529603959},
        9: {(x, x, y): -3.0 * 0.59004358992664352, (y, y, y): 0.59004358992664352},
        10: {(x, y, z): 2.8906114426405538},
        11: {(y,): 0.45704579946446572, (y, z, z): -5.0 * 0.45704579946446572},
        12: {(z, z, z): 5.0 * 0.3731763325901154, (z,): -3.0 * 0.3731763325901154},
        13: {(x,): 0.45704579946446572, (x, z, z): -5.0 * 0.45704579946446572},
        14: {(x, x, z): 1.4453057213202769, (y, y, z): -1.4453057213202769},
        15: {(x, x, x): -0.59004358992664352, (x, y, y): 3.0 * 0.59004358992664352},
    }
    for k, monomials in terms.items():
        for axes, value in monomials.items():
            c[_monomial(*axes), k] = value
    return c.to(dtype=dtype, device=device)


def spherical_harmonics_deg4(d: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
    """Real spherical harmonics up to degree 3 (16 coefficients, tcnn's "degree 4") of unit vectors
    (..., 3) -> (..., 16).

    Computed as the monomials of degree <= 3 (two outer products) times a constant matrix
    (:func:`sh_coefficients`, pass it to skip building it): a handful of kernels where the 16
    polynomials written out take ~35 forward and, when the directions carry a gradient (learned
    camera corrections), ~60 more backward; a GPU training step is bound by launching kernels.
    """
    c = sh_coefficients(d.dtype, d.device) if coefficients is None else coefficients
    flat = d.reshape(-1, 3)
    d2 = flat[:, :, None] * flat[:, None, :]
    d3 = d2[:, :, :, None] * flat[:, None, None, :]
    monomials = torch.cat([torch.ones_like(flat[:, :1]), flat, d2.flatten(1), d3.flatten(1)], dim=1)
    return (monomials @ c).reshape(*d.shape[:-1], 16)


class ColorNetwork(nn.Module):
    """(feature, normal, ray direction) -> RGB in [0, 1] (sigmoid). Direction is SH-encoded."""

    def __init__(
        self, cfg: FieldConfig, device: torch.device, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        dims = [cfg.feature_dim + 3 + 16] + [cfg.color_hidden] * cfg.color_layers + [3]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        with torch.no_grad():  # explicit-generator version of PyTorch's default Linear init
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.weight.shape[1])
                layer.weight.copy_((torch.rand(layer.weight.shape, generator=generator) * 2 - 1) * bound)
                layer.bias.copy_((torch.rand(layer.bias.shape, generator=generator) * 2 - 1) * bound)
        # a constant, kept on the module's device (built per call it would be a copy to the GPU)
        self.register_buffer("sh_coefficients", sh_coefficients(), persistent=False)
        self.to(device)

    def forward(self, feature: torch.Tensor, normal: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
        sh = spherical_harmonics_deg4(direction, self.sh_coefficients.to(direction.dtype))
        h = torch.cat([feature, normal, sh], dim=-1)
        for layer in self.layers[:-1]:
            h = F.relu(layer(h))
        return torch.sigmoid(self.layers[-1](h))


class InverseVariance(nn.Module):
    """NeuS' learned sharpness ``s = exp(10 * v)`` (init v = 0.3, s ~ 20), clamped to [1, 1e6]."""

    def __init__(self, init: float, device: torch.device) -> None:
        super().__init__()
        self.variance = nn.Parameter(torch.tensor(float(init), device=device))

    def forward(self) -> torch.Tensor:
        return torch.exp(self.variance * 10.0).clamp(1.0, 1e6)


class NeuSField(nn.Module):
    """The three networks together; what the trainer optimises and the exporter queries."""

    def __init__(
        self, cfg: FieldConfig, device: torch.device, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.sdf_net = SDFNetwork(cfg, device, generator)
        self.color_net = ColorNetwork(cfg, device, generator)
        self.inv_s = InverseVariance(cfg.init_variance, device)

    @torch.no_grad()
    def sdf_chunked(self, points: torch.Tensor, chunk: int = 262144) -> torch.Tensor:
        """SDF at many points without autograd (mesh extraction)."""
        out = [self.sdf_net.sdf(points[i : i + chunk]) for i in range(0, points.shape[0], chunk)]
        return torch.cat(out) if out else points.new_zeros(0)

    def surface_color(self, points: torch.Tensor, chunk: int = 131072) -> tuple[torch.Tensor, torch.Tensor]:
        """Colour and unit normal at (near-)surface points, seen head-on (ray direction = -normal)."""
        colors, normals = [], []
        for i in range(0, points.shape[0], chunk):
            x = points[i : i + chunk]
            with torch.no_grad():
                if self.sdf_net.analytic_gradient:
                    _, feat, grad = self.sdf_net(x, with_grad=True)
                else:
                    with torch.enable_grad():
                        _, feat, grad = self.sdf_net(x, with_grad=True)
                    feat, grad = feat.detach(), grad.detach()
                n = F.normalize(grad, dim=-1)
                colors.append(self.color_net(feat, n, -n).clamp(0, 1))
                normals.append(n)
        if not colors:
            return points.new_zeros(0, 3), points.new_zeros(0, 3)
        return torch.cat(colors), torch.cat(normals)
