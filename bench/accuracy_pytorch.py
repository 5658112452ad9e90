#!/usr/bin/env python3
"""One trial of the paper's protocol written the way a researcher would write it in PyTorch: a
torch.nn VGG with PyTorch's own default initialisation, torch's own random data order and noise,
plain torch.optim.SGD. Nothing is shared with bnsweep but the definitions (docs/training.md):
the same architecture, normalisation, noise law and protocol, from independent seeds. Prints one
JSON line: final test accuracy, mean training loss over the last 50 steps, and whether the loss
became non-finite. bench/accuracy.sh runs it next to bnsweep.
"""
import argparse
import json
import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG8 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def scaled(c, width):
    return max(1, math.floor(c * width + 0.5))  # halves away from zero, as docs/training.md


class Noise(nn.Module):
    """The paper's noisy BatchNorm at level v: per step mu ~ U(-v/2, v/2) and
    sigma ~ U(1, 1 + v/4) for the layer, then per element s ~ N(sigma, (v/10)^2) and
    m ~ U(mu - v/10, mu + v/10); the output is s * z + m. Training only."""

    def __init__(self, v):
        super().__init__()
        self.v = v

    def forward(self, z):
        if not self.training or self.v == 0:
            return z
        v = self.v
        mu = (torch.rand(()) - 0.5) * v
        sigma = 1 + torch.rand(()) * v / 4
        m = mu + (2 * torch.rand_like(z) - 1) * v / 10
        s = sigma + torch.randn_like(z) * v / 10
        return s * z + m


def vgg(width, bn, noise):
    layers, ch = [], 3
    for v in VGG8:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = scaled(v, width)
        layers.append(nn.Conv2d(ch, out, 3, padding=1, bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(out))
        layers += [Noise(noise), nn.ReLU()]
        ch = out
    hidden = scaled(512, width)
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def read_cifar(directory, files):
    raw = b"".join(open(os.path.join(directory, f), "rb").read() for f in files)
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 3073)
    return records[:, 1:].reshape(-1, 3, 32, 32).clone(), records[:, 0].long().clone()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cifar", required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--bn", choices=["true", "false"], required=True)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    xs, ys = read_cifar(a.cifar, [f"data_batch_{i}.bin" for i in range(1, 6)])
    xt, yt = read_cifar(a.cifar, ["test_batch.bin"])
    x = xs.float()
    mean = x.mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std = x.std(dim=(0, 2, 3), unbiased=False).view(1, 3, 1, 1)
    del x
    model = vgg(a.width, a.bn == "true", a.noise)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    per_epoch = len(ys) // a.batch
    losses, diverged, perm = [], False, None
    model.train()
    for step in range(a.steps):
        if step % per_epoch == 0:
            perm = torch.randperm(len(ys))
        idx = perm[(step % per_epoch) * a.batch:(step % per_epoch + 1) * a.batch]
        loss = F.cross_entropy(model((xs[idx].float() - mean) / std), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not torch.isfinite(loss):
            diverged = True
            break
    acc = None
    if not diverged:
        model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(yt), 1000):
                logits = model((xt[i:i + 1000].float() - mean) / std)
                correct += (logits.argmax(-1) == yt[i:i + 1000]).sum().item()
        acc = correct / len(yt)
    tail = losses[-50:]
    print(json.dumps({"lr": a.lr, "bn": a.bn == "true", "noise": a.noise, "seed": a.seed,
                      "status": "diverged" if diverged else "completed", "final_test_acc": acc,
                      "final_train_loss": sum(tail) / len(tail)}))


if __name__ == "__main__":
    main()
