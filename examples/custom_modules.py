"""Distil your own teacher into your own student with the Python API.

Run: .venv/bin/python examples/custom_modules.py [--epochs 5]

Any `nn.Module` pair works, on any Dataset of `(inputs, label)` pairs (or a DataLoader).
Here: scikit-learn digits, a small conv teacher and a linear student, both plain PyTorch.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import distill
from distill import KD


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(16 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) -> (B, 10)
        return self.net(x)


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    args = p.parse_args()
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    train, val = TensorDataset(x[:1400], y[:1400]), TensorDataset(x[1400:], y[1400:])

    torch.manual_seed(0)
    teacher = distill.train(Teacher(), train, val_data=val, epochs=args.epochs, batch_size=32, lr=1e-2,
                            quiet=True).model
    result = distill.distill(teacher, Student(), train, val_data=val, loss=KD(temperature=4, ratio=0.9),
                             epochs=args.epochs, batch_size=32, lr=1e-2, quiet=True)
    m = result.metrics
    print(f"student accuracy {m['accuracy']:.3f}, agreement with teacher {m['agreement']:.3f}, "
          f"KL(teacher||student) {m['kl_teacher']:.3f}")


if __name__ == "__main__":
    main()
