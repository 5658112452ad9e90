"""Independent PyTorch reference of one bnsweep trial.

Written from docs/training.md, docs/measurements.md and docs/sweep-file.md ("Models") only,
never from the worker's Rust sources: that is what makes it a cross-check.

    run_trace(trace_dir, cifar_dir) -> list of row dicts, shaped like the trace's rows.jsonl

reads DIR/trial.json, DIR/init.safetensors and DIR/order.safetensors, rebuilds the network
with torch.nn.functional, trains it over the given batch order with torch.optim.SGD / Adam,
applies the noise with the documented draws, and at every measured step computes ICS,
loss landscape, activation statistics and histograms, and distances from the initial
weights. `perturb` deliberately breaks one definition (crosscheck.py --self-test uses it to
prove that the comparison catches such mistakes); `dtype=torch.float64` runs the same trial
in double precision (used to calibrate the tolerances).
"""

import json
import math
import os
import sys
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

MASK64 = (1 << 64) - 1
QUANTILES = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99]
BN_EPS = 1e-5

# Every deliberate mistake run_trace knows (crosscheck.py --self-test).
PERTURBATIONS = {
    "noise_off": "noise not applied",
    "noise_draw_order": "randn drawn before rand",
    "noise_options_ignored": "noise drawn per element and layer, whatever the options",
    "relu_before_bn": "block order conv, ReLU, BN",
    "no_conv_bias": "convs without bias when BatchNorm is off",
    "bn_momentum": "BatchNorm running statistics with momentum 0.2",
    "global_norm": "input normalised with one mean/std for all channels",
    "adamw": "Adam with decoupled weight decay (AdamW)",
    "ics_include_self": "ICS with layer i's own update included",
    "grad_norm_all": "grad_norm over all of a layer's parameters",
    "landscape_after_update": "landscape taken from W(t+1)",
    "post_after_pool": "post activation taken after the max-pool",
    "quantiles_unsampled": "quantiles over every element",
    "weight_dist_prev": "weight_dist from W(t) instead of W(0)",
}


