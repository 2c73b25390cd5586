"""Small user-style models for method tests: dict outputs, attention maps, no zoo classes."""

from __future__ import annotations

from torch import nn


class DictNet(nn.Module):
    """A user model whose forward returns a dict, as many custom models do."""

    def __init__(self, width: int = 8, classes: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.head(f.mean((2, 3))), "features": f}


class AttnNet(nn.Module):
    """A one-layer self-attention classifier over (B, L, D) inputs that can return its attention maps."""

    def __init__(self, dim: int = 8, heads: int = 2, classes: int = 3, give_maps: bool = True):
        super().__init__()
        self.heads, self.give_maps = heads, give_maps
        self.qk = nn.Linear(dim, 2 * dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x, output_attentions: bool = False):
        b, n, d = x.shape
        q, k = self.qk(x).view(b, n, 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        maps = (q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5).softmax(-1)  # (B, H, L, L)
        mixed = (maps @ x.view(b, n, self.heads, -1).transpose(1, 2)).transpose(1, 2).reshape(b, n, d)
        out = {"logits": self.head(mixed.mean(1))}
        if output_attentions:
            out["attentions"] = (maps,) if self.give_maps else (None,)
        return out
