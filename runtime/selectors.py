"""Token selectors and decision features: small tensor functions the policies are built from.

They run in the runtime (torch, on the engine's device) on tensors the runtime owns, so every
backend feeds them the same inputs and gets the same decisions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def top_tokens(scores: Tensor, n: int) -> Tensor:
    """(b, N) scores -> (b, n) indices of the n highest, ascending (ties: the lower index first)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :n].sort(dim=1).values


def distance_to_mean(tokens: Tensor) -> Tensor:
    """FastVAR's pivotal-token score: squared distance of each token (b, N, C) to the mean token."""
    return (tokens - tokens.mean(dim=1, keepdim=True)).square().sum(-1)


Grid = tuple[int, int]


def as_grid(grid: int | Grid) -> Grid:
    """A scale's (h, w); VAR's square scales may be given by their side."""
    return (grid, grid) if isinstance(grid, int) else (int(grid[0]), int(grid[1]))


def grid_coords(grid: int | Grid, device: torch.device | None = None) -> Tensor:
    """(h*w, 2) row, column of every position, row-major."""
    h, w = as_grid(grid)
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack((rows, cols), dim=-1).reshape(-1, 2).float()


def nearest_fill(kept: Tensor, grid: int | Grid) -> Tensor:
    """For every position of an h x w map, the index (into ``kept`` (b, n)) of the nearest kept
    position (Euclidean on the grid; ties go to the earlier kept token). Kept positions map to
    themselves: this is the index map of nearest-neighbour feature propagation."""
    coords = grid_coords(grid, kept.device)
    d = torch.cdist(coords.unsqueeze(0).expand(kept.shape[0], -1, -1), coords[kept])  # (b, N, n)
    return d.argmin(dim=2)


#: StepVAR's high-pass filters on the token map (3x3, replicate padding): ``box`` = x - the 3x3 mean,
#: ``laplacian`` = the 4-neighbour Laplacian
HIGH_PASS_FILTERS = ("box", "laplacian")


def high_pass(tokens: Tensor, grid: int | Grid, kind: str = "box") -> Tensor:
    """Texture score: || high-pass(x) || over channels per token of a (b, h*w, C) map."""
    b, n, c = tokens.shape
    maps = tokens.transpose(1, 2).reshape(b, c, *as_grid(grid))
    padded = F.pad(maps, (1, 1, 1, 1), mode="replicate")
    if kind == "box":
        response = maps - F.avg_pool2d(padded, 3, stride=1)
    elif kind == "laplacian":
        up, down = padded[:, :, :-2, 1:-1], padded[:, :, 2:, 1:-1]
        left, right = padded[:, :, 1:-1, :-2], padded[:, :, 1:-1, 2:]
        response = up + down + left + right - 4 * maps
    else:
        raise ValueError(f"unknown high-pass filter {kind!r}; known: {HIGH_PASS_FILTERS}")
    return response.square().sum(1).sqrt().reshape(b, n)


def upsample_tokens(t: Tensor, grid_from: int | Grid, grid_to: int | Grid) -> Tensor:
    """(..., h*w, C) token maps of one grid -> (..., h'*w', C) of another, by area interpolation
    (FastVAR's and the cached restorations' up-sampling)."""
    lead, c = t.shape[:-2], t.shape[-1]
    maps = t.reshape(-1, *as_grid(grid_from), c).permute(0, 3, 1, 2)
    h, w = as_grid(grid_to)
    out = F.interpolate(maps, size=(h, w), mode="area")
    return out.permute(0, 2, 3, 1).reshape(*lead, h * w, c)


def principal_projection(tokens: Tensor, components: int = 1, iterations: int = 8) -> Tensor:
    """Structure score: norm of each token's projection on the leading principal components of the
    (b, N, C) token features (power iteration on the C x C covariance, deterministic start)."""
    x = tokens - tokens.mean(dim=1, keepdim=True)
    cov = x.transpose(1, 2) @ x / max(1, x.shape[1] - 1)  # (b, C, C)
    basis = torch.eye(cov.shape[-1], components, device=x.device, dtype=x.dtype).expand(x.shape[0], -1, -1)
    for _ in range(iterations):
        basis, _ = torch.linalg.qr(cov @ basis)
    return (x @ basis).norm(dim=-1)


def normalise(scores: Tensor) -> Tensor:
    """Per-row min-max scaling to [0, 1] (so that two scores can be mixed)."""
    lo, hi = scores.amin(1, keepdim=True), scores.amax(1, keepdim=True)
    return (scores - lo) / (hi - lo).clamp_min(1e-12)


# ------------------------------------------------------------------------------------ SkipVAR
SOBEL_X = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def sobel_magnitude(images: Tensor) -> Tensor:
    """Gradient magnitude of the channel-mean grey image (zero padding 1): (B, 3, H, W) -> (B, 1, H, W)."""
    gray = images.float().mean(dim=1, keepdim=True)
    kx = SOBEL_X.to(gray.device).view(1, 1, 3, 3)
    gx = F.conv2d(gray, kx, padding=1)
    gy = F.conv2d(gray, kx.transpose(2, 3), padding=1)
    return torch.sqrt(gx**2 + gy**2)


