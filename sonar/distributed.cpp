// Data parallelism over MPI: the process group, collectives and bucketed gradient sums (see
// sonar/distributed.h).
#include "sonar/distributed.h"

#include <mpi.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

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

namespace {

// Variable-length allgather of one element type: counts first, then MPI_Allgatherv.
template <class T>
std::vector<T> allgather_values(const std::vector<T>& local, MPI_Datatype type, int size) {
  int n = static_cast<int>(local.size());
  std::vector<int> counts(size), displs(size);
  check_mpi(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "allgather");
  int total = 0;
  for (int r = 0; r < size; ++r) {
    displs[r] = total;
    total += counts[r];
  }
  std::vector<T> out(total);
  check_mpi(MPI_Allgatherv(local.data(), n, type, out.data(), counts.data(), displs.data(), type, MPI_COMM_WORLD),
            "allgather");
  return out;
}

}  // namespace

std::vector<int64_t> Distributed::allgather(const std::vector<int64_t>& local) const {
  return size_ == 1 ? local : allgather_values(local, MPI_INT64_T, size_);
}

std::vector<double> Distributed::allgather(const std::vector<double>& local) const {
  return size_ == 1 ? local : allgather_values(local, MPI_DOUBLE, size_);
}

Tensor Distributed::allgather_rows(const Tensor& local) const {
  SONAR_CHECK(local.dim() == 2 && local.dtype() == DType::Float32, "allgather_rows: needs float32 [n, D], got ",
              local.str());
  if (size_ == 1) return local;
  const Tensor c = local.contiguous();
  const int64_t D = c.size(1);
  std::vector<int64_t> dims = allgather(std::vector<int64_t>{D});
  for (int64_t d : dims) SONAR_CHECK(d == D, "allgather_rows: row widths differ across processes (", d, " vs ", D, ")");
  std::vector<float> flat(c.data<float>(), c.data<float>() + c.numel());
  std::vector<float> all = allgather_values(flat, MPI_FLOAT, size_);
  Tensor out = Tensor::empty({static_cast<int64_t>(all.size()) / std::max<int64_t>(D, 1), D});
  std::copy(all.begin(), all.end(), out.data<float>());
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

// ---- overlapped gradient sums ----

namespace sonar::method {

struct OverlappedGradientSum::Requests {
  std::vector<MPI_Request> of_bucket;  // MPI_REQUEST_NULL when not started or finished
};

OverlappedGradientSum::OverlappedGradientSum(std::vector<ag::Var> params, const Distributed& group,
                                             int64_t bucket_bytes)
    : params_(std::move(params)), group_(group), requests_(std::make_unique<Requests>()) {
  const int64_t cap = std::max<int64_t>(bucket_bytes / 4, 1);
  bucket_of_.resize(params_.size());
  slot_of_.resize(params_.size());
  is_ready_.assign(params_.size(), 0);
  for (size_t i = 0; i < params_.size(); ++i) {
    SONAR_CHECK(params_[i].defined() && params_[i].is_leaf(), "OverlappedGradientSum: parameter ", i,
                " is undefined or not a leaf");
    SONAR_CHECK(params_[i].value().dtype() == DType::Float32, "OverlappedGradientSum: parameter ", i, " has dtype ",
                dtype_name(params_[i].value().dtype()));
    SONAR_CHECK(index_of_.emplace(params_[i].impl().get(), i).second, "OverlappedGradientSum: parameter ", i,
                " is listed twice");
  }
  // Reverse parameter order, consecutive parameters up to the cap (a larger one alone): the rule of
  // allreduce_gradients, walked backwards.
  for (size_t r = 0; r < params_.size(); ++r) {
    const size_t i = params_.size() - 1 - r;
    const int64_t n = params_[i].numel();
    SONAR_CHECK(n < (int64_t{1} << 31) - 1, "OverlappedGradientSum: parameter ", i, " has ", n,
                " elements, more than one MPI message holds");
    if (buckets_.empty() || (!buckets_.back().params.empty() && buckets_.back().grad_floats + n > cap))
      buckets_.emplace_back();
    Bucket& b = buckets_.back();
    bucket_of_[i] = buckets_.size() - 1;
    slot_of_[i] = b.params.size();
    b.params.push_back(i);
    b.offsets.push_back(b.grad_floats);
    b.grad_floats += n;
  }
  requests_->of_bucket.assign(buckets_.size(), MPI_REQUEST_NULL);
}

OverlappedGradientSum::~OverlappedGradientSum() {
  // A step abandoned by an error: its outstanding sums are left to MPI (the run is ending; waiting here could
  // hang when another process failed), but their buffers must outlive them.
  static std::vector<Tensor>* const abandoned = new std::vector<Tensor>();  // never freed, on purpose
  for (size_t b = 0; b < buckets_.size(); ++b)
    if (requests_->of_bucket[b] != MPI_REQUEST_NULL) abandoned->push_back(buckets_[b].buffer);
}

bool OverlappedGradientSum::covers(const std::vector<ag::Var>& params) const {
  if (params.size() != params_.size()) return false;
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (size_t k = 0; k < buckets_[b].params.size(); ++k) {
      const size_t i = buckets_[b].params[k];
      const int64_t end = k + 1 < buckets_[b].params.size() ? buckets_[b].offsets[k + 1] : buckets_[b].grad_floats;
      if (!params[i].same(params_[i]) || params[i].numel() != end - buckets_[b].offsets[k]) return false;
    }
  return true;
}

void OverlappedGradientSum::begin() {
  SONAR_CHECK(!in_step_, "OverlappedGradientSum: begin() twice without finish()");
  in_step_ = true;
  next_start_ = 0;
  std::fill(is_ready_.begin(), is_ready_.end(), 0);
  for (Bucket& b : buckets_) {
    b.ready = 0;
    b.buffer = Tensor();
  }
}

std::function<void(ag::VarImpl&)> OverlappedGradientSum::hook() {
  return [this](ag::VarImpl& leaf) { on_ready(leaf); };
}

OverlappedGradientSum::Bucket& OverlappedGradientSum::buffer_of(size_t b) {
  Bucket& bk = buckets_[b];
  if (!bk.buffer.defined()) {
    bk.buffer = Tensor::empty({bk.grad_floats + static_cast<int64_t>(bk.params.size())});
    // Flags start at "no gradient here"; a gradient region is written when its gradient arrives, or zeroed
    // when the bucket starts without it.
    float* flags = bk.buffer.data<float>() + bk.grad_floats;
    std::fill(flags, flags + bk.params.size(), 0.0f);
  }
  return bk;
}

void OverlappedGradientSum::on_ready(ag::VarImpl& leaf) {
  auto it = index_of_.find(&leaf);
  if (it == index_of_.end() || !in_step_) return;  // not one of ours (or outside a step)
  const size_t i = it->second;
  SONAR_CHECK(!is_ready_[i], "OverlappedGradientSum: parameter ", i,
              " received its gradient twice in one step (two backward passes before finish())");
  is_ready_[i] = 1;
  const size_t b = bucket_of_[i], k = slot_of_[i];
  Bucket& bk = buffer_of(b);
  if (leaf.grad.defined()) {
    const Tensor g = leaf.grad.contiguous();
    SONAR_CHECK(g.dtype() == DType::Float32, "OverlappedGradientSum: gradient of dtype ", dtype_name(g.dtype()));
    std::memcpy(bk.buffer.data<float>() + bk.offsets[k], g.data<float>(), g.numel() * sizeof(float));
    bk.buffer.data<float>()[bk.grad_floats + static_cast<int64_t>(k)] = 1.0f;
    // From now on the gradient lives in the bucket (its sum lands there): the local copy is freed.
    leaf.grad = bk.buffer.narrow(0, bk.offsets[k], g.numel()).view(leaf.value.shape());
  }
  ++bk.ready;
  start_ready_buckets();
  test_outstanding();
}

void OverlappedGradientSum::start(size_t b) {
  Bucket& bk = buffer_of(b);
  float* data = bk.buffer.data<float>();
  for (size_t k = 0; k < bk.params.size(); ++k) {
    const size_t i = bk.params[k];
    if (is_ready_[i] && data[bk.grad_floats + static_cast<int64_t>(k)] != 0.0f) continue;
    std::fill(data + bk.offsets[k], data + bk.offsets[k] + params_[i].numel(), 0.0f);  // no gradient here
  }
  const int64_t n = bk.grad_floats + static_cast<int64_t>(bk.params.size());
  check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data, static_cast<int>(n), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                           &requests_->of_bucket[b]),
            "gradient all-reduce (start)");
}

