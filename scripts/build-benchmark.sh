#!/usr/bin/env bash
# Builds SONAR's offline multi-domain audio benchmark from audio that Debian 12 packages ship: speech affect
# (hedgewars voice packs), music genre (mma grooves rendered with General MIDI soundfonts), animal calls and
# environmental sounds (educational and game packages), and a prior pool (speech prompts in many languages,
# game music, drum kits, effects, espeak-ng speech and General MIDI renders). Output: 16 kHz mono 16-bit WAV
# files and one CSV manifest per task (path,label,split,group,source,license), described in docs/corpus.md.
#
# It is not the synthetic corpus (`sonar synth-corpus`), and it never installs the data packages: they are
# fetched with `apt-get download` and unpacked with dpkg-deb into OUT/cache. Tools (sox, fluidsynth, mma,
# espeak-ng, fpcalc) are installed with apt-get when missing. Label tables are data files in data/benchmark/,
# reviewed by hand. Every stage is idempotent: finished files are skipped, so a killed run resumes.
#
# usage: scripts/build-benchmark.sh --out DIR [--size small|full] [--seed N] [--jobs N] [--allow-changed]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
DATA="$repo/data/benchmark"
SIZE=small
SEED=0
JOBS=1
OUT=""
ALLOW_CHANGED=0

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="${2:?--out needs a folder}"; shift 2 ;;
    --size) SIZE="${2:?--size needs small or full}"; shift 2 ;;
    --seed) SEED="${2:?--seed needs a number}"; shift 2 ;;
    --jobs) JOBS="${2:?--jobs needs a number}"; shift 2 ;;
    --allow-changed) ALLOW_CHANGED=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-benchmark: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "build-benchmark: --out DIR is required" >&2; exit 2; }
