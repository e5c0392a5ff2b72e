#!/usr/bin/env python3
"""Table work for scripts/build-benchmark.sh (Python standard library only; a data-building tool, never run by
the framework itself).

  plan    reads the hand-reviewed label tables in data/benchmark/ and the unpacked packages, and writes the job
          lists (conversions, mma/fluidsynth renders, espeak-ng renders) and the item table.
  unzip   unpacks the audio members of a zip archive that a package ships (0ad keeps its sounds in one).
  finish  reads what the conversions produced and the fingerprints, removes duplicate recordings, assigns
          splits or folds by group, writes the manifests atomically, prints per-class counts, compares them
          with expected_counts_<size>.csv and fails when a class is under the task's minimum.

It does not download, convert or render anything itself; the shell script does that.
"""
import argparse
import collections
import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import operator
import os
import random
import re
import shutil
import sys
import time
import zipfile

TASK_ORDER = ["emotion", "genre", "animal", "environment", "prior"]
AUDIO_EXT = re.compile(r"\.(ogg|wav|mp3|flac)$", re.I)
FOLDS = 5
# Evaluation tasks whose clips are also searched for excerpts against the prior pool's effects (the same kind
# of game and educational sound packages feed both; a prior clip cut from an evaluation recording, or the
# reverse, would let the start model hear a test clip).
PRIOR_EFFECTS_CROSS_TASKS = ("animal", "environment")
ESPEAK_LANGS = ["en", "fr-fr", "de", "es", "it", "ru", "pl", "nl", "cs", "pt", "sv", "tr", "fi", "hu", "el", "ro"]
ESPEAK_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
# Chord progressions (bars, key of C; transposed per clip). Blues styles get the 12-bar form, jazz styles
# ii-V-I cycles, the rest common pop/folk/latin progressions.
PROG_BLUES = [["C7", "C7", "C7", "C7", "F7", "F7", "C7", "C7", "G7", "F7", "C7", "G7"],
              ["C7", "F7", "C7", "C7", "F7", "F7", "C7", "C7", "G7", "F7", "C7", "G7"]]
PROG_JAZZ = [["Dm7", "G7", "Cmaj7", "Cmaj7"], ["Cmaj7", "Am7", "Dm7", "G7"], ["Em7", "A7", "Dm7", "G7"],
             ["Fmaj7", "Bb7", "Em7", "A7"]]
PROG_POP = [["C", "Am", "F", "G"], ["C", "G", "Am", "F"], ["C", "F", "G", "C"], ["Am", "F", "C", "G"],
            ["C", "C7", "F", "Fm"], ["Am", "Dm", "E7", "Am"], ["C", "Em", "F", "G"], ["Dm", "G", "C", "Am"]]


def die(msg, code=2):
    print("build-benchmark: error: " + msg, file=sys.stderr)
    sys.exit(code)


