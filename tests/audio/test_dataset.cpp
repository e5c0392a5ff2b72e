// Tests of audio/dataset: the corpus builder's manifest header, ESC-50, AudioSet-style and TSV manifests,
// CSV quoting, class-folder trees (GTZAN) and file-name labels (CREMA-D), file lists, manifest errors, and
// deterministic splits by value and by fraction (groups kept whole). No audio is decoded here.
#include <gtest/gtest.h>

#include <filesystem>
#include <set>

#include "audio/dataset.h"
#include "audio_test_util.h"
#include "tests/test_util.h"

using namespace sonar;
using namespace sonar::audio;
using sonar::audio::test_util::TempDir;
using sonar::audio::test_util::write_bytes;
namespace fs = std::filesystem;

namespace {

using testutil::expect_error;

std::string norm(const std::string& p) { return fs::path(p).lexically_normal().string(); }

void touch(const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  write_bytes(path, "");
}

}  // namespace

TEST(Manifest, CorpusBuilderHeader) {
  TempDir dir;
  write_bytes(dir / "music.csv",
              "path,label,split,group,source,license\n"
              "music/chord/c0.wav,chord,train,g1,synth,CC0\n"
              "music/chord/c1.wav,chord,train,g1,synth,CC0\n"
              "music/tone/t0.wav,tone,val,g2,synth,CC0\n"
              "prior/p0.wav,birds;noise,test,,synth,CC0\n");
  Dataset d = read_manifest(dir / "music.csv");
  ASSERT_EQ(d.size(), 4);
  EXPECT_EQ(d.items[0].path, norm(dir / "music/chord/c0.wav"));  // relative to the manifest
  EXPECT_EQ(d.items[0].labels, (std::vector<std::string>{"chord"}));
  EXPECT_EQ(d.items[0].split, "train");
  EXPECT_EQ(d.items[0].group, "g1");
  EXPECT_EQ(d.items[0].extra.at("source"), "synth");
  EXPECT_EQ(d.items[0].extra.at("license"), "CC0");
  EXPECT_EQ(d.items[3].labels, (std::vector<std::string>{"birds", "noise"}));
  EXPECT_EQ(d.classes, (std::vector<std::string>{"birds", "chord", "noise", "tone"}));
  EXPECT_TRUE(d.multi_label());
  EXPECT_EQ(d.target(3).to_vector<float>(), (std::vector<float>{1, 0, 1, 0}));
  EXPECT_EQ(d.target(2).to_vector<float>(), (std::vector<float>{0, 0, 0, 1}));
  EXPECT_EQ(d.label_index(2), 3);
  EXPECT_EQ(d.label_index(3), -1);  // several labels
  EXPECT_EQ(select_split(d, {"val"}).size(), 1);
  auto tv = split_by_value(d, {"val", "test"});
  EXPECT_EQ(tv.train.size(), 2);
  EXPECT_EQ(tv.val.size(), 2);
  EXPECT_EQ(tv.val.classes, d.classes);  // targets keep their meaning in subsets
}

TEST(Manifest, Esc50WithAudioFolderAndFolds) {
  TempDir dir;
  write_bytes(dir / "meta/esc50.csv",
              "filename,fold,target,category,esc10,src_file,take\n"
              "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
              "1-100038-A-14.wav,1,14,chirping_birds,False,100038,A\n"
              "2-100648-A-43.wav,2,43,chirping_birds,False,100648,A\n"
              "5-9032-A-0.wav,5,0,dog,True,9032,A\n");
  ManifestOptions o;
  o.audio_dir = dir / "audio";
  Dataset d = read_manifest(dir / "meta/esc50.csv", o);
  ASSERT_EQ(d.size(), 4);
  EXPECT_EQ(d.items[1].path, norm(dir / "audio/1-100038-A-14.wav"));
  EXPECT_EQ(d.items[1].labels, (std::vector<std::string>{"chirping_birds"}));  // category, not target
  EXPECT_EQ(d.items[1].split, "1");
  EXPECT_EQ(d.items[1].extra.at("target"), "14");
  auto tv = split_by_value(d, {"1"});
  EXPECT_EQ(tv.val.size(), 2);
  EXPECT_EQ(tv.train.size(), 2);
  EXPECT_FALSE(d.multi_label());
  // Numeric targets instead of names, by choosing the column.
  o.label_columns = {"target"};
  EXPECT_EQ(read_manifest(dir / "meta/esc50.csv", o).classes, (std::vector<std::string>{"0", "14", "43"}));
}

