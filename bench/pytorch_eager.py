#!/usr/bin/env python3
"""The PyTorch eager reference for `bnsweep-worker bench`: the same vgg8 (width multiplier,
BatchNorm after each conv, before the ReLU), the same batch, SGD with the same momentum, the
same data handling (uint8 images on the device, a permutation per epoch, per-channel
normalisation on the device, loss and accuracy read back every 25 steps). Prints one JSON line.
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

VGG8 = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
READ_EVERY = 25


def scaled(c, width):
    return max(1, round(c * width))


class Vgg(nn.Module):
    def __init__(self, width, bn):
        super().__init__()
        layers, ch = [], 3
        for v in VGG8:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = scaled(v, width)
                layers.append(nn.Conv2d(ch, out, 3, padding=1, bias=not bn))
                if bn:
                    layers.append(nn.BatchNorm2d(out))
                layers.append(nn.ReLU())
                ch = out
        hidden = scaled(512, width)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(),
                                  nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x):
        return self.head(self.features(x))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--bn", type=lambda s: s == "true", default=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=25)
    p.add_argument("--train-size", type=int, default=10000)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    dev = torch.device(a.device)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (a.train_size, 3, 32, 32), dtype=torch.uint8, device=dev)
    labels = torch.randint(0, 10, (a.train_size,), device=dev)
    mean = images.float().mean(dim=(0, 2, 3)).view(1, 3, 1, 1)
    std = images.float().std(dim=(0, 2, 3)).view(1, 3, 1, 1)
    model = Vgg(a.width, a.bn).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=a.momentum)
    per_epoch = a.train_size // a.batch
    pending, marks = [], {}
    steps = a.warmup + a.steps
    perm = None
    for step in range(1, steps + 1):
        i = step - 1
        if i % per_epoch == 0:
            perm = torch.randperm(a.train_size, device=dev)
        idx = perm[(i % per_epoch) * a.batch:(i % per_epoch + 1) * a.batch]
        x = (images.index_select(0, idx).float() - mean) / std
        y = labels.index_select(0, idx)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        acc = (logits.argmax(-1) == y).float().mean()
        pending.append(torch.stack([loss.detach(), acc.detach()]))
        if step % READ_EVERY == 0 or step == steps:
            torch.stack(pending).double().cpu()
            pending.clear()
            marks[step] = time.perf_counter()
    secs = marks[steps] - marks[max(a.warmup, READ_EVERY)]
    print(json.dumps({"impl": "pytorch-eager", "device": str(dev), "batch": a.batch, "width": a.width,
                      "bn": a.bn, "steps": a.steps, "seconds": round(secs, 3),
                      "img_per_s": round(a.steps * a.batch / secs, 1), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