# ----------------------------------------------------------------------------- noise keys
def splitmix64(z):
    """SplitMix64's finaliser, all arithmetic mod 2^64 (docs/training.md, "The noise")."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def draw_key(seed, stream, t):
    """key = h(h(h(seed) xor stream) xor t)."""
    return splitmix64(splitmix64(splitmix64(seed & MASK64) ^ stream) ^ t)


def noise_key(seed, k, t):
    """The key of the k-th noisy layer at (1-based) step t: stream 1000 + k."""
    return draw_key(seed, 1000 + k, t)


def sample_positions(n, sample, key):
    """measurements.md: every position when n <= sample; otherwise h(key xor j) mod n for
    j = 0 .. sample - 1 (with replacement), key = draw_key(seed, 2000 + layer, step)."""
    if n <= max(1, sample):
        return None
    return [splitmix64(key ^ j) % n for j in range(max(1, sample))]


def draw_noise(seed, k, t, shape, v, swap_order=False, options=None):
    """(s, m) of the k-th noisy layer at step t: the output is s * z + m. options
    (training.md): draws "element" or "channel", moments "layer" or "channel", spread "std"
    or "variance"; channels are dimension 1."""
    o = {"draws": "element", "moments": "layer", "spread": "std", **(options or {})}
    c = shape[1]
    bshape = [1] * len(shape)
    bshape[1] = c
    torch.manual_seed(noise_key(seed, k, t) >> 1)
    u = torch.rand(2, c) if o["moments"] == "channel" else torch.rand(2)
    dshape = (c,) if o["draws"] == "channel" else shape
    if swap_order:
        n = torch.randn(dshape)
        r = torch.rand(dshape)
    else:
        r = torch.rand(dshape)
        n = torch.randn(dshape)
    mu = (u[0] - 0.5) * v
    sigma = 1 + u[1] * v / 4
    if o["moments"] == "channel":
        mu, sigma = mu.reshape(bshape), sigma.reshape(bshape)
    if o["draws"] == "channel":
        r, n = r.reshape(bshape), n.reshape(bshape)
    spread = math.sqrt(v / 10) if o["spread"] == "variance" else v / 10
    m = mu + (2 * r - 1) * v / 10
    s = sigma + n * spread
    return s, m


# ----------------------------------------------------------------------------- data
def load_cifar(cifar_dir, train_size, test_size):
    """First train_size images of data_batch_1..5 and first test_size of test_batch."""

    def read(files, n):
        xs, ys, left = [], [], n
        for f in files:
            if left <= 0:
                break
            raw = np.fromfile(os.path.join(cifar_dir, f), dtype=np.uint8)
            rec = raw.reshape(-1, 3073)[:left]
            ys.append(rec[:, 0].astype(np.int64))
            xs.append(rec[:, 1:].reshape(-1, 3, 32, 32))
            left -= rec.shape[0]
        if left > 0:
            raise ValueError(f"{cifar_dir}: fewer than {n} images in {files}")
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read([f"data_batch_{i}.bin" for i in range(1, 6)], train_size)
    xte, yte = (read(["test_batch.bin"], test_size) if test_size > 0
                else (np.zeros((0, 3, 32, 32), np.uint8), np.zeros(0, np.int64)))
    return xtr, ytr, xte, yte


def normalise(xtr, xte, dtype, global_norm=False):
    """Per channel: population mean and std of the raw 0..255 values over the training
    images used; (p - m) / s, computed in float64 and rounded to `dtype` once."""
    a = xtr.astype(np.float64)
    if global_norm:
        m = np.full(3, a.mean())
        s = np.full(3, a.std())
    else:
        m = a.mean(axis=(0, 2, 3))
        s = a.std(axis=(0, 2, 3))  # ddof=0: population standard deviation

    def f(x):
        y = (x.astype(np.float64) - m[None, :, None, None]) / s[None, :, None, None]
        return torch.from_numpy(y).to(dtype)

    return f(xtr), f(xte)


# ----------------------------------------------------------------------------- models
VGG_LAYOUTS = {
    "vgg8": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}
VGG_LAYOUTS["vgg11"] = VGG_LAYOUTS["vgg8"]
VGG_LAYOUTS["vgg10"] = VGG_LAYOUTS["vgg13"]


def scaled(c, width):
    # training.md: max(1, round(c x w)), halves away from zero (Python's round would take
    # them to even)
    return max(1, math.floor(c * width + 0.5))


def build_spec(trial):
    """Layers with weights in forward order: dicts with name, kind, in/out, bias, bn, noisy,
    relu, pool (a 2x2 max-pool after the block), flatten (flatten the input first)."""
    bn = bool(trial["bn"])
    noisy = float(trial["noise"]) > 0
    width = float(trial["width"])
    name = trial["model"]
    layers = []
    if name in VGG_LAYOUTS:
        cin, nconv = 3, 0
        for item in VGG_LAYOUTS[name]:
            if item == "M":
                layers[-1]["pool"] = True
                continue
            cout = scaled(item, width)
            layers.append(dict(name=f"conv{nconv}", kind="conv", cin=cin, cout=cout,
                               bias=not bn, bn=bn, noisy=noisy, relu=True, pool=False,
                               flatten=False))
            cin, nconv = cout, nconv + 1
        # 32x32 halved by each pool; VGG head: flatten, linear, ReLU, linear, ReLU, linear.
        side = 32 >> sum(1 for i in VGG_LAYOUTS[name] if i == "M")
        fin = cin * side * side
        hid = scaled(512, width)
        for j, (fo, relu) in enumerate([(hid, True), (hid, True), (10, False)]):
            # training.md: the head's hidden layers are noisy only with noise_head
            layers.append(dict(name=f"fc{j}", kind="fc", cin=fin, cout=fo, bias=True,
                               bn=False, noisy=noisy and relu and bool(trial.get("noise_head")),
                               relu=relu, pool=False, flatten=(j == 0)))
            fin = fo
    elif name == "mlp":
        fin = 3 * 32 * 32
        hidden = [scaled(h, width) for h in trial["hidden"]]
        for j, h in enumerate(hidden):
            layers.append(dict(name=f"fc{j}", kind="fc", cin=fin, cout=h, bias=not bn, bn=bn,
                               noisy=noisy, relu=True, pool=False, flatten=(j == 0)))
            fin = h
        layers.append(dict(name=f"fc{len(hidden)}", kind="fc", cin=fin, cout=10, bias=True,
                           bn=False, noisy=False, relu=False, pool=False,
                           flatten=(not hidden)))
    else:
        raise ValueError(f"unknown model {name!r}")
    k = 0
    for L in layers:
        L["params"] = [f"{L['name']}.weight"] + ([f"{L['name']}.bias"] if L["bias"] else [])
        if L["bn"]:
            L["params"] += [f"bn_{L['name']}.weight", f"bn_{L['name']}.bias"]
        L["noise_k"] = k if L["noisy"] else None
        k += int(L["noisy"])
    return layers


def expected_shapes(spec):
    """Every variable the docs say the model has, with its PyTorch shape."""
    out = {}
    for L in spec:
        n = L["name"]
        out[f"{n}.weight"] = ((L["cout"], L["cin"], 3, 3) if L["kind"] == "conv"
                              else (L["cout"], L["cin"]))
        if L["bias"]:
            out[f"{n}.bias"] = (L["cout"],)
        if L["bn"]:
            for s in ("weight", "bias", "running_mean", "running_var"):
                out[f"bn_{n}.{s}"] = (L["cout"],)
    return out


class Noise:
    """The noise of one step: drawn once per noisy layer (lazily, when its shape is known)
    and reused by every pass of that step."""

    def __init__(self, seed, t, v, dtype, swap_order=False, off=False, options=None):
        self.seed, self.t, self.v, self.dtype = seed, t, v, dtype
        self.swap, self.off, self.cache = swap_order, off, {}
        self.options = options

    def apply(self, k, z):
        if self.off:
            return z
        if k not in self.cache:
            s, m = draw_noise(self.seed, k, self.t, tuple(z.shape), self.v, self.swap,
                              self.options)
            self.cache[k] = (s.to(self.dtype), m.to(self.dtype))
        s, m = self.cache[k]
        return s * z + m


# Calibration only (crosscheck.py --calibrate): the same definitions composed from other ops,
# to see how far two correct float32 programs drift apart.
ALT_OPS = False


def manual_batch_norm(z, rm, rv, gamma, beta, momentum):
    dims = [0, 2, 3] if z.dim() == 4 else [0]
    shape = [1, -1] + [1] * (z.dim() - 2)
    mean = z.mean(dims)
    var = (z - mean.reshape(shape)).pow(2).mean(dims)
    if rm is not None:
        n = z.numel() // z.shape[1]
        with torch.no_grad():
            rm.mul_(1 - momentum).add_(momentum * mean)
            rv.mul_(1 - momentum).add_(momentum * var * n / (n - 1))
    return ((z - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + BN_EPS)
            * gamma.reshape(shape) + beta.reshape(shape))


class FormulaOptimizer:
    """docs/training.md's update rules written out term by term (calibration only)."""

    def __init__(self, params, lr, o):
        self.params, self.lr, self.o, self.t = params, lr, o, 0
        self.state = [None] * len(params)

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self):
        o, lr = self.o, self.lr
        self.t += 1
        wd = float(o.get("weight_decay", 0))
        for j, w in enumerate(self.params):
            g = w.grad + wd * w
            if o["name"] == "sgd":
                mu = float(o.get("momentum", 0))
                if mu > 0:
                    buf = g.clone() if self.state[j] is None else mu * self.state[j] + g
                    self.state[j] = buf
                    g = g + mu * buf if o.get("nesterov") else buf
                w -= lr * g
            else:
                b1, b2 = float(o.get("beta1", 0.9)), float(o.get("beta2", 0.999))
                m, v = self.state[j] or (torch.zeros_like(w), torch.zeros_like(w))
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                self.state[j] = (m, v)
                w -= lr * (m / (1 - b1 ** self.t)) / (
                    torch.sqrt(v / (1 - b2 ** self.t)) + float(o.get("eps", 1e-8)))


