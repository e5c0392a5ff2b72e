// Data parallelism over MPI: the process group, collectives and bucketed gradient sums (see
// sonar/distributed.h).
#include "sonar/distributed.h"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tensor/creation.h"
#include "tensor/error.h"

namespace sonar::method {

namespace {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v) != nullptr) return true;
  return false;
}

void finalize_mpi() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  SONAR_FAIL("MPI ", what, " failed: ", std::string(msg, len));
}

}  // namespace

Distributed::Distributed() {
  if (!launched_by_mpi()) return;
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    // Only the training thread calls MPI (the data loader's threads never do).
    int provided = 0;
    check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "initialisation");
    std::atexit(finalize_mpi);
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
}

Distributed& Distributed::world() {
  static Distributed d;
  return d;
}

void Distributed::allreduce_sum(float* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD), "allreduce");
}

void Distributed::allreduce_sum(double* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "allreduce");
}

void Distributed::allreduce_sum(int64_t* data, int64_t n) const {
  if (size_ == 1 || n == 0) return;
  check_mpi(MPI_Allreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
            "allreduce");
}

double Distributed::sum(double v) const {
  allreduce_sum(&v, 1);
  return v;
}

int64_t Distributed::sum(int64_t v) const {
  allreduce_sum(&v, 1);
  return v;
}

bool Distributed::any(bool v) const {
  return sum(static_cast<int64_t>(v ? 1 : 0)) > 0;
}

std::vector<int64_t> Distributed::allgather(const std::vector<int64_t>& local) const {
  if (size_ == 1) return local;
  int n = static_cast<int>(local.size());
  std::vector<int> counts(size_), displs(size_);
  check_mpi(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
  int total = 0;
  for (int r = 0; r < size_; ++r) {
    displs[r] = total;
    total += counts[r];
  }
  std::vector<int64_t> out(total);
  check_mpi(MPI_Allgatherv(local.data(), n, MPI_INT64_T, out.data(), counts.data(), displs.data(), MPI_INT64_T,
                           MPI_COMM_WORLD),
            "allgather");
  return out;
}

std::vector<double> Distributed::allgather(const std::vector<double>& local) const {
  if (size_ == 1) return local;
  int n = static_cast<int>(local.size());
  std::vector<int> counts(size_), displs(size_);
  check_mpi(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
  int total = 0;
  for (int r = 0; r < size_; ++r) {
    displs[r] = total;
    total += counts[r];
  }
  std::vector<double> out(total);
  check_mpi(MPI_Allgatherv(local.data(), n, MPI_DOUBLE, out.data(), counts.data(), displs.data(), MPI_DOUBLE,
                           MPI_COMM_WORLD),
            "allgather");
  return out;
}

Tensor Distributed::allgather_rows(const Tensor& local) const {
  SONAR_CHECK(local.dim() == 2 && local.dtype() == DType::Float32, "allgather_rows: needs float32 [n, D], got ",
              local.str());
  if (size_ == 1) return local;
  const Tensor c = local.contiguous();
  const int64_t D = c.size(1);
  std::vector<int64_t> dims = allgather(std::vector<int64_t>{D});
  for (int64_t d : dims) SONAR_CHECK(d == D, "allgather_rows: row widths differ across processes (", d, " vs ", D, ")");
  int n = static_cast<int>(c.numel());
  std::vector<int> counts(size_), displs(size_);
  check_mpi(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
  int total = 0;
  for (int r = 0; r < size_; ++r) {
    displs[r] = total;
    total += counts[r];
  }
  Tensor out = Tensor::empty({total / std::max<int64_t>(D, 1), D});
  check_mpi(MPI_Allgatherv(c.data<float>(), n, MPI_FLOAT, out.data<float>(), counts.data(), displs.data(), MPI_FLOAT,
                           MPI_COMM_WORLD),
            "allgather");
  return out;
}

std::string Distributed::broadcast(const std::string& s) const {
  if (size_ == 1) return s;
  int64_t n = static_cast<int64_t>(s.size());
  check_mpi(MPI_Bcast(&n, 1, MPI_INT64_T, 0, MPI_COMM_WORLD), "broadcast");
  std::string out = s;
  out.resize(static_cast<size_t>(n));
  check_mpi(MPI_Bcast(out.data(), static_cast<int>(n), MPI_CHAR, 0, MPI_COMM_WORLD), "broadcast");
  return out;
}

void Distributed::abort(const std::string& message) const {
  std::fprintf(stderr, "sonar (process %d of %d): error: %s\n", rank_, size_, message.c_str());
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 1);
  std::abort();
}

void Distributed::barrier() const {
  if (size_ == 1) return;
  check_mpi(MPI_Barrier(MPI_COMM_WORLD), "barrier");
}

int64_t allreduce_gradients(const std::vector<ag::Var>& params, const Distributed& group, int64_t bucket_bytes) {
  if (!group.multi()) return 0;
  // Which gradients exist anywhere: those take part (as zeros where undefined here).
  std::vector<int64_t> defined(params.size());
  for (size_t i = 0; i < params.size(); ++i) defined[i] = params[i].grad().defined() ? 1 : 0;
  group.allreduce_sum(defined.data(), static_cast<int64_t>(defined.size()));
  std::vector<Tensor> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    if (defined[i] == 0) continue;
    ag::Var p = params[i];
    if (!p.grad().defined()) p.set_grad(zeros(p.value().shape()));
    Tensor g = p.grad();
    SONAR_CHECK(g.dtype() == DType::Float32, "allreduce_gradients: gradient of dtype ", dtype_name(g.dtype()));
    if (!g.is_contiguous()) {
      g = g.contiguous();
      p.set_grad(g);
    }
    grads.push_back(g);
  }
  // Buckets: consecutive gradients packed into one buffer up to bucket_bytes (a larger gradient alone).
  const int64_t cap = std::max<int64_t>(bucket_bytes / 4, 1);
  std::vector<float> buf;
  int64_t sent = 0;
  size_t i = 0;
  while (i < grads.size()) {
    size_t j = i;
    int64_t n = 0;
    while (j < grads.size() && (j == i || n + grads[j].numel() <= cap)) n += grads[j++].numel();
    if (j == i + 1) {
      group.allreduce_sum(grads[i].data<float>(), grads[i].numel());
    } else {
      buf.resize(static_cast<size_t>(n));
      int64_t off = 0;
      for (size_t k = i; k < j; ++k) {
        std::memcpy(buf.data() + off, grads[k].data<float>(), grads[k].numel() * sizeof(float));
        off += grads[k].numel();
      }
      group.allreduce_sum(buf.data(), n);
      off = 0;
      for (size_t k = i; k < j; ++k) {
        std::memcpy(grads[k].data<float>(), buf.data() + off, grads[k].numel() * sizeof(float));
        off += grads[k].numel();
      }
    }
    sent += n * 4;
    i = j;
  }
  return sent;
}

}  // namespace sonar::method
