"""The global batch and the estimators that the DDP tests compare between 1 and 2 processes."""

import torch
import torch.nn.functional as F

from erlib import bounds as B

ESTIMATORS = {
    "kde_joe": lambda z1, z2, p: B.kde_entropy(z1, 10.0, "joe"),
    "kde_plugin": lambda z1, z2, p: B.kde_entropy(z1, 10.0, "plugin"),
    "kde_loo": lambda z1, z2, p: B.kde_entropy(z1, 5.0, "joe", leave_one_out=True),
    "eta": lambda z1, z2, p: B.normalized_entropy(z2, 10.0),
    "er": lambda z1, z2, p: B.er_bound(z1, z2, 10.0),
    "infonce": lambda z1, z2, p: B.infonce_bound(z1, z2, 10.0),
    "marginal": lambda z1, z2, p: B.marginal_entropy(p),
    "conditional": lambda z1, z2, p: B.conditional_entropy(p),
}


def global_batch(k: int = 32, d: int = 16, classes: int = 12):
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(k, d, generator=g, dtype=torch.float64)
    z1 = F.normalize(x + 0.3 * torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    z2 = F.normalize(x + 0.3 * torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    p = torch.softmax(2 * torch.randn(k, classes, generator=g, dtype=torch.float64), dim=1)
    return z1, z2, p
