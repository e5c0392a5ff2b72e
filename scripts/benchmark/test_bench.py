#!/usr/bin/env python3
"""Tests of the benchmark builder's excerpt search (bench.py find_excerpts / excerpt_of), standard library only.

Made-up clips at 16 kHz: a 4 s "recording" of noise bursts with a varied loudness envelope, pieces cut from it
at offsets off every grid the search uses and at another gain, an unrelated recording and steady noise. The
narrowed waveform search (fine_shifts) must decide as the exhaustive one does (every shift within a frame of
the best envelope window, a plain Pearson correlation at each), and find_excerpts must find the pieces and
nothing else, in one process or two; the prior pool's effects are searched against the animal and environment
clips. unzip_audio (the audio inside a package's zip) unpacks audio members only, at their paths, and refuses a
member that would land outside its folder before writing anything. Run: python3 scripts/benchmark/test_bench.py (CTest: BenchmarkBuilder.Excerpts).
"""
import contextlib
import io
import math
import os
import random
import shutil
import sys
import tempfile
import unittest
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def recording(seed, seconds):
    """Noise whose loudness changes every 30-120 ms by up to 30 dB, as int16 samples."""
    rng = random.Random(seed)
    out = []
    while len(out) < int(seconds * 16000):
        level = 10 ** rng.uniform(2.0, 3.5)
        out.extend(int(rng.gauss(0.0, level)) for _ in range(rng.randint(480, 1920)))
    return [max(-32768, min(32767, x)) for x in out[:int(seconds * 16000)]]


def piece(samples, start_seconds, seconds, gain, extra=0):
    a = int(start_seconds * 16000) + extra
    return [max(-32768, min(32767, int(round(x * gain)))) for x in samples[a:a + int(seconds * 16000)]]


def pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else 0.0


def excerpt_exhaustive(short, long_):
    """The reference: the best envelope window over every phase by plain Pearson, then every waveform shift
    within a frame of it."""
    el = bench.envelope(long_)
    best, best_o, best_p = -1.0, 0, 0
    for p in bench.EXCERPT_PHASES:
        es = bench.envelope(short[p:])
        for o in range(len(el) - len(es) + 1):
            c = pearson(es, el[o:o + len(es)])
            if c > best:
                best, best_o, best_p = c, o, p
    if best < bench.EXCERPT_MIN_ENV_CORR:
        return False
    n = min(bench.EXCERPT_WAVE_SAMPLES, len(short))
    start = (len(short) - n) // 2
    probe = short[start:start + n]
    centre = best_o * bench.EXCERPT_FRAME + start - best_p
    c, p = bench.Centred(probe), bench.Prefix(long_)  # corr_at is pearson (test_centred_prefix_...)
    for shift in range(max(0, centre - bench.EXCERPT_FRAME), min(len(long_) - n, centre + bench.EXCERPT_FRAME) + 1):
        if bench.corr_at(c, p, shift) >= bench.EXCERPT_MIN_WAVE_CORR:
            return True
    return False


def excerpt_fast(short, long_):
    return bench.excerpt_of(short, long_, bench.short_envelopes(short), bench.Prefix(bench.envelope(long_)))