TEST(Manifest, AudioSetStyle) {
  TempDir dir;
  // The official segment lists: two comment lines, a commented header, ", " separators, quoted labels.
  write_bytes(dir / "balanced_train_segments.csv",
              "# Segments csv created Sun Mar  5 10:54:31 2017\n"
              "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
              "# YTID, start_seconds, end_seconds, positive_labels\n"
              "--PJHxphWEs, 30.000, 40.000, \"/m/09x0r,/t/dd00088\"\n"
              "--ZhevVpy1s, 50.000, 60.000, \"/m/012xff\"\n"
              "--aE2O5G5WE, 0.000, 10.000, \"/m/03fwl,/m/04rlf\"\n");
  ManifestOptions o;
  o.path_column = "YTID";
  o.path_template = "audio/{}.flac";
  Dataset d = read_manifest(dir / "balanced_train_segments.csv", o);
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.items[0].path, norm(dir / "audio/--PJHxphWEs.flac"));
  EXPECT_EQ(d.items[0].labels, (std::vector<std::string>{"/m/09x0r", "/t/dd00088"}));
  EXPECT_EQ(d.items[0].extra.at("start_seconds"), "30.000");
  EXPECT_EQ(d.num_classes(), 5);
  EXPECT_TRUE(d.multi_label());

  // A converted list with its own path column and a plain header.
  write_bytes(dir / "as.csv",
              "YTID,start_seconds,end_seconds,positive_labels,path\n"
              "abc,0,10,\"/m/a,/m/b\",clips/abc.wav\n");
  ManifestOptions p;
  p.path_column = "path";
  Dataset e = read_manifest(dir / "as.csv", p);
  EXPECT_EQ(e.items[0].path, norm(dir / "clips/abc.wav"));
  EXPECT_EQ(e.items[0].labels, (std::vector<std::string>{"/m/a", "/m/b"}));
  EXPECT_EQ(e.items[0].extra.at("YTID"), "abc");
}