def cross_entropy(logits, y):
    if ALT_OPS:
        return -logits.log_softmax(1).gather(1, y[:, None]).mean()
    return F.cross_entropy(logits, y)


def forward(spec, P, x, noise, buffers=None, momentum=0.1, record=None, perturb=()):
    """Training-mode forward pass. P: name -> tensor. buffers: running statistics updated in
    place (None: a measurement pass, which leaves them alone). record: dict filled with each
    layer's pre and post activations (detached)."""
    h = x
    for i, L in enumerate(spec):
        n = L["name"]
        if L["flatten"]:
            h = h.flatten(1)
        bias = P[f"{n}.bias"] if L["bias"] else None
        if L["kind"] == "conv":
            z = F.conv2d(h, P[f"{n}.weight"], bias, padding=1)
        else:
            z = F.linear(h, P[f"{n}.weight"], bias)
        if record is not None:
            record[i] = {"pre": z.detach()}
        relu_first = "relu_before_bn" in perturb and L["bn"]
        if relu_first:
            z = F.relu(z)
        if L["bn"]:
            rm = buffers[f"bn_{n}.running_mean"] if buffers is not None else None
            rv = buffers[f"bn_{n}.running_var"] if buffers is not None else None
            if ALT_OPS:
                z = manual_batch_norm(z, rm, rv, P[f"bn_{n}.weight"], P[f"bn_{n}.bias"],
                                      momentum)
            else:
                z = F.batch_norm(z, rm, rv, P[f"bn_{n}.weight"], P[f"bn_{n}.bias"],
                                 training=True, momentum=momentum, eps=BN_EPS)
        if L["noisy"]:
            z = noise.apply(L["noise_k"], z)
        if L["relu"] and not relu_first:
            z = F.relu(z)
        if L["pool"]:
            pooled = F.max_pool2d(z, 2)
        if record is not None:
            record[i]["post"] = (pooled if L["pool"] and "post_after_pool" in perturb
                                 else z).detach()
        h = pooled if L["pool"] else z
    return h