case "$SIZE" in small|full) ;; *) echo "build-benchmark: --size must be small or full, not '$SIZE'" >&2; exit 2 ;; esac
[[ "$SEED" =~ ^[0-9]+$ ]] || { echo "build-benchmark: --seed must be a non-negative integer" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "build-benchmark: --jobs must be a positive integer" >&2; exit 2; }
case "$OUT" in "$repo"|"$repo"/*) case "$OUT" in "$repo"/corpus|"$repo"/corpus/*) ;; *)
  echo "build-benchmark: --out must lie outside the repository (or under its git-ignored corpus/)" >&2; exit 2 ;; esac ;; esac
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
CACHE="$OUT/cache"          # shared by every size and seed: fetched .deb files and their unpacked audio
STAMPS="$OUT/.stamps"
BUILD="$OUT/$SIZE-seed$SEED"  # one build: renders, audio, manifests
WORK="$BUILD/work"
LOG="$BUILD/build.log"
mkdir -p "$CACHE/debs" "$CACHE/ext" "$STAMPS" "$BUILD/render/mma" "$BUILD/render/espeak" "$WORK/fp"
export BUILD WORK LOG
T0=$(date +%s)
say() { printf '[%5ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
fail() { echo "build-benchmark: error: $*" >&2; exit 1; }

# ---- 1. disk space, before anything is installed or fetched -----------------------------------------
need_mb=$([ "$SIZE" = small ] && echo 8500 || echo 11000)  # 0ad-data alone: 1.4 GB .deb, 3.3 GB zip while unpacking
have_cache_mb=$(du -sm "$CACHE" 2>/dev/null | cut -f1)
avail_mb=$(df -Pm "$OUT" | awk 'NR==2 {print $4}')
if [ $(( avail_mb + have_cache_mb )) -lt "$need_mb" ]; then
  fail "not enough disk space under $OUT: the $SIZE build needs about $need_mb MB (cache $have_cache_mb MB already there), $avail_mb MB free"
fi
say "disk: $avail_mb MB free, $SIZE build needs about $need_mb MB in total (cache holds $have_cache_mb MB)"

# ---- 2. tools ----------------------------------------------------------------------------------------------
declare -A TOOL_PKG=([sox]=sox [soxi]=sox [fluidsynth]=fluidsynth [mma]=mma [espeak-ng]=espeak-ng
                     [fpcalc]=libchromaprint-tools [dpkg-deb]=dpkg [apt-get]=apt [python3]=python3)
missing=()
for t in "${!TOOL_PKG[@]}"; do command -v "$t" >/dev/null 2>&1 || missing+=("${TOOL_PKG[$t]}"); done
dpkg-query -W -f='${Status}' libsox-fmt-mp3 2>/dev/null | grep -q "install ok installed" || missing+=(libsox-fmt-mp3)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  say "installing tools: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq >>"$LOG" 2>&1 || fail "apt-get update failed (see $LOG)"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 \
    || fail "could not install ${missing[*]} (see $LOG)"
fi
for t in "${!TOOL_PKG[@]}"; do command -v "$t" >/dev/null 2>&1 || fail "tool '$t' (package ${TOOL_PKG[$t]}) is still missing"; done
# The expected counts were made with the tool versions in tools.csv; another version may render or decode
# differently, so it is named (a warning, not an error: the count comparison at the end shows the effect).
while IFS=, read -r tpkg tver _; do
  [ "$tpkg" = package ] && continue
  got=$(dpkg-query -W -f='${Version}' "$tpkg" 2>/dev/null || true)
  [ -n "$got" ] || fail "tool package '$tpkg' is not installed"
  [ "$got" = "$tver" ] || echo "warning: tool package '$tpkg' is version $got; data/benchmark/tools.csv expects $tver (renders or conversions may differ)" >&2
done < "$DATA/tools.csv"
MMA_LIB=/usr/share/mma/lib/stdlib
[ -d "$MMA_LIB" ] || fail "mma's style library $MMA_LIB is missing (package mma changed?)"

# ---- 3. fetch and unpack the data packages -----------------------------------------------------------------
mapfile -t PKG_ROWS < <(python3 -c '
import csv, sys
for r in csv.DictReader(open(sys.argv[1], newline="")): print(r["package"] + "\t" + r["version"] + "\t" + (r.get("archive") or ""))' "$DATA/packages.csv")
apt_updated=0
for row in "${PKG_ROWS[@]}"; do
  IFS=$'\t' read -r pkg ver archive <<< "$row"
  stamp="$STAMPS/extract.$pkg"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$ver" ] && [ -d "$CACHE/ext/$pkg" ]; then continue; fi
  deb=$(ls "$CACHE/debs/${pkg}_"*.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    if [ "$apt_updated" = 0 ] && ! apt-cache policy "$pkg" 2>/dev/null | grep -q Candidate; then
      apt-get update -qq >>"$LOG" 2>&1 || true; apt_updated=1
    fi
    cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [ -n "$cand" ] && [ "$cand" != "(none)" ] || fail "package '$pkg' is missing from the archive (expected version $ver; see data/benchmark/packages.csv)"
    if [ "$cand" != "$ver" ]; then
      [ "$ALLOW_CHANGED" = 1 ] || fail "package '$pkg' changed: the label tables were reviewed against $ver, the archive has $cand. Review data/benchmark/ against it, or pass --allow-changed"
      echo "warning: package '$pkg' is $cand, tables were reviewed against $ver" >&2
    fi
    say "fetching $pkg $cand"
    (cd "$CACHE/debs" && apt-get download -q "$pkg" >>"$LOG" 2>&1) || fail "apt-get download $pkg failed (see $LOG)"
    deb=$(ls "$CACHE/debs/${pkg}_"*.deb | head -1)
  fi
  got=$(dpkg-deb -f "$deb" Version)
  if [ "$got" != "$ver" ]; then
    [ "$ALLOW_CHANGED" = 1 ] || fail "package '$pkg' in $deb is version $got, the label tables were reviewed against $ver (pass --allow-changed to build anyway)"
  fi
  say "unpacking $pkg $got"
  rm -rf "$CACHE/ext/$pkg.tmp"; mkdir -p "$CACHE/ext/$pkg.tmp"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$CACHE/ext/$pkg.tmp" --wildcards \
    '*.ogg' '*.wav' '*.mp3' '*.flac' '*.sf2' '*/copyright' ${archive:+"./$archive"} 2>>"$LOG" || true
  if [ -n "$archive" ]; then
    # Audio kept inside a zip (packages.csv's archive column): its audio members replace the zip, at
    # ARCHIVE/member, so a source path still names where the sound came from.
    zip="$CACHE/ext/$pkg.tmp/$archive"
    [ -f "$zip" ] || fail "package '$pkg' has no $archive (data/benchmark/packages.csv's archive column)"
    python3 "$here/benchmark/bench.py" unzip --archive "$zip" --dest "$zip.members" >>"$LOG" \
      || fail "could not unpack the audio of $archive from $pkg (see above)"
    rm -f "$zip"; mv "$zip.members" "$zip"
  fi
  [ -n "$(find "$CACHE/ext/$pkg.tmp" -type f | head -1)" ] || fail "nothing unpacked from $deb"
  rm -rf "$CACHE/ext/$pkg"; mv "$CACHE/ext/$pkg.tmp" "$CACHE/ext/$pkg"
  echo "$ver" > "$stamp"
