"""NoProp-DT (discrete-time NoProp) on small tabular inputs, plus its backprop baseline.

Time runs from noise (t=0) to label (t=T). With a cosine schedule abar_t rising from ~0 to ~1,
    q(z_t | y) = N(sqrt(abar_t) u_y, (1 - abar_t) I),   u_y = W_embed[y].
Block t sees the input x and a sample z_{t-1} ~ q(z_{t-1}|y) and predicts u_hat_t =
softmax(f_t(x, z_{t-1})) W_embed; its loss is (T/2) eta (SNR(t) - SNR(t-1)) ||u_hat_t - u_y||^2.
z_{t-1} comes from q, never from block t-1, so no gradient crosses blocks; only W_embed and the
final head are shared, as in the paper. Inference follows the Gaussian posterior with u_hat
substituted for u_y:  z_t = a_t u_hat_t + b_t z_{t-1} + sqrt(c_t) eps  (digest section 2), and the
class is argmax head(z_T). Evaluation never builds z from labels (digest pitfall 7).

The T blocks are stored stacked, (T, in, out), and run as one batched matmul: independent blocks
trained together rather than one after another. AdamW is element-wise, so one optimiser over the
stacked tensors is the same as T per-block optimisers.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def cosine_alpha_bar(T: int, snr_max: float = 100.0) -> torch.Tensor:
    """abar_0..abar_T, rising from ~0 to ~1; clipped so SNR stays within [1/snr_max, snr_max]."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.sin(0.5 * math.pi * t) ** 2
    lo, hi = 1 / (1 + snr_max), snr_max / (1 + snr_max)
    return abar.clamp(lo, hi).float()


class StackedLinear(nn.Module):
    """T independent linear layers applied as one bmm: x (T, N, in) -> (T, N, out)."""

    def __init__(self, T: int, d_in: int, d_out: int):
        super().__init__()
        bound = 1 / math.sqrt(d_in)
        self.weight = nn.Parameter(torch.empty(T, d_in, d_out).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(T, 1, d_out).uniform_(-bound, bound))

    def forward(self, x):
        return torch.baddbmm(self.bias, x, self.weight)


class NoPropDT(nn.Module):
    def __init__(self, d_in: int, n_classes: int, T: int = 10, d_emb: int = 16, hidden: int = 128):
        super().__init__()
        self.T, self.n_classes = T, n_classes
        self.embed = nn.Parameter(torch.empty(n_classes, d_emb))
        nn.init.orthogonal_(self.embed)
        self.x1, self.x2 = StackedLinear(T, d_in, hidden), StackedLinear(T, hidden, hidden)
        self.z1 = StackedLinear(T, d_emb, hidden)
        self.f1, self.f2 = StackedLinear(T, 2 * hidden, hidden), StackedLinear(T, hidden, n_classes)
        self.head = nn.Linear(d_emb, n_classes)
        self.register_buffer("abar", cosine_alpha_bar(T))

    def block_logits(self, x, z):
        """All T blocks at once. x (N, d_in), z (T, N, d_emb) -> class logits (T, N, C)."""
        hx = F.relu(self.x2(F.relu(self.x1(x.expand(self.T, *x.shape)))))
        hz = F.relu(self.z1(z))
        return self.f2(F.relu(self.f1(torch.cat([hx, hz], dim=-1))))

    def u_hat(self, logits):
        return logits.softmax(-1) @ self.embed

    def loss(self, x, y, eta: float = 0.1):
        T, abar = self.T, self.abar
        u = self.embed[y]  # (N, d)
        # z_{t-1} for every block t = 1..T, each drawn from q(z_{t-1}|y)
        a = abar[:-1].view(T, 1, 1)
        z_prev = a.sqrt() * u + (1 - a).sqrt() * torch.randn(T, *u.shape, device=x.device)
        snr = abar / (1 - abar)
        w = (0.5 * T * eta * (snr[1:] - snr[:-1])).view(T, 1)
        mse = ((self.u_hat(self.block_logits(x, z_prev)) - u) ** 2).sum(-1)  # (T, N)
        z_T = abar[-1].sqrt() * u + (1 - abar[-1]).sqrt() * torch.randn_like(u)
        ce = F.cross_entropy(self.head(z_T), y)
        kl = 0.5 * (abar[0] * (u ** 2).sum(-1) + u.size(-1) * (1 - abar[0] - 1 - torch.log(1 - abar[0]))).mean()
        return (w * mse).mean(1).sum() + ce + kl

    @torch.no_grad()
    def predict(self, x, generator: torch.Generator | None = None):
        abar, N = self.abar, x.size(0)
        z = torch.randn(N, self.embed.size(1), generator=generator)
        for t in range(1, self.T + 1):
            ab_t, ab_p = abar[t], abar[t - 1]
            alpha = ab_p / ab_t  # alpha_{t-1}
            a = ab_t.sqrt() * (1 - alpha) / (1 - ab_p)
            b = alpha.sqrt() * (1 - ab_t) / (1 - ab_p)
            c = (1 - ab_t) * (1 - alpha) / (1 - ab_p)
            zz = torch.zeros(self.T, N, z.size(1))
            zz[t - 1] = z  # only block t runs at step t; the stacked call computes all, cheaply
            u_hat = self.u_hat(self.block_logits(x, zz)[t - 1])
            z = a * u_hat + b * z + c.sqrt() * torch.randn(z.shape, generator=generator)
        return self.head(z).argmax(-1)


def train_noprop_dt(X, y, n_classes: int, epochs: int = 100, batch: int = 128, lr: float = 1e-3,
                    seed: int = 0, **kw) -> NoPropDT:
    torch.manual_seed(seed)
    model = NoPropDT(X.size(1), n_classes, **kw)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(X.size(0)).split(batch):
            opt.zero_grad(set_to_none=True)
            model.loss(X[idx], y[idx]).backward()
            opt.step()
    return model


def train_backprop_mlp(X, y, n_classes: int, epochs: int = 100, batch: int = 128, lr: float = 1e-3,
                       hidden: int = 256, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(X.size(1), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, n_classes))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(X.size(0)).split(batch):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model
