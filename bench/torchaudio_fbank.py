#!/usr/bin/python3
"""Times torchaudio's Kaldi fbank (the reference that audio/fbank.cpp matches) on a 10 s clip, for comparison
with bench/bench_audio (BM_FbankClip, BM_FbankBatch). Optional: needs Debian's python3-torch and
python3-torchaudio (/usr/bin/python3); the project never runs Python at build or test time.

usage: /usr/bin/python3 bench/torchaudio_fbank.py [--threads 2] [--repeats 20] [--batch 8] [--sonar build/sonar]

With --sonar, it also runs `sonar fbank` on the same clip and prints the largest difference from torchaudio.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time


def test_clip(rate=16000, seconds=10.0, seed=1):
    """A chirp plus a little noise, the same recipe as bench_audio.cpp's test_clip."""
    import numpy as np
    n = int(seconds * rate)
    t = np.arange(n) / rate
    s = np.empty(n, dtype=np.uint64)
    state = seed
    for i in range(n):  # the same 32-bit LCG as the C++ benchmark
        state = (state * 1664525 + 1013904223) & 0xFFFFFFFF
        s[i] = state
    noise = s.astype(np.float64) / 4294967296.0 - 0.5
    return (0.3 * np.sin(2 * np.pi * (100 * t + 300 * t * t)) + 0.02 * noise).astype(np.float32)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (default 20)")
    ap.add_argument("--batch", type=int, default=8, help="clips in the batched measurement (default 8)")
    ap.add_argument("--sonar", help="path to the sonar program, to compare its output with torchaudio's")
    args = ap.parse_args()
    try:
        import numpy as np
        import torch
        import torchaudio.compliance.kaldi as kaldi
    except ImportError as e:
        print(f"torchaudio_fbank.py: needs numpy, torch and torchaudio ({e}); "
              "on Debian: apt-get install python3-torch python3-torchaudio", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    wave = torch.from_numpy(test_clip())

    def one(w):
        return kaldi.fbank(w.unsqueeze(0) * 2 ** 15, num_mel_bins=128, sample_frequency=16000,
                           frame_length=25, frame_shift=10)

    for _ in range(3):  # warm up
        one(wave)
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = one(wave)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    med = statistics.median(times)
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"torchaudio kaldi.fbank, one 10 s clip: {med * 1e3:.1f} ms/clip wall, "
          f"{statistics.median(cpu) * 1e3:.1f} ms CPU (all threads; medians of {args.repeats}), "
          f"{10.0 / med:.0f} audio s/s, output {tuple(out.shape)}")

    clips = [torch.from_numpy(test_clip(seed=1 + b)) for b in range(args.batch)]
    t0 = time.perf_counter()
    for w in clips:
        one(w)
    dt = time.perf_counter() - t0
    print(f"torchaudio kaldi.fbank, {args.batch} clips one after another: {dt / args.batch * 1e3:.1f} ms/clip, "
          f"{10.0 * args.batch / dt:.0f} audio s/s")

    if args.sonar:
        with tempfile.TemporaryDirectory() as d:
            np.save(os.path.join(d, "w.npy"), wave.numpy())
            subprocess.run([args.sonar, "fbank", "--input", os.path.join(d, "w.npy"), "--output",
                            os.path.join(d, "f.npy")], check=True, stdout=subprocess.DEVNULL)
            ours = np.load(os.path.join(d, "f.npy"))
            ref64 = kaldi.fbank(wave.double().unsqueeze(0) * 2 ** 15, num_mel_bins=128, sample_frequency=16000,
                                frame_length=25, frame_shift=10).numpy()
            print(f"max |sonar - torchaudio float32| = {np.abs(ours - out.numpy()).max():.2e}, "
                  f"max |sonar - torchaudio float64| = {np.abs(ours - ref64).max():.2e}, "
                  f"max |torchaudio float32 - float64| = {np.abs(out.numpy() - ref64).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