done

# ---- 4. plan -----------------------------------------------------------------------------------------------
python3 "$here/benchmark/bench.py" plan --size "$SIZE" --seed "$SEED" --data "$DATA" --out "$BUILD" --work "$WORK" \
  --ext "$CACHE/ext" --mma-lib "$MMA_LIB" || fail "planning failed"

# run_jobs LABEL FUNCTION FILE: runs FUNCTION on every line of FILE with $JOBS workers, in chunks, with progress.
run_jobs() {
  local label=$1 fn=$2 file=$3 total done=0 chunk=40 start t
  total=$(wc -l < "$file")
  [ "$total" -gt 0 ] || return 0
  start=$(date +%s)
  while [ $done -lt "$total" ]; do
    sed -n "$((done + 1)),$((done + chunk))p" "$file" | xargs -d '\n' -r -n 1 -P "$JOBS" bash -c "$fn \"\$1\"" _ \
      || fail "$label: a job failed (see $LOG)"
    done=$(( done + chunk > total ? total : done + chunk ))
    t=$(( $(date +%s) - start ))
    say "$label: $done/$total ($(( 100 * done / total ))%), ${t}s elapsed, about $(( t * (total - done) / done ))s left"
  done
}

render_mma() {  # mma-file mid wav soundfont text
  IFS=$'\t' read -r mma mid wav sf text <<< "$1"
  [ -f "$BUILD/$wav" ] && return 0
  printf '%b\n' "$text" > "$BUILD/$mma"
  (cd "$BUILD" && mma -f "$mid" "$mma" >>"$LOG" 2>&1) || { echo "mma failed on $BUILD/$mma" >>"$LOG"; return 1; }
  fluidsynth -ni -q -g 0.5 -r 22050 -T wav -F "$BUILD/$wav.tmp" "$sf" "$BUILD/$mid" >>"$LOG" 2>&1 \
    || { echo "fluidsynth failed on $BUILD/$mid" >>"$LOG"; rm -f "$BUILD/$wav.tmp"; return 1; }
  mv "$BUILD/$wav.tmp" "$BUILD/$wav"
}

render_espeak() {  # wav voice speed pitch amplitude text
  IFS=$'\t' read -r wav voice speed pitch amp text <<< "$1"
  [ -f "$BUILD/$wav" ] && return 0
  espeak-ng -v "$voice" -s "$speed" -p "$pitch" -a "$amp" -w "$BUILD/$wav.tmp" "$text" >>"$LOG" 2>&1 \
    || { echo "espeak-ng failed: $voice '$text'" >>"$LOG"; rm -f "$BUILD/$wav.tmp"; return 1; }
  mv "$BUILD/$wav.tmp" "$BUILD/$wav"
}

