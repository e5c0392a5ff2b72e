#!/usr/bin/python3
"""Same-run PyTorch comparison for bench/bench_beats.cpp: the BEATs-base architecture written out in plain
PyTorch (post-LN deep-norm blocks, gated relative position bias, 32x score stabiliser, weight-normalised
convolutional positional embedding, 16x16 patch embedding over a 128-bin Kaldi fbank), timed the way the C++
benchmark times it. It is a comparison script only: nothing in the build, the tests or the library runs it.

Modes (one per process, so that the peak RSS printed belongs to that mode alone):
  forward       fbank + patch embedding + encoder, eval mode, no gradients
  step_full     train mode: every patch encoded, linear head on the masked 75%, smoothed cross-entropy,
                backward, AdamW step
  step_masked   train mode, BEATs pre-training: 75% of the patches masked, only the visible ones encoded,
                a 3-block label predictor with a mask token, smoothed cross-entropy, backward, AdamW step
  layers        fbank, patch embedding, one encoder layer forward / forward+backward, attention core
                forward / forward+backward

With --official DIR (forward and step_full only), the model is the official BEATs code instead
(microsoft/unilm `beats/`: BEATs.py, backbone.py, modules.py copied into DIR by the user; nothing of it is in
this repository), built with the BEATs_iter3 base configuration and random weights, and timed on the same
work: `extract_features` on the clip (its own torchaudio fbank), and for step_full the same head, masking,
loss, clipping and AdamW as above. This is the issue's "official code" baseline.

Threads: --threads sets ATen's (OpenMP) threads. Debian's torch does its matrix products in OpenBLAS, whose
pthread build keeps its own pool (all cores unless OPENBLAS_NUM_THREADS says otherwise), so --threads 2 on a
2-core machine runs up to 4 busy threads. --blas-threads N sets OpenBLAS's pool before torch loads; the
line printed first names both. On 2 cores of an AMD EPYC (Zen 5) the official step was fastest with
--threads 1 --blas-threads 2 (docs/performance.md, session 14).

Usage: /usr/bin/python3 bench/beats_pytorch.py --mode forward --threads 2 --reps 5 [--blas-threads N] [--official DIR]
"""
import argparse
import math
import os
import resource
import statistics
import sys
import time


def _blas_threads_from_argv(argv):
    """The --blas-threads value, read before torch is imported (OpenBLAS reads its variable when it loads)."""
    for i, arg in enumerate(argv):
        if arg == "--blas-threads" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--blas-threads="):
            return arg.split("=", 1)[1]
    return None


_BLAS_THREADS = _blas_threads_from_argv(sys.argv)
if _BLAS_THREADS is not None:
    os.environ["OPENBLAS_NUM_THREADS"] = _BLAS_THREADS

import torch  # noqa: E402 (after OPENBLAS_NUM_THREADS)
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

# BEATs-base (BEATs_iter3 checkpoints' configuration).
CFG = dict(patch=16, embed=512, layers=12, dim=768, ffn=3072, heads=12, conv_pos=128, conv_groups=16,
           buckets=320, max_distance=800, dropout=0.1, attention_dropout=0.1, codes=1024, predictor_layers=3)
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582


def bucket_table(q_len, k_len, num_buckets, max_distance):
    """Bidirectional log-bucketed relative positions (key - query), as BEATs buckets them."""
    rel = torch.arange(k_len)[None, :] - torch.arange(q_len)[:, None]
    half = num_buckets // 2
    exact = half // 2
    out = (rel > 0).long() * half
    n = rel.abs()
    far = exact + (torch.log(n.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)).long()
    far = torch.minimum(far, torch.full_like(far, half - 1))
    return out + torch.where(n < exact, n, far)


