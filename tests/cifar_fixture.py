#!/usr/bin/env python3
"""Writes a stand-in for CIFAR-10 in its official binary layout, for tests on machines that lack
the real data: `data_batch_1.bin` ... `data_batch_5.bin` and `test_batch.bin`, each 10,000
records of one label byte (0-9) and 3,072 pixel bytes (1024 red, 1024 green, 1024 blue, row by
row). Each class is a smooth colour pattern; each image is its class's pattern with its low five
bits scrambled, so a small net learns it within a few dozen steps. Deterministic (seed 0).
Standard library only.

    cifar_fixture.py DIR      # writes DIR/cifar-10-batches-bin/, prints its path
"""
import math
import os
import random
import sys

RECORDS = 10_000
PIXELS = 3 * 32 * 32
FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def class_patterns(rng):
    patterns = []
    for _ in range(10):
        pixels = bytearray(PIXELS)
        for c in range(3):
            fx, fy, phase = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0, 6.3)
            for y in range(32):
                for x in range(32):
                    v = 128 + 100 * math.sin(fx * x + fy * y + phase)
                    pixels[c * 1024 + y * 32 + x] = int(v)
        patterns.append(int.from_bytes(pixels, "little"))
    return patterns


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = os.path.join(sys.argv[1], "cifar-10-batches-bin")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(0)
    patterns = class_patterns(rng)
    low_bits = int.from_bytes(bytes([0x1F]) * PIXELS, "little")
    for name in FILES:
        records = bytearray()
        for i in range(RECORDS):
            label = rng.randrange(10)
            noise = int.from_bytes(rng.randbytes(PIXELS), "little") & low_bits
            records.append(label)
            records += (patterns[label] ^ noise).to_bytes(PIXELS, "little")
        tmp = os.path.join(out, name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(records)
        os.replace(tmp, os.path.join(out, name))
    print(out)


if __name__ == "__main__":
    main()