# convert: source -> 16 kHz mono 16-bit; sources longer than 1.5 crops become up to max_crops consecutive crops;
# silent crops (peak under 0.003) and sources under 0.1 s are dropped. Writes STEM.list (clip path and duration per line) last, as the job's done mark.
convert_one() {  # stem src max_crops crop_seconds
  IFS=$'\t' read -r stem src max_crops crop <<< "$1"
  local dst="$BUILD/$stem" full n k off peak list=""
  [ -f "$dst.list" ] && return 0
  mkdir -p "$(dirname "$dst")"
  full="$dst.full.tmp.wav"
  if ! sox -q "$src" -b 16 -e signed-integer "$full" remix - rate -v 16k >>"$LOG" 2>&1; then
    echo "convert: cannot decode $src" >>"$LOG"; rm -f "$full"; echo "# unreadable: $src" > "$dst.list"; return 0
  fi
  dur=$(soxi -D "$full")
  n=$(awk -v d="$dur" -v c="$crop" -v m="$max_crops" 'BEGIN { if (d <= 1.5 * c) print 0; else { k = int(d / c); print (k < m ? k : m) } }')
  if [ "$n" = 0 ]; then
    if awk -v d="$dur" 'BEGIN { exit !(d >= 0.1) }'; then
      peak=$(sox "$full" -n stat 2>&1 | awk '/Maximum amplitude/ {print $3}')
      if awk -v p="$peak" 'BEGIN { exit !(p >= 0.003) }'; then
        mv "$full" "$dst.wav"; list="${stem}.wav	$dur"
      fi
    fi
  else
    for ((k = 0; k < n; k++)); do
      off=$(awk -v k="$k" -v c="$crop" 'BEGIN { print k * c }')
      sox -q "$full" "$dst.c$k.tmp.wav" trim "$off" "$crop" >>"$LOG" 2>&1 || continue
      peak=$(sox "$dst.c$k.tmp.wav" -n stat 2>&1 | awk '/Maximum amplitude/ {print $3}')
      if awk -v p="$peak" 'BEGIN { exit !(p >= 0.003) }'; then
        mv "$dst.c$k.tmp.wav" "${dst}_c$k.wav"; list="$list${list:+
}${stem}_c$k.wav	$crop"
      else
        rm -f "$dst.c$k.tmp.wav"
      fi
    done
  fi
  rm -f "$full"
  printf '%s\n' "${list:-# silent or too short: $src}" > "$dst.list.tmp" && mv "$dst.list.tmp" "$dst.list"
}

# fingerprint: chromaprint of the item's first clip (looped to 6 s when shorter than 3.5 s, since chromaprint
# needs about 3 s), its length and the md5 of the file, for finding the same recording in two places.
fingerprint_one() {  # stem
  local stem=$1 f clip dur src reps
  f="$WORK/fp/${stem//\//__}.fp"
  [ -f "$f" ] && return 0
  clip=$(grep -v '^#' "$BUILD/$stem.list" | head -1 | cut -f1)
  if [ -z "$clip" ]; then : > "$f"; return 0; fi
  src="$BUILD/$clip"
  dur=$(soxi -D "$src")
  reps=$(awk -v d="$dur" 'BEGIN { r = (d < 3.5) ? int(6 / d) : 0; print (r > 60 ? 60 : r) }')
  if [ "$reps" -gt 0 ]; then
    sox -q "$src" "$f.loop.wav" repeat "$reps" >>"$LOG" 2>&1 && src="$f.loop.wav"
  fi
  { fpcalc -raw -length 30 "$src" 2>/dev/null | grep FINGERPRINT || true; echo "SECONDS=$dur"
    echo "MD5=$(md5sum < "$BUILD/$clip" | cut -d' ' -f1)"; } > "$f.tmp"
  rm -f "$f.loop.wav"
  mv "$f.tmp" "$f"
}
export -f render_mma render_espeak convert_one fingerprint_one

# ---- 5. render, convert, fingerprint -----------------------------------------------------------------------
run_jobs "render mma+fluidsynth" render_mma "$WORK/render_mma.tsv"
run_jobs "render espeak-ng" render_espeak "$WORK/render_espeak.tsv"
run_jobs "convert to 16 kHz mono" convert_one "$WORK/convert.tsv"
cut -f1 "$WORK/items.tsv" | grep -v '^audio/genre/' > "$WORK/fingerprint.txt" || true
run_jobs "fingerprint" fingerprint_one "$WORK/fingerprint.txt"

# ---- 6. dedupe, splits, manifests, counts and checks ---------------------------------------------------------
{
  echo "size=$SIZE seed=$SEED"
  sox --version 2>&1 | head -1; fluidsynth --version 2>/dev/null | head -1; espeak-ng --version | head -1
  fpcalc -version 2>&1 | head -1; dpkg-query -W mma
} > "$BUILD/tools.txt"
python3 "$here/benchmark/bench.py" finish --size "$SIZE" --seed "$SEED" --data "$DATA" --out "$BUILD" --work "$WORK" \
  --jobs "$JOBS" || { rc=$?; echo "build-benchmark: checks failed (exit $rc); manifests were written, see above" >&2; exit "$rc"; }
du_mb=$(du -sm "$BUILD/audio" | cut -f1)
say "done: manifests in $BUILD (emotion.csv genre.csv animal.csv environment.csv prior.csv tasks.csv), audio $du_mb MB"
