// Audio datasets as lists of files with labels, read from three kinds of source:
//   - a folder tree with one sub-folder per class (GTZAN: genres/blues/blues.00000.wav), or a flat folder whose
//     labels come from the file names through a regular expression (CREMA-D: 1001_DFA_ANG_XX.wav);
//   - a CSV or TSV manifest: a path column, optional label column(s) (several labels per clip either
//     ';'-separated in one cell or spread over several label columns), optional split or fold column. The
//     project's own header `path,label,split,group,source,license` is read exactly; ESC-50
//     (`filename,fold,target,category`) and AudioSet-style files (`# YTID, start_seconds, end_seconds,
//     positive_labels`, comma-separated labels in quotes, the path column or a path template chosen by flag)
//     work through the column options below. Paths are relative to the manifest's folder (or audio_dir);
//   - a plain list of files, one per line, for unlabelled audio ('#' starts a comment).
// Plus deterministic train/validation splits (by split/fold value, or by fraction, keeping each group on one
// side). Not decoding (audio/decode.h) and not batching (audio/loader.h).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sonar::audio {

// Manifests and file lists are read whole, so their size is checked first (docs/reliability.md).
constexpr uintmax_t kMaxManifestBytes = uintmax_t{1} << 30;  // 1 GiB (AudioSet's 2M-row list: a fraction)
constexpr size_t kMaxManifestColumns = 1024;                 // fields per row

struct AudioItem {
  std::string path;                 // resolved: absolute, or relative to the working directory
  std::vector<std::string> labels;  // class names; empty for unlabelled audio
  std::string split;                // split or fold value ("" when the source has none)
  std::string group;                // leakage unit (same speaker/source); "" when unknown
  std::map<std::string, std::string> extra;  // every other manifest column, by header name
};

struct Dataset {
  std::vector<AudioItem> items;
  std::vector<std::string> classes;  // sorted label vocabulary over all items
  std::string origin;                // where it was read from (for messages)

  int64_t size() const { return static_cast<int64_t>(items.size()); }
  int64_t num_classes() const { return static_cast<int64_t>(classes.size()); }
  bool multi_label() const;          // some item has more than one label
  int64_t class_index(const std::string& label) const;  // -1 if unknown
  // float32 [C] multi-hot target of item i (all zeros for unlabelled items).
  Tensor target(int64_t i) const;
  // Index of item i's single label, or -1 when it has none or several.
  int64_t label_index(int64_t i) const;
  // Recomputes `classes` from the items (after editing items by hand).
  void rebuild_classes();
  // A dataset of the items at `indices`, keeping this dataset's class list (so targets line up).
  Dataset subset(const std::vector<int64_t>& indices) const;
};

const std::vector<std::string>& audio_extensions();  // ".wav", ".flac", ".ogg", ..., ".npy"
bool is_audio_path(const std::string& path);

struct FolderOptions {
  // Empty: the first path component below the root is the class (files directly in the root are
  // unlabelled). Otherwise an ECMAScript regex searched in the file name; capture group 1 (or the whole
  // match) is the label, and files that do not match are unlabelled.
  std::string label_regex;
  bool recursive = true;  // look through sub-folders at any depth
};
Dataset read_folder(const std::string& root, const FolderOptions& opts = {});

struct ManifestOptions {
  char delimiter = 0;        // 0: tab for .tsv (or a header with tabs and no commas), else ','
  std::string path_column;   // "": the first of path, filepath, file_path, filename, file, audio, wav, YTID
  // Builds the path from the path column's value: "{}" is replaced by it ("audio/{}.wav", "{}.flac"). "" = as is.
  std::string path_template;
  // "": the first of label, labels, category, class, positive_labels, genre, emotion, target (one column).
  // Several names: each non-empty cell of each column adds labels. "-" means no labels at all.
  std::vector<std::string> label_columns;
  std::string label_separators;  // characters splitting one cell into several labels; "" = ";" (also "," for
                                 // a column named positive_labels)
  std::string split_column;      // "": split, fold, set, subset (first present); "-" for none
  std::string group_column;      // "": group, speaker, source_id (first present); "-" for none
  std::string audio_dir;         // folder that relative paths are resolved against; "" = the manifest's folder
};
Dataset read_manifest(const std::string& path, const ManifestOptions& opts = {});
// The same for manifest text already in memory; `path` labels messages and anchors relative paths.
Dataset parse_manifest(std::string text, const std::string& path, const ManifestOptions& opts = {});

// One path per line, relative to the list's folder (or audio_dir); blank lines and '#' comments skipped.
Dataset read_file_list(const std::string& path, const std::string& audio_dir = "");
Dataset parse_file_list(const std::string& text, const std::string& path, const std::string& audio_dir = "");

// A folder -> read_folder, .csv/.tsv -> read_manifest, anything else -> read_file_list.
Dataset read_source(const std::string& source, const FolderOptions& folder = {}, const ManifestOptions& manifest = {});

// The items whose split/fold value is one of `values` (compared as text: "1" matches fold 1).
Dataset select_split(const Dataset& ds, const std::vector<std::string>& values);
// Everything except those items.
Dataset exclude_split(const Dataset& ds, const std::vector<std::string>& values);

struct TrainValSplit {
  Dataset train, val;
};
// One row of parse_csv.
struct CsvRow {
  std::vector<std::string> fields;
  int64_t line = 0;      // 1-based line where the row starts
  bool comment = false;  // the line started with '#'
  std::string raw;       // comment text after '#'
};
// The CSV reader of the manifests, for any small CSV/TSV text: RFC 4180 with conveniences (quoted fields may
// hold delimiters, doubled quotes and newlines; spaces around unquoted fields are trimmed, as AudioSet writes
// ", "; CR LF and LF both end rows; blank lines are skipped; a line starting with '#' is a comment row).
// Throws naming the line on an unterminated quote or more than kMaxManifestColumns fields.
std::vector<CsvRow> parse_csv(const std::string& text, char delim);

// The leakage units of `items` (indices into ds.items): one per non-empty group, in order of first
// appearance, holding that group's items in order; one per ungrouped item, in its place. Splits that keep a
// group on one side deal these units.
std::vector<std::vector<int64_t>> group_units(const Dataset& ds, const std::vector<int64_t>& items);
// The same over every item of ds.
std::vector<std::vector<int64_t>> group_units(const Dataset& ds);

// A seeded random split holding out about `val_fraction` of the items. Items sharing a non-empty group go to
// the same side (no leakage). Same seed, same split, whatever the thread count or platform.
TrainValSplit split_by_fraction(const Dataset& ds, double val_fraction, uint64_t seed);
// Validation = the items whose split/fold is in `val_values`, training = the rest.
TrainValSplit split_by_value(const Dataset& ds, const std::vector<std::string>& val_values);

// A seeded permutation of [0, n) (Fisher-Yates over sonar::Generator).
std::vector<int64_t> shuffled_indices(int64_t n, uint64_t seed);

}  // namespace sonar::audio