void OverlappedGradientSum::start_ready_buckets() {
  while (next_start_ < buckets_.size() &&
         buckets_[next_start_].ready == static_cast<int64_t>(buckets_[next_start_].params.size()))
    start(next_start_++);
}

void OverlappedGradientSum::test_outstanding() {
  if (next_start_ == 0) return;
  int done = 0;
  check_mpi(MPI_Testall(static_cast<int>(next_start_), requests_->of_bucket.data(), &done, MPI_STATUSES_IGNORE),
            "gradient all-reduce (progress)");
}

int64_t OverlappedGradientSum::finish() {
  SONAR_CHECK(in_step_, "OverlappedGradientSum: finish() without begin()");
  while (next_start_ < buckets_.size()) start(next_start_++);
  check_mpi(MPI_Waitall(static_cast<int>(buckets_.size()), requests_->of_bucket.data(), MPI_STATUSES_IGNORE),
            "gradient all-reduce (wait)");
  in_step_ = false;
  int64_t sent = 0;
  for (Bucket& bk : buckets_) {
    const float* flags = bk.buffer.data<float>() + bk.grad_floats;
    for (size_t k = 0; k < bk.params.size(); ++k) {
      ag::Var p = params_[bk.params[k]];
      if (flags[k] == 0.0f)
        p.zero_grad();  // no process had a gradient: none, as allreduce_gradients leaves it
      else
        p.set_grad(bk.buffer.narrow(0, bk.offsets[k], p.numel()).view(p.value().shape()));
    }
    sent += (bk.grad_floats + static_cast<int64_t>(bk.params.size())) * 4;
    bk.buffer = Tensor();  // the gradients keep their parts alive
  }
  return sent;
}

}  // namespace sonar::method