class Attention(nn.Module):
    def __init__(self, dim, heads, has_table, cfg):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.k_proj, self.v_proj, self.q_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.grep_linear = nn.Linear(self.d, 8)
        self.grep_a = nn.Parameter(torch.ones(1, heads, 1, 1))
        self.table = nn.Embedding(cfg["buckets"], heads) if has_table else None
        self.p = cfg["attention_dropout"]

    def bias(self, t):
        b = bucket_table(t, t, CFG["buckets"], CFG["max_distance"])
        return self.table(b).permute(2, 0, 1)  # [H, T, T]

    def forward(self, x, pos_bias, key_padding):
        B, T, C = x.shape
        scaling = self.d ** -0.5
        alpha = 32.0
        q = self.q_proj(x) * scaling
        k, v = self.k_proj(x), self.v_proj(x)
        qh = (q / alpha).view(B, T, self.h, self.d).transpose(1, 2)
        kh = k.view(B, T, self.h, self.d).transpose(1, 2)
        vh = v.view(B, T, self.h, self.d).transpose(1, 2)
        s = qh @ kh.transpose(-1, -2)
        s = (s - s.amax(-1, keepdim=True)) * alpha
        if key_padding is not None:
            s = s.masked_fill(key_padding[:, None, None, :], float("-inf"))
        if pos_bias is not None:
            g = torch.sigmoid(self.grep_linear(qh * alpha / scaling).view(B, self.h, T, 2, 4).sum(-1))
            ga, gb = g[..., 0:1], g[..., 1:2]
            gate = ga * (gb * self.grep_a - 1.0) + 2.0  # [B, H, T, 1]
            s = s + gate * pos_bias[None]
        p = F.dropout(torch.softmax(s, -1), self.p, self.training)
        o = (p @ vh).transpose(1, 2).reshape(B, T, C)
        return self.out_proj(o)


class Block(nn.Module):
    def __init__(self, cfg, has_table, n_layers):
        super().__init__()
        self.self_attn = Attention(cfg["dim"], cfg["heads"], has_table, cfg)
        self.self_attn_layer_norm = nn.LayerNorm(cfg["dim"])
        self.fc1, self.fc2 = nn.Linear(cfg["dim"], cfg["ffn"]), nn.Linear(cfg["ffn"], cfg["dim"])
        self.final_layer_norm = nn.LayerNorm(cfg["dim"])
        self.alpha = (2.0 * n_layers) ** 0.25
        self.p = cfg["dropout"]

    def forward(self, x, pos_bias, key_padding):
        y = F.dropout(self.self_attn(x, pos_bias, key_padding), self.p, self.training)
        x = self.self_attn_layer_norm(x * self.alpha + y)
        y = F.dropout(self.fc2(F.gelu(self.fc1(x))), self.p, self.training)
        return self.final_layer_norm(x * self.alpha + y)