def rng_for(seed, *keys):
    h = hashlib.sha256(("%s|" % seed + "|".join(str(k) for k in keys)).encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


def unit_hash(seed, *keys):
    h = hashlib.sha256(("%s|" % seed + "|".join(str(k) for k in keys)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64


def read_table(path, columns):
    if not os.path.isfile(path):
        die("label table missing: %s" % path)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        fields = rows[0].keys() if rows else []
    for c in columns:
        if rows and c not in fields:
            die("%s: column '%s' missing (has %s)" % (path, c, ",".join(fields)))
    return rows


def variant_group(package, path):
    """Leakage unit of a recorded sound: its file, except that numbered variants (wolf_00.ogg, wolf_01.ogg:
    takes of one call in widelands) form one group."""
    return package + ":" + re.sub(r"_\d+(\.[A-Za-z0-9]+)$", r"\1", path)


def safe(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def write_atomic(path, text):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def tsv(rows):
    return "".join("\t".join(str(x) for x in r) + "\n" for r in rows)


def package_files(ext, package):
    root = os.path.join(ext, package)
    if not os.path.isdir(root):
        die("package %s is not unpacked under %s" % (package, ext))
    out = []
    for d, _, files in os.walk(root):
        for f in files:
            full = os.path.join(d, f)
            if AUDIO_EXT.search(f):
                out.append(os.path.relpath(full, root))
    return sorted(out)


# ---------------------------------------------------------------------------------------------------- plan

def plan(a):
    data, ext, work = a.data, a.ext, a.work
    small = a.size == "small"
    pk = {r["package"]: r for r in read_table(os.path.join(data, "packages.csv"), ["package", "version", "license"])}
    tasks = {r["task"]: r for r in read_table(os.path.join(data, "tasks.csv"), ["task", "crop_seconds"])}
    items, convert, mma_jobs, espeak_jobs = [], [], [], []
    used = set()  # (package, path) of every source that an evaluation task uses

    def lic(p):
        if p not in pk:
            die("package %s is used by a label table but not listed in packages.csv" % p)
        return pk[p]["license"]

    def add_file(task, label, package, path, group, max_crops, split_hint=""):
        src = os.path.join(ext, package, path)
        if not os.path.isfile(src):
            die("%s: file listed in a label table is missing from package %s: %s" % (task, package, path))
        sub = label.split(";")[0] if task != "prior" else package
        # Readable base name plus a hash of the full source path: names in some packages are not ASCII, and the
        # same base name occurs in many folders (voice packs, languages).
        tag = hashlib.sha1((package + "/" + path).encode()).hexdigest()[:10]
        stem = "audio/%s/%s/%s_%s" % (task, safe(sub), safe(os.path.splitext(os.path.basename(path))[0])[:48] or "clip", tag)
        convert.append((stem, src, max_crops, tasks[task]["crop_seconds"]))
        items.append((stem, task, label, group, package, lic(package), split_hint))
        used.add((package, path))

    # Emotion: hedgewars voice packs, utterances mapped to affect classes by hedgewars_affect.csv.
    affect = {r["utterance"]: r["affect"] for r in read_table(os.path.join(data, "hedgewars_affect.csv"),
                                                             ["utterance", "affect"])}
    # Packs that reuse each other's recordings (found by fingerprint in a full build, copies at bit error 0)
    # form one group, so that no recording is on two sides even when a small build samples other lines.
    pack_group = {r["pack"]: r["group"] for r in read_table(os.path.join(data, "hedgewars_packs.csv"),
                                                            ["pack", "group"])}
    hw = "hedgewars-data"
    voices = [p for p in package_files(ext, hw) if "/Sounds/voices/" in p]
    if not voices:
        die("no voice packs found in %s (package layout changed?)" % hw)
    packs = collections.defaultdict(list)
    for p in voices:
        packs[p.split("/Sounds/voices/")[1].split("/")[0]].append(p)
    for pack in sorted(packs):
        by_class = collections.defaultdict(list)
        for p in packs[pack]:
            u = os.path.splitext(os.path.basename(p))[0]
            if u not in affect:
                die("hedgewars utterance '%s' (pack %s) is not in hedgewars_affect.csv: review and add it" % (u, pack))
            used.add((hw, p))  # the whole pack stays out of the prior pool (same speakers)
            if affect[u] not in ("-", ""):
                by_class[affect[u]].append(p)
        for label in sorted(by_class):
            files = sorted(by_class[label])
            rng_for(a.seed, "emotion", pack, label).shuffle(files)
            for p in files[: (3 if small else len(files))]:
                add_file("emotion", label, hw, p, "hedgewars:" + pack_group.get(pack, pack), 1)

    # Genre: mma grooves rendered with General MIDI soundfonts.
    genres = read_table(os.path.join(data, "mma_genres.csv"), ["style", "genre", "tempo_lo", "tempo_hi"])
    fonts = [("fluid-soundfont-gm", "usr/share/sounds/sf2/FluidR3_GM.sf2"),
             ("timgm6mb-soundfont", "usr/share/sounds/sf2/TimGM6mb.sf2")]
    for p, f in fonts:
        if not os.path.isfile(os.path.join(ext, p, f)):
            die("soundfont missing: %s from package %s" % (f, p))
    mma_lib = a.mma_lib
    prior_styles = []
    for r in genres:
        style, genre = r["style"], r["genre"]
        path = os.path.join(mma_lib, style + ".mma")
        if not os.path.isfile(path):
            die("mma style file missing: %s (mma_genres.csv row %s; mma changed?)" % (path, style))
        if genre == "skip":
            continue
        grooves = []
        with open(path, encoding="latin-1") as f:
            for line in f:
                m = re.match(r"\s*DefGroove\s+(\S+)", line, re.I)
                if m and not re.search(r"(intro|fill|break|end\d*$|end(sus|plus))", m.group(1), re.I):
                    grooves.append(m.group(1))
        if not grooves:
            die("no usable DefGroove in %s" % path)
        if genre == "-":
            prior_styles.append((style, grooves, r))
            continue
        for g in grooves[: (1 if small else len(grooves))]:
            add_render("genre", genre, style, g, r, fonts, a, items, convert, mma_jobs, tasks, ext, lic)

    # Animal calls: an explicit file list.
    for r in read_table(os.path.join(data, "animal_calls.csv"), ["package", "path", "label"]):
        if r["label"] in ("-", ""):
            continue
        add_file("animal", r["label"], r["package"], r["path"], variant_group(r["package"], r["path"]), 1 if small else 2)

    # Environmental sounds: regular expressions over package paths, checked by hand.
    for r in read_table(os.path.join(data, "effects_keywords.csv"), ["package", "regex", "label"]):
        rx = re.compile(r["regex"], re.I)
        hits = [p for p in package_files(ext, r["package"]) if rx.search(p)]
        if not hits:
            die("effects_keywords.csv: '%s' matches nothing in %s (package changed?)" % (r["regex"], r["package"]))
        for p in hits:
            if (r["package"], p) in used:
                continue
            add_file("environment", r["label"], r["package"], p, variant_group(r["package"], p), 2 if small else 6)

    # Prior pool: what no evaluation task uses, plus synthetic speech and General MIDI renders.
    for i, r in enumerate(read_table(os.path.join(data, "prior_sources.csv"),
                                     ["package", "regex", "label", "max_small", "max_full"])):
        rx = re.compile(r["regex"], re.I)
        hits = [p for p in package_files(ext, r["package"]) if rx.search(p) and (r["package"], p) not in used]
        if not hits:
            die("prior_sources.csv: '%s' matches nothing in %s" % (r["regex"], r["package"]))
        rng_for(a.seed, "prior", i).shuffle(hits)
        n = int(r["max_small"] if small else r["max_full"])
        crops = int(r["max_crops_small"] if small else r["max_crops_full"])
        for p in hits[:n]:
            add_file("prior", r["label"], r["package"], p, r["package"] + ":" + p, crops)
    n_tts = 24 if small else 320
    for k in range(n_tts):
        rng = rng_for(a.seed, "espeak", k)
        lang = ESPEAK_LANGS[k % len(ESPEAK_LANGS)]
        voice = "%s+%s" % (lang, rng.choice(ESPEAK_VARIANTS))
        words = []
        for _ in range(rng.randint(2, 5)):
            words.append(str(rng.randint(1, 99999)) if rng.random() < 0.7 else "%d.%d" % (rng.randint(1, 31), rng.randint(1, 12)))
        text = ", ".join(words) + rng.choice([".", "?", "!"])
        wav = "render/espeak/tts_%04d.wav" % k
        espeak_jobs.append((wav, voice, rng.randint(110, 230), rng.randint(10, 90), rng.randint(80, 160), text))
        stem = "audio/prior/espeak-ng/tts_%04d_%s" % (k, safe(lang))
        convert.append((stem, os.path.join(a.out, wav), 1, tasks["prior"]["crop_seconds"]))
        items.append((stem, "prior", "speech;synthetic", "espeak:%d" % k, "synthetic:espeak-ng",
                      "GPL-3+ (espeak-ng voice data)", ""))
    rng = rng_for(a.seed, "prior-styles")
    for style, grooves, r in prior_styles:
        for g in grooves[: (1 if small else 3)]:
            add_render("prior", "music;synthetic", style, g, r, fonts, a, items, convert, mma_jobs, tasks, ext, lic)

    os.makedirs(work, exist_ok=True)
    write_atomic(os.path.join(work, "convert.tsv"), tsv(convert))
    write_atomic(os.path.join(work, "render_mma.tsv"), tsv(mma_jobs))
    write_atomic(os.path.join(work, "render_espeak.tsv"), tsv(espeak_jobs))
    write_atomic(os.path.join(work, "items.tsv"), tsv(items))
    c = collections.Counter(i[1] for i in items)
    print("plan: %d items (%s); %d mma renders, %d espeak renders, %d conversions" % (
        len(items), ", ".join("%s %d" % (t, c[t]) for t in TASK_ORDER), len(mma_jobs), len(espeak_jobs), len(convert)))


def add_render(task, label, style, groove, row, fonts, a, items, convert, mma_jobs, tasks, ext, lic):
    rng = rng_for(a.seed, "mma", style, groove)
    tempo = rng.randint(int(row["tempo_lo"]), int(row["tempo_hi"]))
    transpose = rng.randint(-5, 6)
    font_pkg, font = fonts[rng.randrange(len(fonts))]
    if row["genre"] == "blues":
        prog = rng.choice(PROG_BLUES)
    elif row["genre"] == "jazz":
        prog = rng.choice(PROG_JAZZ)
    else:
        prog = rng.choice(PROG_POP)
    bars = max(4, math.ceil(float(tasks[task]["crop_seconds"]) * 1.2 * tempo / 60.0 / 3.0))
    name = safe("%s__%s__t%d_k%d_%s" % (style, groove, tempo, transpose, font_pkg.split("-")[0]))
    base = "render/mma/%s" % name
    lines = ["// build-benchmark render: style %s, groove %s, seed %s" % (style, groove, a.seed),
             "RndSeed %d" % rng.randint(1, 10 ** 6), "Tempo %d" % tempo, "Use stdlib/%s" % style,
             "Groove %s" % groove, "Transpose %d" % transpose]
    lines += ["%d %s" % (b + 1, prog[b % len(prog)]) for b in range(bars)]
    mma_jobs.append((base + ".mma", base + ".mid", base + ".wav", os.path.join(ext, font_pkg, font),
                     "\\n".join(lines)))
    sub = label.split(";")[0] if task != "prior" else "mma"
    stem = "audio/%s/%s/%s" % (task, safe(sub), name)
    convert.append((stem, os.path.join(a.out, base + ".wav"), 1, tasks[task]["crop_seconds"]))
    group = "mma:" + style if task == "genre" else "mma:%s:%s" % (style, groove)
    items.append((stem, task, label, group, "synthetic:mma/" + font_pkg, "GPL-2+ (mma styles); " + lic(font_pkg), ""))


# -------------------------------------------------------------------------------------------------- finish

def read_fp(path):
    """{'fp': [ints], 'seconds': float, 'md5': str} from a fingerprint file (fp empty when there was none)."""
    r = {"fp": [], "seconds": 0.0, "md5": None}
    try:
        with open(path) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k == "FINGERPRINT":
                    r["fp"] = [int(x) & 0xFFFFFFFF for x in v.split(",") if x]
                elif k == "SECONDS":
                    r["seconds"] = float(v)
                elif k == "MD5":
                    r["md5"] = v
    except OSError:
        pass
    return r


def ber(a, b, max_shift=3):
    best = 1.0
    for s in range(-max_shift, max_shift + 1):
        pairs = [(a[i], b[i + s]) for i in range(len(a)) if 0 <= i + s < len(b)]
        if len(pairs) < 8:
            continue
        bits = sum(bin(x ^ y).count("1") for x, y in pairs)
        best = min(best, bits / (32.0 * len(pairs)))
    return best



# Excerpts: a clip that is a piece of another recording (e.g. the first 1.4 s of a longer file shipped under a
# second name) has a fingerprint of another length, so the fingerprint comparison above misses it. The
# loudness envelope (log energy per 50 ms) of the shorter clip is slid along the longer one's; a window with a
# Pearson correlation of at least EXCERPT_MIN_ENV_CORR is then checked on the waveforms (normalised
# correlation at the best sample shift near that window). Compared: clips of one label whose first clip
# holds at least EXCERPT_MIN_SECONDS with some envelope structure (a flat envelope, e.g. steady noise, says
# nothing and is not compared).
EXCERPT_FRAME = 800               # samples per envelope frame (50 ms at 16 kHz)
EXCERPT_MIN_SECONDS = 0.5
EXCERPT_MIN_ENV_STD = 0.05        # log10 energy units (0.5 dB): below this the envelope is flat
EXCERPT_MIN_ENV_CORR = 0.95
EXCERPT_MIN_WAVE_CORR = 0.9       # measured: crickets2 vs the first 1.40 s of crickets1 correlate at 0.988
EXCERPT_WAVE_SAMPLES = 4000       # samples compared per waveform check (0.25 s from the middle of the clip)
EXCERPT_PHASES = (0, 200, 400, 600)  # sample phases of the shorter clip's envelope frames (see short_envelopes)
EXCERPT_FINE_FRAME = 100          # samples per frame of the fine envelope that narrows the waveform search
EXCERPT_FINE_HOP = 20             # its grid of shifts
EXCERPT_FINE_KEEP = 3             # best grid shifts whose neighbourhoods (one hop either side) are checked


def read_pcm16(path):
    """Mono 16-bit samples of a WAV file as a list of ints (None when unreadable or another format)."""
    import array
    import wave
    try:
        with wave.open(path, "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                return None
            data = array.array("h", w.readframes(w.getnframes()))
    except (OSError, EOFError, wave.Error):
        return None
    if sys.byteorder == "big":
        data.byteswap()
    return data


def envelope(samples):
    env = []
    for s in range(0, len(samples) - EXCERPT_FRAME + 1, EXCERPT_FRAME):
        seg = samples[s:s + EXCERPT_FRAME]
        e = sum(map(operator.mul, seg, seg)) / EXCERPT_FRAME
        env.append(math.log10(e + 1.0))
    return env


def std(v):
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


class Centred:
    """A sequence less its mean, with its sum of squares: the fixed side of a sliding Pearson correlation."""

    def __init__(self, v):
        mean = sum(v) / len(v)
        self.v = [x - mean for x in v]
        self.ss = sum(map(operator.mul, self.v, self.v))


class Prefix:
    """A sequence with prefix sums of its values and squares: any window's mean and variance in O(1)."""

    def __init__(self, v):
        self.v = v
        self.s1 = list(itertools.accumulate(v, initial=0))
        self.s2 = list(itertools.accumulate(map(operator.mul, v, v), initial=0))


def corr_at(c, p, o):
    """Pearson correlation of Centred c with the window p.v[o:o + len(c.v)] of Prefix p (0 for a flat window).
    c is centred, so the window's mean drops out of the cross term; the window's variance is two look-ups."""
    m = len(c.v)
    sab = sum(map(operator.mul, c.v, p.v[o:o + m]))
    sx = p.s1[o + m] - p.s1[o]
    sbb = (p.s2[o + m] - p.s2[o]) - sx * sx / m
    return sab / math.sqrt(c.ss * sbb) if c.ss > 0 and sbb > 1e-9 else 0.0


def fine_shifts(probe, region):
    """The shifts of `probe` inside `region` (both sample lists) worth a waveform check: every one within a
    hop of the EXCERPT_FINE_KEEP shifts, on a grid of EXCERPT_FINE_HOP samples, whose loudness envelope in
    frames of EXCERPT_FINE_FRAME samples correlates best with the probe's. A copy's fine envelope matches at
    its true shift, so this narrows 1601 waveform correlations to a few dozen without losing it."""
    f = EXCERPT_FINE_FRAME
    k = len(probe) // f
    last = len(region) - len(probe)
    if k < 4:
        return range(0, last + 1)
    pe = Centred([math.log10(sum(map(operator.mul, probe[t * f:(t + 1) * f], probe[t * f:(t + 1) * f])) / f + 1.0)
                  for t in range(k)])
    sq = list(itertools.accumulate(map(operator.mul, region, region), initial=0))
    scored = []
    for s in range(0, last + 1, EXCERPT_FINE_HOP):
        le = Prefix([math.log10((sq[s + (t + 1) * f] - sq[s + t * f]) / f + 1.0) for t in range(k)])
        scored.append((corr_at(pe, le, 0), s))
    scored.sort(reverse=True)
    keep = set()
    for _, s in scored[:EXCERPT_FINE_KEEP]:
        keep.update(range(max(0, s - EXCERPT_FINE_HOP), min(last, s + EXCERPT_FINE_HOP) + 1))
    return sorted(keep)


def short_envelopes(samples):
    """The envelopes of a clip that may be the excerpt, one per phase in EXCERPT_PHASES (the envelope of
    samples[p:]), each a Centred: a piece cut half a frame off the longer clip's frame grid has an envelope
    too smeared to correlate at EXCERPT_MIN_ENV_CORR, so the frames are tried at several phases."""
    return [(p, Centred(envelope(samples[p:]))) for p in EXCERPT_PHASES if len(samples) - p >= 2 * EXCERPT_FRAME]


def excerpt_of(short, long_, envs_s, env_l):
    """True when the samples `short` appear inside `long_` (same recording, possibly another gain). envs_s are
    the short clip's short_envelopes, env_l the long one's envelope as a Prefix. First the envelope window that
    correlates best over every phase (at least EXCERPT_MIN_ENV_CORR), then the waveforms near it: a piece of
    EXCERPT_WAVE_SAMPLES from the middle of `short` against `long_` at the shifts fine_shifts keeps within a
    frame of that window."""
    best, best_o, best_p = -1.0, 0, 0
    for p, env_s in envs_s:
        for o in range(0, len(env_l.v) - len(env_s.v) + 1):
            c = corr_at(env_s, env_l, o)
            if c > best:
                best, best_o, best_p = c, o, p
    if best < EXCERPT_MIN_ENV_CORR:
        return False
    n = min(EXCERPT_WAVE_SAMPLES, len(short))
    start = (len(short) - n) // 2
    probe = short[start:start + n]
    centre = best_o * EXCERPT_FRAME + start - best_p  # short[x] sits at long_[x - p + frame * o]
    lo, hi = max(0, centre - EXCERPT_FRAME), min(len(long_) - n, centre + EXCERPT_FRAME)
    if hi < lo:
        return False
    region = Prefix(long_[lo:hi + n])
    c = Centred(probe)
    return any(corr_at(c, region, s) >= EXCERPT_MIN_WAVE_CORR for s in fine_shifts(probe, region.v))


_EXCERPT_STATE = {}  # what find_excerpts' worker processes read (inherited by fork, never pickled)


def _excerpts_of_row(i):
    """The clips of i's label that clip i is an excerpt of (a worker's share of find_excerpts)."""
    clips, envs, keys = _EXCERPT_STATE["clips"], _EXCERPT_STATE["envs"], _EXCERPT_STATE["keys"]
    found = []
    for j in keys:
        if i == j or len(clips[i][1]) > len(clips[j][1]) or (len(clips[i][1]) == len(clips[j][1]) and i > j):
            continue
        if excerpt_of(clips[i][1], clips[j][1], envs[i][0], envs[j][1]):
            found.append((i, j))
    return found


def find_excerpts(clips, task="", jobs=1):
    """clips: {key: (label, samples)}. Returns [(short_key, long_key)] for every clip found inside another, in
    the order of the keys. Every pair of clips of one label is compared, in `jobs` processes (fork). Prints a
    line per label of more than 100 compared clips (the full build's 1400 prior speech clips take minutes)."""
    envs = {}
    for k, (label, samples) in clips.items():
        if samples is None or len(samples) < EXCERPT_MIN_SECONDS * 16000:
            continue
        env = envelope(samples)
        if len(env) >= 2 and std(env) >= EXCERPT_MIN_ENV_STD:
            envs[k] = (short_envelopes(samples), Prefix(env))
    by_label = collections.defaultdict(list)
    for k in envs:
        by_label[clips[k][0]].append(k)
    found = []
    for label, keys in by_label.items():
        t0 = time.time()
        _EXCERPT_STATE.update(clips=clips, envs=envs, keys=keys)
        if jobs > 1 and len(keys) >= 2 * jobs and "fork" in multiprocessing.get_all_start_methods():
            with multiprocessing.get_context("fork").Pool(jobs) as pool:
                rows = pool.map(_excerpts_of_row, keys, chunksize=8)
        else:
            rows = [_excerpts_of_row(i) for i in keys]
        _EXCERPT_STATE.clear()
        for r in rows:
            found.extend(r)
        if len(keys) > 100:
            print("excerpt search %s/%s: %d clips compared pairwise in %.0f s" % (task, label, len(keys), time.time() - t0),
                  flush=True)
    return found


def excerpt_search_sets(by_task_clips):
    """{task: {key: (label, samples)}} -> the sets find_excerpts searches: each task as it is (pairs within a
    label), plus one set holding the prior pool's effects and every clip of PRIOR_EFFECTS_CROSS_TASKS under a
    single label, so that a prior effect is compared with every animal and environment clip."""
    sets = dict(by_task_clips)
    cross = {k: ("effects", s) for k, (label, s) in by_task_clips.get("prior", {}).items()
             if "effects" in label.split(";")}
    for task in PRIOR_EFFECTS_CROSS_TASKS:
        cross.update((k, ("effects", s)) for k, (_, s) in by_task_clips.get(task, {}).items())
    sets["prior+" + "+".join(PRIOR_EFFECTS_CROSS_TASKS)] = cross
    return sets


class Union:
    def __init__(self):
        self.p = {}

    def find(self, x):
        self.p.setdefault(x, x)
        while self.p[x] != x:
            self.p[x] = self.p[self.p[x]]
            x = self.p[x]
        return x

    def join(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.p[max(ra, rb)] = min(ra, rb)


def finish(a):
    out, work, data = a.out, a.work, a.data
    tasks = {r["task"]: r for r in read_table(os.path.join(data, "tasks.csv"), ["task", "type", "splits"])}
    items = []
    with open(os.path.join(work, "items.tsv"), encoding="utf-8") as f:
        for line in f:
            stem, task, label, group, source, lic, hint = line.rstrip("\n").split("\t")
            items.append(dict(stem=stem, task=task, label=label, group=group, source=source, license=lic))
    # Clips produced by the conversions (a .list file per item: path and duration of each crop).
    failed = []
    for it in items:
        lst = os.path.join(out, it["stem"] + ".list")
        if not os.path.isfile(lst):
            die("conversion did not finish for %s (no %s); rerun the build" % (it["stem"], lst))
        with open(lst) as f:
            it["clips"] = [l.split("\t")[0] for l in f.read().splitlines() if l and not l.startswith("#")]
        if not it["clips"]:
            failed.append(it["stem"])
    items = [it for it in items if it["clips"]]
    # Duplicate recordings: identical converted audio (md5) or near-identical chromaprint fingerprints.
    uf = Union()
    by_md5, index = {}, collections.defaultdict(list)
    fps = {}
    secs = {}
    for n, it in enumerate(items):
        r = read_fp(os.path.join(work, "fp", it["stem"].replace("/", "__") + ".fp"))
        fps[n], secs[n], md5 = r["fp"], r["seconds"], r["md5"]
        if it["source"].startswith("synthetic"):
            continue  # renders are unique by construction (their seed is the group)
        if md5:
            if md5 in by_md5:
                uf.join(by_md5[md5], n)
            else:
                by_md5[md5] = n
        for v in set(x >> 12 for x in fps[n]):
            index[v].append(n)
    cand = collections.Counter()
    for v, ns in index.items():
        if len(ns) > 50:
            continue  # a value shared by very many clips (silence) says nothing
        for i in range(len(ns)):
            for j in range(i + 1, len(ns)):
                cand[(ns[i], ns[j])] += 1
    for (i, j), shared in cand.items():
        # Short clips were looped before fingerprinting, so only clips of about the same length compare.
        # Thresholds measured on this corpus: copies of one recording score under 0.03 (same length to 1%),
        # different utterances of one speaker looped to the same length score 0.08-0.2.
        si, sj = secs[i], secs[j]
        short = min(si, sj) < 3.5
        if short and not (0.98 <= si / max(sj, 1e-9) <= 1.02):
            continue
        if shared >= 2 and ber(fps[i], fps[j]) < (a.max_ber_short if short else a.max_ber):
            uf.join(i, j)
    # Excerpts (see find_excerpts), within each task.
    by_task_clips = collections.defaultdict(dict)
    for n, it in enumerate(items):
        if not it["source"].startswith("synthetic"):
            by_task_clips[it["task"]][n] = (it["label"], read_pcm16(os.path.join(out, it["clips"][0])))
    excerpts = 0
    for task, clips in excerpt_search_sets(by_task_clips).items():
        for i, j in find_excerpts(clips, task, a.jobs):
            if uf.find(i) != uf.find(j):
                excerpts += 1
            uf.join(i, j)
    print("excerpts of other recordings found: %d" % excerpts)
    clusters = collections.defaultdict(list)
    for n in range(len(items)):
        clusters[uf.find(n)].append(n)
    dropped = collections.Counter()
    keep = set()
    dup_log = []
    for members in clusters.values():
        members.sort(key=lambda n: (TASK_ORDER.index(items[n]["task"]), n))
        keep.add(members[0])
        for n in members[1:]:
            dropped[items[n]["task"]] += 1
            dup_log.append("%s\t%s\t%s" % (items[n]["stem"], items[members[0]]["stem"], items[n]["label"]))
    write_atomic(os.path.join(out, "duplicates.tsv"), "dropped\tkept\tlabel\n" + "\n".join(dup_log) + "\n")
    # A recording found in two groups of one task (two voice packs sharing a file) ties the groups together,
    # so that they land in the same split.
    groups = Union()
    for members in clusters.values():
        for n in members[1:]:
            if items[n]["task"] == items[members[0]]["task"]:
                groups.join(items[members[0]]["group"], items[n]["group"])
    items = [items[n] for n in sorted(keep)]
    for it in items:
        it["group"] = groups.find(it["group"])
    # Splits by group.
    by_task = collections.defaultdict(list)
    for it in items:
        by_task[it["task"]].append(it)
    for task, its in by_task.items():
        groups = sorted(set(it["group"] for it in its))
        split = {}
        if task == "emotion":
            rng_for(a.seed, "split", task).shuffle(groups)
            for k, g in enumerate(groups):
                split[g] = "test" if k < 3 else "val" if k < 5 else "train"
        elif task == "genre":
            per = collections.defaultdict(set)
            for it in its:
                per[it["label"]].add(it["group"])
            for label, gs in per.items():
                gs = sorted(gs)
                if len(gs) < 3:
                    die("genre '%s' has %d style files; needs 3 for train/val/test" % (label, len(gs)), 3)
                rng_for(a.seed, "split", task, label).shuffle(gs)
                n_test, n_val = max(1, round(0.2 * len(gs))), max(1, round(0.1 * len(gs)))
                for k, g in enumerate(gs):
                    split[g] = "test" if k < n_test else "val" if k < n_test + n_val else "train"
        elif task in ("animal", "environment"):
            per = collections.defaultdict(set)
            for it in its:
                per[it["label"]].add(it["group"])
            for label in sorted(per):
                gs = sorted(per[label])
                rng_for(a.seed, "split", task, label).shuffle(gs)
                for k, g in enumerate(gs):
                    split[g] = str(k % FOLDS + 1)
        else:
            for g in groups:
                u = unit_hash(a.seed, "split", task, g)
                split[g] = "test" if u < 0.1 else "val" if u < 0.2 else "train"
        for it in its:
            it["split"] = split[it["group"]]
    # Manifests.
    counts = collections.defaultdict(collections.Counter)  # (task, label) -> split -> clips
    manifest_rows = 0  # audio files listed (a clip with two labels is one row)
    for task in TASK_ORDER:
        rows = []
        for it in by_task.get(task, []):
            for c in it["clips"]:
                rows.append([c, it["label"], it["split"], it["group"], it["source"], it["license"]])
                for l in it["label"].split(";"):
                    counts[(task, l)][it["split"]] += 1
        rows.sort()
        manifest_rows += len(rows)
        buf = []
        w = csv.writer(_Sink(buf), lineterminator="\n")
        w.writerow(["path", "label", "split", "group", "source", "license"])
        w.writerows(rows)
        write_atomic(os.path.join(out, task + ".csv"), "".join(buf))
    buf = []
    w = csv.writer(_Sink(buf), lineterminator="\n")
    w.writerow(["task", "manifest", "type", "splits"])
    for t in TASK_ORDER:
        w.writerow([t, t + ".csv", tasks[t]["type"], tasks[t]["splits"]])
    write_atomic(os.path.join(out, "tasks.csv"), "".join(buf))
    buf = []
    w = csv.writer(_Sink(buf), lineterminator="\n")
    w.writerow(["task", "label", "count"])
    for (t, l) in sorted(counts, key=lambda k: (TASK_ORDER.index(k[0]), k[1])):
        w.writerow([t, l, sum(counts[(t, l)].values())])
    write_atomic(os.path.join(out, "counts.csv"), "".join(buf))
    # Report and checks.
    exp_path = os.path.join(data, "expected_counts_%s.csv" % a.size)
    expected = {}
    if a.seed != 0:
        print("note: %s holds seed 0's counts; seed %d samples differently, so counts are not compared"
              % (exp_path, a.seed))
    elif os.path.isfile(exp_path):
        for r in read_table(exp_path, ["task", "label", "count"]):
            expected[(r["task"], r["label"])] = int(r["count"])
    else:
        print("note: no %s; counts are not compared" % exp_path)
    min_key = "min_per_class_" + a.size
    errors, diffs = [], 0
    print("%-12s %-18s %6s %6s %6s %6s %6s %6s %6s  %8s" % ("task", "label", "train", "val", "test", "f1..", "", "", "",
                                                           "expected"))
    for t in TASK_ORDER:
        labels = sorted(l for (tt, l) in counts if tt == t)
        if not labels:
            errors.append("task %s has no clips at all" % t)
            continue
        for l in labels:
            c = counts[(t, l)]
            total = sum(c.values())
            cols = ["train", "val", "test"] if "fold" not in tasks[t]["splits"] else [str(k) for k in range(1, FOLDS + 1)]
            e = expected.get((t, l))
            mark = "" if e is None else ("ok" if e == total else "DIFFERS(%d)" % e)
            if e is not None and e != total:
                diffs += 1
            print("%-12s %-18s %s  total %5d  %s" % (t, l, " ".join("%s=%-4d" % (s, c[s]) for s in cols), total, mark))
            for s in cols:
                if c[s] == 0 and t != "prior":
                    errors.append("task %s: class '%s' has no clip in split/fold %s" % (t, l, s))
        smallest = min(labels, key=lambda l: sum(counts[(t, l)].values()))
        n = sum(counts[(t, smallest)].values())
        need = int(tasks[t][min_key])
        if n < need:
            errors.append("task %s: smallest class '%s' has %d clips, under the stated minimum %d" % (t, smallest, n, need))
    for (t, l) in expected:
        if (t, l) not in counts:
            print("expected class missing: %s/%s" % (t, l))
            diffs += 1
    print("duplicates removed: %s; unreadable or silent sources skipped: %d" % (
        ", ".join("%s %d" % (t, dropped[t]) for t in TASK_ORDER if dropped[t]) or "none", len(failed)))
    if diffs:
        print("WARNING: %d class counts differ from %s (package or tool changed? review, then copy counts.csv "
              "there)" % (diffs, exp_path))
    # "clips": manifest rows (audio files); "clip_labels": (clip, label) pairs, as the per-class counts count
    # them (a prior clip with two labels counts twice there).
    info = {"size": a.size, "seed": a.seed, "clips": manifest_rows,
            "clip_labels": sum(sum(c.values()) for (t, l), c in counts.items())}
    write_atomic(os.path.join(out, "build_summary.json"), json.dumps(info, indent=1) + "\n")
    if errors:
        for e in errors:
            print("build-benchmark: FAILED CHECK: " + e, file=sys.stderr)
        sys.exit(3)


class _Sink:
    def __init__(self, buf):
        self.buf = buf

    def write(self, s):
        self.buf.append(s)


def unzip_audio(archive, dest):
    """Unpacks the audio members of `archive` (AUDIO_EXT) under `dest`, keeping their paths. A member whose
    path is absolute or climbs out of `dest` stops the build naming it; each file is written whole or not at
    all. Returns the number of files written."""
    n = 0
    try:
        z = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        die("%s: not a readable zip archive (%s)" % (archive, e))
    with z:
        members = []  # every name is checked before anything is written
        for info in z.infolist():
            if info.is_dir() or not AUDIO_EXT.search(info.filename):
                continue
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
                die("%s: member '%s' would be written outside %s" % (archive, name, dest))
            members.append((info, parts))
        for info, parts in members:
            target = os.path.join(dest, *parts)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = target + ".tmp"
            try:
                with z.open(info) as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
            except (OSError, zipfile.BadZipFile, EOFError) as e:
                die("%s: member '%s' cannot be unpacked (%s)" % (archive, info.filename, e))
            os.replace(tmp, target)
            n += 1
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("unzip")
    u.add_argument("--archive", required=True)
    u.add_argument("--dest", required=True)
    for name in ("plan", "finish"):
        p = sub.add_parser(name)
        p.add_argument("--size", choices=["small", "full"], required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--data", required=True, help="data/benchmark folder with the label tables")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--work", required=True, help="folder for job lists and fingerprints")
        p.add_argument("--ext", help="folder holding the unpacked packages")
        p.add_argument("--mma-lib", default="/usr/share/mma/lib/stdlib")
        p.add_argument("--max-ber", type=float, default=0.15, help="fingerprint bit error rate under which two "
                       "clips of 3.5 s or more count as one recording")
        p.add_argument("--max-ber-short", type=float, default=0.05, help="the same for shorter clips, which are "
                       "looped to 6 s before fingerprinting")
        p.add_argument("--jobs", type=int, default=1, help="processes for the excerpt search (finish)")
    a = ap.parse_args()
    if a.cmd == "unzip":
        n = unzip_audio(a.archive, a.dest)
        if n == 0:
            die("%s: no audio members" % a.archive)
        print("unzip: %d audio files from %s" % (n, a.archive))
        return
    if a.jobs < 1:
        die("--jobs must be at least 1, got %d" % a.jobs)
    if a.cmd == "plan":
        if not a.ext:
            die("plan needs --ext")
        plan(a)
    else:
        finish(a)


if __name__ == "__main__":
    main()
