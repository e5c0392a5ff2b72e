// Data parallelism over MPI (Debian's Open MPI): the process group a training run is part of, the few
// collective operations the trainers need, and bucketed gradient averaging.
//
// A process started by `mpirun -np N` (Open MPI puts OMPI_COMM_WORLD_SIZE in its environment; PMIx / PMI
// launchers set PMIX_RANK or PMI_RANK) joins MPI_COMM_WORLD on first use; MPI is finalised at exit. A process
// started any other way is a group of one and never calls MPI, so `sonar pretrain` without mpirun behaves
// exactly as a program without MPI would.
//
// Not here: what is split or reduced (sonar/trainer.cpp decides), threads (each rank uses OMP_NUM_THREADS).
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "autograd/var.h"

namespace sonar::method {

class Distributed {
 public:
  // The group of this process (initialises MPI on first call when launched by mpirun).
  static Distributed& world();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool is_root() const { return rank_ == 0; }
  bool multi() const { return size_ > 1; }

  // In-place sums over the group (no-ops for a group of one).
  void allreduce_sum(float* data, int64_t n) const;
  void allreduce_sum(double* data, int64_t n) const;
  void allreduce_sum(int64_t* data, int64_t n) const;
  double sum(double v) const;
  int64_t sum(int64_t v) const;
  // True when any process of the group passes true (early stop on Ctrl-C, errors).
  bool any(bool v) const;
  // Every process's vector, concatenated in rank order (lengths may differ).
  std::vector<int64_t> allgather(const std::vector<int64_t>& local) const;
  std::vector<double> allgather(const std::vector<double>& local) const;
  // Rows of a float32 [n_r, D] tensor from every process, concatenated in rank order ([sum n_r, D]).
  Tensor allgather_rows(const Tensor& local) const;
  // The root's string on every process.
  std::string broadcast(const std::string& s) const;
  void barrier() const;
  // Prints the message and ends every process of the group (MPI_Abort); for errors in a multi-process run,
  // where one process returning would leave the others waiting in a collective.
  [[noreturn]] void abort(const std::string& message) const;

 private:
  Distributed();
  int rank_ = 0, size_ = 1;
};

// Sums the gradients of `params` over the group in place, in buckets of about bucket_bytes (one
// MPI_Allreduce per bucket). A parameter whose gradient is undefined on every process stays undefined; one
// defined on some processes only is taken as zero elsewhere. Returns the bytes each process sent.
int64_t allreduce_gradients(const std::vector<ag::Var>& params, const Distributed& group,
                            int64_t bucket_bytes = 16 << 20);

// The same sums overlapped with the backward pass. The bucket layout is fixed at construction, identical on
// every process: the parameters in reverse order (the order a backward roughly finishes them: the last layers
// first), consecutive ones packed up to bucket_bytes (a larger gradient alone), plus one float per parameter
// saying whether this process has its gradient. Per step:
//   begin(); { ag::LeafGradReadyScope s(sum.hook()); loss.backward(); } sum.finish();
// When a parameter's gradient is final (the autograd hook), it is copied into its bucket's buffer and the
// parameter's gradient becomes a view of that buffer; when a bucket is complete and every earlier bucket has
// been started, its MPI_Iallreduce starts (buckets start in one fixed order on every process, as MPI requires,
// whatever order the gradients finish in); each hook call also tests the outstanding requests so Open MPI
// progresses them. finish() starts the buckets still waiting (gradients not reached on this process count as
// zeros), waits for all, and leaves as gradient the sums (views of the buffers), undefined for a parameter
// no process had a gradient for: the result of allreduce_gradients (bit-identical to it with 2 processes,
// where each sum is one addition). Not thread-safe: the training thread only.
class OverlappedGradientSum {
 public:
  OverlappedGradientSum(std::vector<ag::Var> params, const Distributed& group, int64_t bucket_bytes = 16 << 20);
  ~OverlappedGradientSum();
  OverlappedGradientSum(const OverlappedGradientSum&) = delete;
  OverlappedGradientSum& operator=(const OverlappedGradientSum&) = delete;

  void begin();                             // a new step: no gradient is ready, nothing outstanding
  std::function<void(ag::VarImpl&)> hook();  // for ag::LeafGradReadyScope
  int64_t finish();                          // bytes each process sent this step
  int64_t num_buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // True when `params` are this sum's parameters (the same Vars, in order, with the same sizes).
  bool covers(const std::vector<ag::Var>& params) const;

 private:
  struct Bucket {
    std::vector<size_t> params;    // indices into params_, in bucket order
    std::vector<int64_t> offsets;  // each parameter's first float in the buffer
    int64_t grad_floats = 0;       // gradients; then one flag float per parameter
    int64_t ready = 0;             // parameters of this step whose gradient is in the buffer
    Tensor buffer;                 // float32 [grad_floats + params.size()] (this step)
  };
  void on_ready(ag::VarImpl& leaf);
  Bucket& buffer_of(size_t b);
  void start(size_t b);
  void start_ready_buckets();
  void test_outstanding();

  std::vector<ag::Var> params_;
  const Distributed& group_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_, slot_of_;  // per parameter: its bucket and position in it
  std::vector<char> is_ready_;               // per parameter, this step
  std::unordered_map<const ag::VarImpl*, size_t> index_of_;
  size_t next_start_ = 0;                    // buckets [0, next_start_) were started this step
  struct Requests;                           // MPI_Request per bucket (sonar/distributed.cpp)
  std::unique_ptr<Requests> requests_;
  bool in_step_ = false;
};

}  // namespace sonar::method