class Encoder(nn.Module):
    def __init__(self, cfg, n_layers):
        super().__init__()
        conv = nn.Conv1d(cfg["dim"], cfg["dim"], cfg["conv_pos"], padding=cfg["conv_pos"] // 2, groups=cfg["conv_groups"])
        self.pos_conv = nn.utils.weight_norm(conv, name="weight", dim=2)
        self.layers = nn.ModuleList(Block(cfg, i == 0, n_layers) for i in range(n_layers))
        self.layer_norm = nn.LayerNorm(cfg["dim"])
        self.p = cfg["dropout"]
        self.even = cfg["conv_pos"] % 2 == 0

    def forward(self, x, padding=None):
        if padding is not None:
            x = x.masked_fill(padding[..., None], 0.0)
        c = self.pos_conv(x.transpose(1, 2))
        if self.even:
            c = c[:, :, :-1]
        x = self.layer_norm(x + F.gelu(c).transpose(1, 2))
        x = F.dropout(x, self.p, self.training)
        bias = self.layers[0].self_attn.bias(x.shape[1])
        for layer in self.layers:
            x = layer(x, bias, padding)
        return x


class Beats(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.patch_embedding = nn.Conv2d(1, cfg["embed"], cfg["patch"], cfg["patch"], bias=False)
        self.layer_norm = nn.LayerNorm(cfg["embed"])
        self.post_extract_proj = nn.Linear(cfg["embed"], cfg["dim"])
        self.encoder = Encoder(cfg, cfg["layers"])

    def patches(self, fb):
        x = self.patch_embedding(fb.unsqueeze(1))
        return self.layer_norm(x.flatten(2).transpose(1, 2))  # [B, P, E]

    def forward(self, fb):
        return self.encoder(self.post_extract_proj(self.patches(fb)))


class Predictor(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.mask_emb = nn.Parameter(torch.randn(cfg["dim"]) * 0.02)
        self.encoder = Encoder(cfg, cfg["predictor_layers"])
        self.head = nn.Linear(cfg["dim"], cfg["codes"])


def fbank(wave):
    rows = [torchaudio.compliance.kaldi.fbank(w[None] * 2 ** 15, num_mel_bins=128, sample_frequency=16000,
                                              frame_length=25, frame_shift=10) for w in wave]
    return (torch.stack(rows) - FBANK_MEAN) / (2 * FBANK_STD)


def test_wave(seconds=10.0):
    t = torch.arange(int(seconds * 16000)) / 16000.0
    f = 300 + 1200 * t / seconds
    return (0.3 * torch.sin(2 * math.pi * torch.cumsum(f, 0) / 16000) + 0.1 * torch.sin(2 * math.pi * 880 * t))[None]


def official_model(code_dir, train):
    """The official BEATs model (random weights) with the BEATs_iter3 base configuration; dropout as our
    benchmark uses it (0.1 in training, none in eval), no layer drop so every step runs every block."""
    sys.path.insert(0, code_dir)
    from BEATs import BEATs, BEATsConfig  # noqa: E402 (the user's copy of the official code)
    cfg = BEATsConfig(dict(
        input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
        encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
        deep_norm=True, dropout=0.1 if train else 0.0, attention_dropout=0.1 if train else 0.0,
        activation_dropout=0.0, encoder_layerdrop=0.0, dropout_input=0.0, conv_pos=128, conv_pos_groups=16,
        relative_position_embedding=True, num_buckets=320, max_distance=800, gru_rel_pos=True,
        finetuned_model=False))
    return BEATs(cfg)


def mask_indices(P, ratio, gen):
    perm = torch.randperm(P, generator=gen)
    keep = round(P * (1 - ratio))
    return perm[:keep].sort().values, perm[keep:].sort().values


def timeit(fn, reps, warmup=1):
    """Median and best wall time of `reps` calls after `warmup` calls, and the mean process CPU time per call
    (all threads), so that a loaded machine can be recognised (CPU time well below threads x wall)."""
    for _ in range(warmup):
        fn()
    ts = []
    c0 = time.process_time()
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), min(ts), (time.process_time() - c0) / reps


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["forward", "step_full", "step_masked", "layers"], default="forward")
    ap.add_argument("--threads", type=int, default=2, help="ATen (OpenMP) threads")
    ap.add_argument("--blas-threads", type=int, help="OpenBLAS threads (default: its own, all cores)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--official", metavar="DIR", help="time the official BEATs code found in DIR instead")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    blas = os.environ.get("OPENBLAS_NUM_THREADS", f"unset (OpenBLAS uses {os.cpu_count()})")
    print(f"threads: ATen {a.threads}, OpenBLAS {blas}")
    torch.manual_seed(0)
    wave = test_wave(a.seconds)
    gen = torch.Generator().manual_seed(1)
    report = []
    if a.official and a.mode not in ("forward", "step_full"):
        sys.exit("beats_pytorch.py: --official times the forward and step_full modes only")
    model = official_model(a.official, a.mode == "step_full") if a.official else Beats(CFG)

    if a.official and a.mode == "forward":
        model.eval()

        def fwd():
            with torch.no_grad():
                return model.extract_features(wave)[0]
        report.append(("official forward (fbank included)", *timeit(fwd, a.reps)))
    elif a.official:
        model.train()
        with torch.no_grad():
            P = model.extract_features(wave)[0].shape[1]
        labels = torch.randint(0, CFG["codes"], (1, P), generator=gen)
        head = nn.Linear(CFG["dim"], CFG["codes"])
        params = list(model.parameters()) + list(head.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

        def step():
            vis, msk = mask_indices(P, 0.75, gen)
            opt.zero_grad(set_to_none=True)
            h = model.extract_features(wave)[0][0, msk]  # every patch encoded, head on the masked 75%
            loss = F.cross_entropy(head(h), labels[0, msk], label_smoothing=0.1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        report.append(("official training step (step_full)", *timeit(step, a.reps)))
    elif a.mode == "forward":
        model.eval()

        def fwd():
            with torch.no_grad():
                return model(fbank(wave))
        report.append(("full forward (fbank included)", *timeit(fwd, a.reps)))
    elif a.mode in ("step_full", "step_masked"):
        model.train()
        fb = fbank(wave)
        P = model.patches(fb).shape[1]
        labels = torch.randint(0, CFG["codes"], (1, P), generator=gen)
        if a.mode == "step_full":
            head = nn.Linear(CFG["dim"], CFG["codes"])
            params = list(model.parameters()) + list(head.parameters())
        else:
            pred = Predictor(CFG)
            pred.train()
            params = list(model.parameters()) + list(pred.parameters())
        opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)

        def step():
            vis, msk = mask_indices(P, 0.75, gen)
            opt.zero_grad(set_to_none=True)
            f = fbank(wave)  # fbank recomputed each step, as the C++ step does
            if a.mode == "step_full":
                h = model(f)[0, msk]
                logits = head(h)
            else:
                x = model.patches(f)[:, vis]  # gather after the patch embedding
                enc = model.encoder(model.post_extract_proj(x))
                seq = pred.mask_emb.expand(1, P, CFG["dim"]).clone()
                seq[:, vis] = enc
                logits = pred.head(pred.encoder(seq)[0, msk])
            loss = F.cross_entropy(logits, labels[0, msk], label_smoothing=0.1)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        report.append((f"training step ({a.mode})", *timeit(step, a.reps)))
    else:
        fb = fbank(wave)
        r = timeit(lambda: fbank(wave), a.reps)
        report.append(("fbank 10 s", *r))
        with torch.no_grad():
            r = timeit(lambda: model.post_extract_proj(model.patches(fb)), a.reps)
        report.append(("patch embedding + projection", *r))
        model.train()
        for m in model.modules():
            if isinstance(m, (Block, Attention, Encoder)):
                m.p = 0.0
        x0 = torch.randn(1, model.patches(fb).shape[1], CFG["dim"])
        layer = model.encoder.layers[0]
        bias = layer.self_attn.bias(x0.shape[1]).detach()
        with torch.no_grad():
            r = timeit(lambda: layer(x0, bias, None), a.reps * 3)
        report.append(("encoder layer forward", *r))
        xg = x0.clone().requires_grad_(True)

        def layer_fb():
            y = layer(xg, bias, None)
            y.backward(torch.ones_like(y))
        r = timeit(layer_fb, a.reps * 3)
        report.append(("encoder layer forward+backward", *r))
        B, T, C, H = 1, x0.shape[1], CFG["dim"], CFG["heads"]
        q, k, v = (torch.randn(B, H, T, C // H) for _ in range(3))
        gate = torch.rand(B, H, T, 1) + 1
        bias_t = torch.randn(H, T, T)

        def core(q, k, v):
            s = (q / 32) @ k.transpose(-1, -2)
            s = (s - s.amax(-1, keepdim=True)) * 32 + gate * bias_t[None]
            return torch.softmax(s, -1) @ v
        with torch.no_grad():
            r = timeit(lambda: core(q, k, v), a.reps * 3)
        report.append(("attention core forward", *r))
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def core_fb():
            o = core(qg, kg, vg)
            o.backward(torch.ones_like(o))
        r = timeit(core_fb, a.reps * 3)
        report.append(("attention core forward+backward", *r))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {a.seconds:g} s clip")
    for name, med, best, cpu in report:
        print(f"{name:40s} median {med * 1e3:9.1f} ms   best {best * 1e3:9.1f} ms   cpu {cpu * 1e3:9.1f} ms")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"peak RSS {peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