class Excerpts(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.long = recording(1, 4.0)
        cls.other = recording(2, 4.0)

    def test_narrowed_search_decides_as_the_exhaustive_one(self):
        cases = []
        for start, gain in [(0.0, 1.0), (0.5, 0.7), (1.21, 1.3), (2.4, 0.25)]:
            for extra in range(0, 800, 57):  # every phase against the 800-sample envelope frames
                cases.append(("piece at %.2f s + %d" % (start, extra), piece(self.long, start, 1.4, gain, extra),
                              self.long, True))
        cases.append(("unrelated", piece(self.other, 0.7, 1.4, 1.0), self.long, False))
        cases.append(("reversed", list(reversed(piece(self.long, 0.5, 1.4, 1.0))), self.long, False))
        for name, short, long_, want in cases:
            with self.subTest(name):
                ref = excerpt_exhaustive(short, long_)
                self.assertEqual(ref, want)
                self.assertEqual(excerpt_fast(short, long_), ref)

    def test_find_excerpts_finds_the_pieces_and_nothing_else(self):
        rng = random.Random(3)
        steady = [int(rng.gauss(0.0, 1000.0)) for _ in range(3 * 16000)]
        clips = {
            "long": ("crickets", self.long),
            "piece": ("crickets", piece(self.long, 0.5, 1.4, 0.7, 7)),
            "late piece": ("crickets", piece(self.long, 2.3, 0.8, 1.0, 11)),
            "unrelated": ("crickets", self.other),
            "steady": ("crickets", steady),
            "steady piece": ("crickets", steady[8000:8000 + 16000]),
            "too short": ("crickets", piece(self.long, 1.0, 0.4, 1.0)),
            "other label": ("frogs", piece(self.long, 1.0, 1.0, 1.0)),
        }
        want = [("late piece", "long"), ("piece", "long")]
        self.assertEqual(sorted(bench.find_excerpts(clips)), want)
        self.assertEqual(sorted(bench.find_excerpts(clips, jobs=2)), want)  # the pairs split over two processes

    def test_prior_effects_are_searched_against_animal_and_environment(self):
        by_task = {
            "animal": {1: ("bird", self.long), 2: ("canine", self.other)},
            "environment": {3: ("water", recording(6, 3.0))},
            "prior": {4: ("effects", piece(self.long, 0.9, 1.2, 0.8, 5)),      # cut from an animal clip
                      5: ("effects", piece(self.other, 0.2, 1.0, 1.0, 3)),     # another animal clip
                      6: ("speech", piece(self.long, 1.5, 1.0, 1.0)),          # not an effect: not compared
                      7: ("effects", recording(7, 2.0))},
            "emotion": {8: ("pain", piece(self.long, 2.0, 1.0, 1.0))},          # other tasks keep to themselves
        }
        sets = bench.excerpt_search_sets(by_task)
        self.assertEqual(sorted(sets), ["animal", "emotion", "environment", "prior", "prior+animal+environment"])
        self.assertEqual(sorted(sets["prior+animal+environment"]), [1, 2, 3, 4, 5, 7])
        found = set()
        for clips in sets.values():
            found.update(bench.find_excerpts(clips))
        self.assertEqual(sorted(found), [(4, 1), (5, 2)])

    def test_centred_prefix_correlation_matches_pearson(self):
        rng = random.Random(4)
        a = [rng.uniform(-1, 1) for _ in range(50)]
        b = [rng.uniform(-1, 1) + 0.3 * (i % 7) for i in range(200)]
        c, p = bench.Centred(a), bench.Prefix(b)
        for o in (0, 17, 150):
            self.assertAlmostEqual(bench.corr_at(c, p, o), pearson(a, b[o:o + 50]), places=12)
        w = recording(5, 0.5)  # int16 samples, as the waveform check sees them
        cw, pw = bench.Centred(w[:4000]), bench.Prefix(w)
        for o in (0, 1234, 4000):
            self.assertAlmostEqual(bench.corr_at(cw, pw, o), pearson(w[:4000], w[o:o + 4000]), places=9)
        self.assertEqual(bench.corr_at(c, bench.Prefix([5.0] * 60), 3), 0.0)  # a flat window


class UnzipAudio(unittest.TestCase):
    def make_zip(self, members):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, "public.zip")
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members:
                z.writestr(name, data)
        return d, path

    def test_audio_members_unpacked_with_their_paths(self):
        d, path = self.make_zip([("audio/fauna/cattle_01.ogg", b"moo" * 1000), ("audio/fauna/cattle.xml", b"<x/>"),
                                 ("art/a.png", b"png"), ("audio/ambient/Wind.WAV", b"RIFF....")])
        dest = os.path.join(d, "public.zip.members")
        self.assertEqual(bench.unzip_audio(path, dest), 2)
        got = sorted(os.path.relpath(os.path.join(r, f), dest) for r, _, fs in os.walk(dest) for f in fs)
        self.assertEqual(got, ["audio/ambient/Wind.WAV", "audio/fauna/cattle_01.ogg"])
        with open(os.path.join(dest, "audio/fauna/cattle_01.ogg"), "rb") as f:
            self.assertEqual(f.read(), b"moo" * 1000)

    def test_a_member_outside_the_folder_stops_before_anything_is_written(self):
        for bad in ("../evil.ogg", "/abs/evil.wav", "a/../../evil.flac"):
            with self.subTest(bad):
                d, path = self.make_zip([("audio/ok.ogg", b"ok"), (bad, b"evil")])
                dest = os.path.join(d, "out")
                with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
                    bench.unzip_audio(path, dest)
                self.assertIn(bad, err.getvalue())
                self.assertFalse(os.path.exists(dest))

    def test_not_a_zip(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d)
        path = os.path.join(d, "broken.zip")
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 truncated")
        with self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()) as err:
            bench.unzip_audio(path, os.path.join(d, "out"))
        self.assertIn("not a readable zip archive", err.getvalue())


if __name__ == "__main__":
    unittest.main(verbosity=2)