def high_frequency_difference(new: Tensor, old: Tensor) -> Tensor:
    """SkipVAR's diff_hf per image: mean |sobel(new) - sobel(old)|."""
    return (sobel_magnitude(new) - sobel_magnitude(old)).abs().flatten(1).mean(1)


def high_frequency_ratio(images: Tensor, freq_ratio: float = 0.4) -> Tensor:
    """SkipVAR's hf_ratio per image: share of the centred |FFT| of the grey image outside the
    radius int(freq_ratio * min(H, W) / 2)."""
    gray = images.float().mean(dim=1)
    amp = torch.fft.fftshift(torch.fft.fft2(gray), dim=(-2, -1)).abs()
    h, w = gray.shape[-2:]
    y = torch.arange(h, device=gray.device).view(-1, 1)
    x = torch.arange(w, device=gray.device).view(1, -1)
    dist = ((y - h // 2) ** 2 + (x - w // 2) ** 2).float().sqrt()
    mask = (dist > int(freq_ratio * min(h, w) / 2)).float()
    return (amp * mask).sum((-2, -1)) / (amp.sum((-2, -1)) + 1e-6)


def logistic_argmax(features: Tensor, model: dict) -> Tensor:
    """A fitted StandardScaler + multinomial logistic regression: (B, F) -> predicted class (B,),
    sklearn's ``predict``: classes[argmax(((x - mean) / scale) coef^T + intercept)], ties to the
    first class. In float64, as sklearn computes it: the published coefficients are float64 and a
    float32 evaluation could move a point that lies on a class boundary. ``model`` holds ``mean``,
    ``scale``, ``coef``, ``intercept``, ``classes`` (other keys, e.g. provenance, are ignored)."""
    as64 = lambda key: torch.tensor(model[key], dtype=torch.float64)  # noqa: E731
    z = (features.detach().double().cpu() - as64("mean")) / as64("scale")
    scores = z @ as64("coef").T + as64("intercept")
    return torch.tensor(model["classes"])[scores.argmax(dim=1)]


def keep_count(tokens: int, keep: float) -> int:
    """FastVAR's count: N - floor(ratio N) with ratio = 1 - keep (at least one token)."""
    return max(1, tokens - math.floor((1 - keep) * tokens + 1e-9))


# ------------------------------------------------------------------------------------ LD-Pruning
#: LD-Pruning's latent discrepancy per position: the L2 or L1 norm of the change over channels
LATENT_MEASURES = ("l2", "l1")
#: LD-Pruning's discrepancy between the branches' token distributions: total variation or Jensen-Shannon
BRANCH_MEASURES = ("tv", "js")


def latent_discrepancy(f_now: Tensor, f_before: Tensor, grid: int | Grid, norm: str = "l2") -> Tensor:
    """Per position of an h x w grid: || f_now - f_before || over channels (``norm`` l2 or l1),
    area-averaged — how much the last scale changed the accumulated latent there (no decoder)."""
    d = F.interpolate((f_now - f_before).float(), size=as_grid(grid), mode="area")
    if norm == "l2":
        return d.square().sum(1).sqrt().flatten(1)
    if norm == "l1":
        return d.abs().sum(1).flatten(1)
    raise ValueError(f"unknown latent discrepancy norm {norm!r}; known: {LATENT_MEASURES}")


def branch_discrepancy(cond_logits: Tensor, uncond_logits: Tensor, measure: str = "tv") -> Tensor:
    """Per sample: the mean over tokens of the total-variation distance (``tv``) or Jensen-Shannon
    divergence (``js``, nats) between the conditional and unconditional token distributions of a
    scale ((b, m, V) logits each)."""
    p, q = cond_logits.float().softmax(-1), uncond_logits.float().softmax(-1)
    if measure == "tv":
        return 0.5 * (p - q).abs().sum(-1).mean(-1)
    if measure == "js":
        m = 0.5 * (p + q)
        kl = lambda a: (a * (a.clamp_min(1e-30).log() - m.clamp_min(1e-30).log())).sum(-1)  # noqa: E731
        return (0.5 * kl(p) + 0.5 * kl(q)).mean(-1)
    raise ValueError(f"unknown branch discrepancy {measure!r}; known: {BRANCH_MEASURES}")


# ------------------------------------------------------------------------------------ StageVAR
def seeded_subset(b: int, n_total: int, n: int, seed: int, si: int) -> Tensor:
    """(b, n) ascending random positions: the column-sampling form of a seeded random projection,
    a function of (seed, scale) alone. Every sample of a batch gets the same subset (one projection,
    as a projection matrix would be), so that a sample's image does not depend on its batch."""
    g = torch.Generator().manual_seed(seed * 1000 + si)
    return torch.randperm(n_total, generator=g)[:n].sort().values.repeat(b, 1)