def eval_forward(spec, P, buffers, x, perturb=()):
    """Evaluation mode: running statistics, no noise."""
    h = x
    for L in spec:
        n = L["name"]
        if L["flatten"]:
            h = h.flatten(1)
        bias = P[f"{n}.bias"] if L["bias"] else None
        z = (F.conv2d(h, P[f"{n}.weight"], bias, padding=1) if L["kind"] == "conv"
             else F.linear(h, P[f"{n}.weight"], bias))
        relu_first = "relu_before_bn" in perturb and L["bn"]
        if relu_first:
            z = F.relu(z)
        if L["bn"]:
            z = F.batch_norm(z, buffers[f"bn_{n}.running_mean"], buffers[f"bn_{n}.running_var"],
                             P[f"bn_{n}.weight"], P[f"bn_{n}.bias"], training=False,
                             eps=BN_EPS)
        if L["relu"] and not relu_first:
            z = F.relu(z)
        if L["pool"]:
            z = F.max_pool2d(z, 2)
        h = z
    return h


# ----------------------------------------------------------------------------- measurements
def norm(ts):
    """l2 norm over a list of tensors taken together (accumulated in float64)."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in ts))


def act_stats(x, sample, key, perturb=()):
    """mean, unbiased std over all elements; 7 quantiles (linear interpolation) of the
    elements at sample_positions(n, sample, key)."""
    flat = x.reshape(-1)
    n = flat.numel()
    positions = sample_positions(n, sample, key)
    if "quantiles_unsampled" in perturb or positions is None:
        xs = flat
    else:
        xs = flat[torch.tensor(positions, dtype=torch.long, device=flat.device)]
    q = torch.quantile(xs, torch.tensor(QUANTILES, dtype=xs.dtype), interpolation="linear")
    return {"mean": float(flat.mean()), "std": float(flat.std()),
            "quantiles": [float(v) for v in q]}


def histogram(x, bins, lo, hi):
    """bins equal bins on [lo, hi] (the last includes hi), underflow -1 (< lo), overflow
    `bins` (> hi, and NaN). Returns [(bin, lo, hi, count)] for bins -1 .. bins."""
    a = x.reshape(-1).double()
    nan = torch.isnan(a)
    under = (a < lo).sum().item()
    over = ((a > hi) | nan).sum().item()
    inside = a[(a >= lo) & (a <= hi)]
    idx = torch.floor((inside - lo) / (hi - lo) * bins).long().clamp_(0, bins - 1)
    counts = torch.bincount(idx, minlength=bins).tolist()
    w = (hi - lo) / bins
    out = [(-1, -math.inf, lo, under)]  # the outer bins' edges, as measurements.md gives them
    out += [(b, lo + b * w, lo + (b + 1) * w, counts[b]) for b in range(bins)]
    out.append((bins, hi, math.inf, over))
    return out


# ----------------------------------------------------------------------------- the trial
def load_trace(trace_dir):
    with open(os.path.join(trace_dir, "trial.json")) as f:
        trial = json.load(f)
    init = load_file(os.path.join(trace_dir, "init.safetensors"))
    order = load_file(os.path.join(trace_dir, "order.safetensors"))["order"]
    return trial, init, order


def run_trace(trace_dir, cifar_dir=None, perturb=(), dtype=torch.float32, eval_steps=None,
              alt_ops=False, onednn=True, threads=None):
    """Train the trace's trial; return its rows (train, layer, landscape, activation, and
    eval rows at `eval_steps`, default: the steps the trace's rows.jsonl evaluates at).
    dtype=torch.float64, alt_ops=True (BatchNorm and cross-entropy written out by hand),
    onednn=False (other convolution kernels) or another thread count give other correct
    roundings of the same trial: the cross-check measures how far those drift apart to know
    how well-conditioned a trace is."""
    global ALT_OPS
    ALT_OPS = alt_ops
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # oneDNN's TF32 notice when the flag is toggled
            with torch.backends.mkldnn.flags(enabled=onednn):
                return _run_trace(trace_dir, cifar_dir, perturb, dtype, eval_steps, threads)
    finally:
        ALT_OPS = False


def _run_trace(trace_dir, cifar_dir, perturb, dtype, eval_steps, threads):
    perturb = set(perturb)
    unknown = perturb - set(PERTURBATIONS)
    if unknown:
        raise ValueError(f"unknown perturbations {sorted(unknown)}")
    trial, init, order = load_trace(trace_dir)
    torch.set_num_threads(int(threads or trial.get("threads", 1)))
    cifar_dir = cifar_dir or trial["data"]["dir"]
    if eval_steps is None:
        eval_steps = set()
        rows_path = os.path.join(trace_dir, "rows.jsonl")
        if os.path.exists(rows_path):
            with open(rows_path) as f:
                for line in f:
                    if line.strip():
                        r = json.loads(line)
                        if r.get("kind") == "eval":
                            eval_steps.add(int(r["step"]))
    eval_steps = set(eval_steps)

    spec = build_spec(trial)
    want = expected_shapes(spec)
    got = {k: tuple(v.shape) for k, v in init.items()}
    if want != got:
        raise ValueError(f"init.safetensors does not match the documented model: "
                         f"missing {sorted(set(want) - set(got))}, "
                         f"extra {sorted(set(got) - set(want))}, shapes differ "
                         f"{sorted(k for k in want if k in got and want[k] != got[k])}")

    if "no_conv_bias" in perturb:
        for L in spec:
            if L["kind"] == "conv" and L["bias"]:
                L["bias"] = False
                L["params"].remove(f"{L['name']}.bias")

    xtr_u8, ytr, xte_u8, yte = load_cifar(cifar_dir, trial["data"]["train_size"],
                                          trial["data"]["test_size"])
    xtr, xte = normalise(xtr_u8, xte_u8, dtype, "global_norm" in perturb)
    ytr, yte = torch.from_numpy(ytr), torch.from_numpy(yte)

    pnames = [p for L in spec for p in L["params"]]
    P = {n: init[n].to(dtype).clone().requires_grad_(True) for n in pnames}
    buffers = {n: init[n].to(dtype).clone() for n in init if "running_" in n}
    W0 = {n: init[n].to(dtype).clone() for n in pnames}
    params = [P[n] for n in pnames]

    o = trial["optimizer"]
    lr = float(trial["lr"])
    if o["name"] == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=float(o.get("momentum", 0)),
                              dampening=0, nesterov=bool(o.get("nesterov", False)),
                              weight_decay=float(o.get("weight_decay", 0)))
    elif o["name"] == "adam":
        cls = torch.optim.AdamW if "adamw" in perturb else torch.optim.Adam
        opt = cls(params, lr=lr, betas=(float(o.get("beta1", 0.9)), float(o.get("beta2", 0.999))),
                  eps=float(o.get("eps", 1e-8)), weight_decay=float(o.get("weight_decay", 0)))
    else:
        raise ValueError(f"unknown optimizer {o['name']!r}")
    if ALT_OPS:
        opt = FormulaOptimizer(params, lr, o)

    bn_mom = float(trial.get("bn_momentum", 0.1))
    if "bn_momentum" in perturb:
        bn_mom = 0.2
    seed, v = int(trial["seed"]), float(trial["noise"])
    meas = trial.get("measure") or {}
    every = int(meas.get("every", 0) or 0)
    etas = [float(e) for e in meas.get("eta", [])]
    bins = int(meas.get("bins", 0) or 0)
    sample = int(meas.get("sample", 0) or 0)
    rng_lo, rng_hi = (float(r) for r in meas.get("range", [-3, 3]))
    steps = int(trial["steps"])
    noise_options = ({} if "noise_options_ignored" in perturb else
                     {k: trial[f"noise_{k}"] for k in ("draws", "moments", "spread")
                      if f"noise_{k}" in trial})
    if tuple(order.shape) != (steps, int(trial["batch_size"])):
        raise ValueError(f"order is {tuple(order.shape)}, expected "
                         f"({steps}, {trial['batch_size']})")

    div = trial.get("divergence") or {}
    loss_above = float(div.get("loss_above", 100))
    for_steps = int(div.get("for_steps", 20))
    above = 0
    rows = []
    for t in range(1, steps + 1):
        idx = order[t - 1].long()
        x, y = xtr[idx], ytr[idx]
        noise = Noise(seed, t, v, dtype, swap_order="noise_draw_order" in perturb,
                      off="noise_off" in perturb or v <= 0, options=noise_options)
        measured = every > 0 and t % every == 0
        record = {} if measured else None

        def loss_at(Pm, want_grad_of):
            """A measurement pass: loss and gradients wrt the listed tensors."""
            out = forward(spec, Pm, x, noise, None, bn_mom, None, perturb)
            l = cross_entropy(out, y)
            return l, torch.autograd.grad(l, want_grad_of)

        opt.zero_grad(set_to_none=True)
        logits = forward(spec, P, x, noise, buffers, bn_mom, record, perturb)
        loss = cross_entropy(logits, y)
        loss.backward()
        acc = (logits.argmax(1) == y).double().mean().item()
        rows.append({"kind": "train", "step": t, "loss": loss.item(), "acc": acc})
        # divergence (docs/measurements.md): NaN or infinity at once, or above loss_above for
        # for_steps consecutive steps; the trial ends with this step's row
        above = above + 1 if loss.item() > loss_above else 0
        if not math.isfinite(loss.item()) or above >= for_steps:
            break

        if measured:
            G = {n: P[n].grad.detach().clone() for n in pnames}
            Wt = {n: P[n].detach().clone() for n in pnames}

        def landscape(base):
            g = [G[n] for n in pnames]
            gnorm = norm(g)
            out = []
            for eta in etas:
                Pm = {n: (torch.add(base[n], G[n], alpha=-eta) if ALT_OPS
                          else base[n] - eta * G[n]).requires_grad_(True) for n in pnames}
                l, ge = loss_at(Pm, [Pm[n] for n in pnames])
                gd = norm([a - b for a, b in zip(ge, g)])
                out.append({"kind": "landscape", "step": t, "eta": eta, "loss": l.item(),
                            "grad_dist": gd, "beta": gd / (eta * gnorm)})
            if out:
                # measurements.md: a NaN probe makes the step's summaries NaN
                def ext(f, key):
                    vs = [r[key] for r in out]
                    return math.nan if any(math.isnan(v) for v in vs) else f(vs)
                summary = {
                    "loss_min": ext(min, "loss"),
                    "loss_max": ext(max, "loss"),
                    "gradpred_min": ext(min, "grad_dist"),
                    "gradpred_max": ext(max, "grad_dist"),
                    "beta_smoothness": ext(max, "beta"),
                    "nonfinite_probes": sum(
                        not all(math.isfinite(r[k]) for k in ("loss", "grad_dist", "beta"))
                        for r in out),
                }
                for r in out:
                    r.update(summary)
            return out

        if measured and "landscape_after_update" not in perturb:
            land_rows = landscape(Wt)

        opt.step()

        if measured:
            if "landscape_after_update" in perturb:
                land_rows = landscape({n: P[n].detach().clone() for n in pnames})
            W1 = {n: P[n].detach().clone() for n in pnames}
            for i, L in enumerate(spec):
                wn = f"{L['name']}.weight"
                Gi = G[wn]
                gn = norm([G[n] for n in L["params"]] if "grad_norm_all" in perturb
                          else [Gi])
                upto = i + 1 if "ics_include_self" in perturb else i
                if upto == 0:
                    ics_l2, ics_cos = 0.0, 1.0
                else:
                    moved = {n for M in spec[:upto] for n in M["params"]}
                    Pm = {n: (W1[n] if n in moved else Wt[n]).clone() for n in pnames}
                    Pm[wn].requires_grad_(True)
                    _, (Gp,) = loss_at(Pm, [Pm[wn]])
                    ics_l2 = norm([Gi - Gp])
                    na, nb = norm([Gi]), norm([Gp])
                    ics_cos = (None if na == 0 or nb == 0
                               else float((Gi.double() * Gp.double()).sum()) / (na * nb))
                ref = Wt[wn] if "weight_dist_prev" in perturb else W0[wn]
                wd = norm([W1[wn] - ref])
                w0n = norm([W0[wn]])
                rec = record[i]
                rows.append({"kind": "layer", "step": t, "layer": i, "layer_name": L["name"],
                             "ics_l2": ics_l2, "ics_cos": ics_cos, "grad_norm": gn,
                             "weight_dist": wd,
                             "weight_dist_rel": wd / w0n if w0n > 0 else None,
                             "pre": act_stats(rec["pre"], sample, draw_key(seed, 2000 + i, t),
                                              perturb),
                             "post": act_stats(rec["post"], sample, draw_key(seed, 2000 + i, t),
                                               perturb)})
            rows.extend(land_rows)
            for i, L in enumerate(spec):
                for point in ("pre", "post"):
                    for b, blo, bhi, c in histogram(record[i][point], bins, rng_lo, rng_hi):
                        rows.append({"kind": "activation", "step": t, "layer": i,
                                     "layer_name": L["name"], "point": point, "bin": b,
                                     "lo": blo, "hi": bhi, "count": int(c)})

        if t in eval_steps and xte.shape[0] > 0:
            with torch.no_grad():
                tot_loss, correct = 0.0, 0
                for s in range(0, xte.shape[0], 1000):
                    out = eval_forward(spec, P, buffers, xte[s:s + 1000], perturb)
                    tot_loss += F.cross_entropy(out, yte[s:s + 1000], reduction="sum").item()
                    correct += int((out.argmax(1) == yte[s:s + 1000]).sum())
            n = xte.shape[0]
            rows.append({"kind": "eval", "step": t, "loss": tot_loss / n, "acc": correct / n})

    final = {n: P[n].detach().clone() for n in pnames}
    final.update(buffers)
    run_trace.last_state = final  # crosscheck compares it with final.safetensors if present
    return rows


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace_dir")
    ap.add_argument("--cifar")
    ap.add_argument("--perturb", action="append", default=[])
    a = ap.parse_args(argv)
    for r in run_trace(a.trace_dir, a.cifar, a.perturb):
        print(json.dumps(r))


if __name__ == "__main__":
    main(sys.argv[1:])
