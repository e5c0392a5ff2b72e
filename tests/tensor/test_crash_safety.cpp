// Crash safety of file outputs under a real kill: a child process rewrites a checkpoint-sized file in a
// loop through write_file_atomic and is killed with SIGKILL at varying moments; the file must always be
// one complete version, never a mix or a prefix, and the only other entries may be the writer's hidden
// temporaries (".<name>.tmp.XXXXXX", which readers never pick up). Not here: the trainer's kill-and-resume
// (tests/sonar/test_trainer.cpp) and hostile inputs (test_io_hostile.cpp).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>

#include "tensor/io.h"
#include "tests/test_util.h"

using namespace sonar;
using testutil::TempDir;

constexpr int kKillRounds = 12;

TEST(CrashSafety, KilledWriterLeavesOneWholeVersion) {
  TempDir dir;
  const std::string path = dir.file("checkpoint.safetensors");
  const std::string a(1 << 20, 'a'), b((1 << 20) + 4096, 'b');
  write_file_atomic(path, a);
  for (int round = 0; round < kKillRounds; ++round) {
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {  // the writer: alternate the two versions until killed
      for (;;) {
        write_file_atomic(path, b);
        write_file_atomic(path, a);
      }
    }
    usleep(static_cast<useconds_t>(2000 + 3000 * round));
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    const std::string got = read_file(path);
    ASSERT_TRUE(got == a || got == b) << "round " << round << ": a file of " << got.size()
                                      << " bytes that is neither version";
    for (const std::string& e : dir.entries())
      EXPECT_TRUE(e == "checkpoint.safetensors" || e.rfind(".checkpoint.safetensors.tmp.", 0) == 0) << e;
  }
}
