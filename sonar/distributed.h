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
#include <string>
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

}  // namespace sonar::method