TEST(Manifest, TsvWithSeveralLabelColumnsQuotingAndLineEndings) {
  TempDir dir;
  write_bytes(dir / "m.tsv",
              "\xEF\xBB\xBF"
              "file\tlabel1\tlabel2\tfold\r\n"
              "a.wav\tdog\tbark\t1\r\n"
              "\r\n"
              "/abs/b.flac\tcat\t\t2\r\n");
  ManifestOptions o;
  o.label_columns = {"label1", "label2"};
  Dataset d = read_manifest(dir / "m.tsv", o);
  ASSERT_EQ(d.size(), 2);
  EXPECT_EQ(d.items[0].path, norm(dir / "a.wav"));
  EXPECT_EQ(d.items[0].labels, (std::vector<std::string>{"dog", "bark"}));
  EXPECT_EQ(d.items[1].path, "/abs/b.flac");  // absolute paths are kept
  EXPECT_EQ(d.items[1].labels, (std::vector<std::string>{"cat"}));
  EXPECT_EQ(d.items[1].split, "2");

  write_bytes(dir / "q.csv",
              "path,label,note\n"
              "\"dir, with comma/x.wav\",\"a; b\",\"said \"\"hi\"\"\nover two lines\"\n"
              "y.wav,c,plain\n");
  Dataset q = read_manifest(dir / "q.csv");
  ASSERT_EQ(q.size(), 2);
  EXPECT_EQ(q.items[0].path, norm(dir / "dir, with comma/x.wav"));
  EXPECT_EQ(q.items[0].labels, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(q.items[0].extra.at("note"), "said \"hi\"\nover two lines");
  EXPECT_EQ(q.items[1].labels, (std::vector<std::string>{"c"}));

  ManifestOptions none;
  none.label_columns = {"-"};
  EXPECT_EQ(read_manifest(dir / "q.csv", none).num_classes(), 0);
}

TEST(Manifest, ErrorsNameTheFileTheLineAndTheColumns) {
  TempDir dir;
  write_bytes(dir / "nopath.csv", "name,label\nx.wav,a\n");
  expect_error([&] { read_manifest(dir / "nopath.csv"); }, {dir / "nopath.csv", "name, label"});
  write_bytes(dir / "ragged.csv", "path,label\nx.wav,a\ny.wav\n");
  expect_error([&] { read_manifest(dir / "ragged.csv"); }, {dir / "ragged.csv", "line 3"});
  write_bytes(dir / "emptypath.csv", "path,label\n,a\n");
  expect_error([&] { read_manifest(dir / "emptypath.csv"); }, {"line 2", "empty"});
  write_bytes(dir / "ok.csv", "path,label\nx.wav,a\n");
  ManifestOptions o;
  o.label_columns = {"genre"};
  expect_error([&] { read_manifest(dir / "ok.csv", o); }, {"genre"});
  expect_error([&] { read_manifest(dir / "missing.csv"); }, {dir / "missing.csv"});
  write_bytes(dir / "quote.csv", "path,label\n\"x.wav,a\n");
  expect_error([&] { read_manifest(dir / "quote.csv"); }, {dir / "quote.csv", "unterminated"});
  write_bytes(dir / "blank.csv", "\n\n");
  expect_error([&] { read_manifest(dir / "blank.csv"); }, {"empty manifest"});
}

TEST(Folder, ClassSubfoldersLikeGtzan) {
  TempDir dir;
  touch(dir / "genres/blues/blues.00001.wav");
  touch(dir / "genres/blues/blues.00000.wav");
  touch(dir / "genres/jazz/live/jazz.00000.au");  // nested: the class is the first folder
  touch(dir / "genres/jazz/notes.txt");             // not audio
  touch(dir / "genres/.hidden/x.wav");              // hidden folder
  touch(dir / "genres/rock/.x.wav.tmp.1");          // hidden file
  touch(dir / "genres/loose.flac");                 // directly in the root: unlabelled
  Dataset d = read_folder(dir / "genres");
  ASSERT_EQ(d.size(), 4);
  EXPECT_EQ(d.items[0].path, norm(dir / "genres/blues/blues.00000.wav"));  // sorted
  EXPECT_EQ(d.items[0].labels, (std::vector<std::string>{"blues"}));
  EXPECT_EQ(d.items[2].labels, (std::vector<std::string>{"jazz"}));
  EXPECT_EQ(d.items[3].path, norm(dir / "genres/loose.flac"));
  EXPECT_TRUE(d.items[3].labels.empty());
  EXPECT_EQ(d.classes, (std::vector<std::string>{"blues", "jazz"}));
  FolderOptions flat;
  flat.recursive = false;
  EXPECT_EQ(read_folder(dir / "genres", flat).size(), 1);
  EXPECT_THROW(read_folder(dir / "nope"), Error);
}

TEST(Folder, LabelsFromFileNamesLikeCremaD) {
  TempDir dir;
  for (const char* f : {"1001_DFA_ANG_XX.wav", "1001_DFA_DIS_XX.wav", "1002_IEO_HAP_HI.wav", "readme.wav"})
    touch(dir / (std::string("AudioWAV/") + f));
  FolderOptions o;
  o.label_regex = "^\\d+_[A-Z]+_([A-Z]{3})_";
  Dataset d = read_folder(dir / "AudioWAV", o);
  ASSERT_EQ(d.size(), 4);
  EXPECT_EQ(d.items[0].labels, (std::vector<std::string>{"ANG"}));
  EXPECT_EQ(d.items[2].labels, (std::vector<std::string>{"HAP"}));
  EXPECT_TRUE(d.items[3].labels.empty());
  EXPECT_EQ(d.classes, (std::vector<std::string>{"ANG", "DIS", "HAP"}));
  o.label_regex = "([";
  EXPECT_THROW(read_folder(dir / "AudioWAV", o), Error);
}

TEST(FileList, UnlabelledPathsRelativeToTheList) {
  TempDir dir;
  write_bytes(dir / "lists/unlabelled.txt", "# new domain\n\n  a/one.wav  \n/data/two.flac\n../three.mp3\n");
  Dataset d = read_file_list(dir / "lists/unlabelled.txt");
  ASSERT_EQ(d.size(), 3);
  EXPECT_EQ(d.items[0].path, norm(dir / "lists/a/one.wav"));
  EXPECT_EQ(d.items[1].path, "/data/two.flac");
  EXPECT_EQ(d.items[2].path, norm(dir / "three.mp3"));
  EXPECT_EQ(d.num_classes(), 0);
  // read_source picks the reader from what the path is.
  EXPECT_EQ(read_source(dir / "lists/unlabelled.txt").size(), 3);
  touch(dir / "tree/a/x.wav");
  EXPECT_EQ(read_source(dir / "tree").classes, (std::vector<std::string>{"a"}));
  write_bytes(dir / "m.csv", "path\nx.wav\n");
  EXPECT_EQ(read_source(dir / "m.csv").size(), 1);
  EXPECT_THROW(read_source(dir / "absent"), Error);
}

TEST(Split, ByFractionIsSeededAndKeepsGroupsTogether) {
  Dataset d;
  for (int i = 0; i < 200; ++i) {
    AudioItem it;
    it.path = "clip" + std::to_string(i) + ".wav";
    it.labels = {i % 2 ? "a" : "b"};
    it.group = i < 100 ? "g" + std::to_string(i / 4) : "";  // 25 groups of 4, then 100 ungrouped
    d.items.push_back(it);
  }
  d.rebuild_classes();
  auto s1 = split_by_fraction(d, 0.2, 7), s2 = split_by_fraction(d, 0.2, 7), s3 = split_by_fraction(d, 0.2, 8);
  EXPECT_EQ(s1.val.size() + s1.train.size(), 200);
  EXPECT_NEAR(static_cast<double>(s1.val.size()), 40.0, 3.0);
  std::set<std::string> val_paths, val_groups, train_groups;
  for (auto& it : s1.val.items) val_paths.insert(it.path), val_groups.insert(it.group);
  for (auto& it : s1.train.items) {
    EXPECT_EQ(val_paths.count(it.path), 0u);
    train_groups.insert(it.group);
  }
  for (const auto& g : val_groups) {
    if (!g.empty()) {
      EXPECT_EQ(train_groups.count(g), 0u) << "group " << g << " on both sides";
    }
  }
  std::vector<std::string> a, b, c;
  for (auto& it : s1.val.items) a.push_back(it.path);
  for (auto& it : s2.val.items) b.push_back(it.path);
  for (auto& it : s3.val.items) c.push_back(it.path);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_EQ(split_by_fraction(d, 0.0, 1).val.size(), 0);
  EXPECT_THROW(split_by_fraction(d, 1.0, 1), Error);
}

TEST(Split, ShuffledIndicesArePermutationsFixedBySeed) {
  auto p = shuffled_indices(1000, 3);
  auto q = shuffled_indices(1000, 3);
  EXPECT_EQ(p, q);
  EXPECT_NE(p, shuffled_indices(1000, 4));
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  int fixed = 0;
  for (int64_t i = 0; i < 1000; ++i) fixed += p[i] == i;
  EXPECT_LT(fixed, 10);  // a real shuffle leaves about one element in place
}
