// A C interface to one compiled Stan model's log density and gradient, loaded from Python with
// ctypes (backends/stan_gradient.py), in the spirit of BridgeStan.
//
// Why not pystan: httpstan's log_prob_grad rebuilds the model from its data on every call, so a
// timing through it measures data conversion, not the gradient. Here the model is built once and
// each call is what Stan's samplers do per leapfrog step: stan::model::log_prob_grad<true, true>.
//
// The model's C++ (from stanc) is compiled into the same translation unit with the macros and
// optimisation flags httpstan uses, so the gradient measured is the one pystan's NUTS runs.
#include <stan/io/json/json_data.hpp>
#include <stan/model/log_prob_grad.hpp>
#include <stan/model/model_base.hpp>

#include <algorithm>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>

// Defined by stanc's generated code, which the build force-includes (-include model.cpp).
stan::model::model_base& new_model(stan::io::var_context& data_context, unsigned int seed,
                                   std::ostream* msg_stream);

namespace {

void copy_error(const std::string& message, char* err, int err_len) {
  if (err == nullptr || err_len <= 0) return;
  const size_t n = std::min(message.size(), static_cast<size_t>(err_len - 1));
  std::memcpy(err, message.data(), n);
  err[n] = '\0';
}

stan::json::json_data read_json(const char* path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(std::string("cannot open ") + path);
  return stan::json::json_data(in);
}

}  // namespace

extern "C" {

// The model on the data in the JSON file at data_path (Stan's JSON data format); null on error.
void* mixbench_model_new(const char* data_path, char* err, int err_len) {
  try {
    stan::json::json_data data = read_json(data_path);
    std::stringstream messages;
    return &new_model(data, 0u, &messages);
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return nullptr;
  }
}

void mixbench_model_free(void* model) { delete static_cast<stan::model::model_base*>(model); }

int mixbench_num_unconstrained(void* model) {
  return static_cast<int>(static_cast<stan::model::model_base*>(model)->num_params_r());
}

// Constrained parameter values (JSON file) -> the unconstrained point. 0 on success.
int mixbench_unconstrain(void* model, const char* params_path, double* out, char* err, int err_len) {
  try {
    auto* m = static_cast<stan::model::model_base*>(model);
    stan::json::json_data params = read_json(params_path);
    Eigen::VectorXd theta(m->num_params_r());
    std::stringstream messages;
    m->transform_inits(params, theta, &messages);
    std::copy(theta.data(), theta.data() + theta.size(), out);
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}

// Log density and gradient at theta on the unconstrained space. jacobian != 0 adds the log
// Jacobian of the constraining transforms (the density NUTS samples); normalising constants are
// kept wherever the program writes `target += *_lpdf` (every term of stan/mixture.stan).
int mixbench_log_density_gradient(void* model, const double* theta, int jacobian, double* lp,
                                  double* grad, char* err, int err_len) {
  try {
    auto* m = static_cast<stan::model::model_base*>(model);
    const int n = static_cast<int>(m->num_params_r());
    Eigen::VectorXd params = Eigen::Map<const Eigen::VectorXd>(theta, n);
    Eigen::VectorXd gradient(n);
    std::stringstream messages;
    if (jacobian) {
      *lp = stan::model::log_prob_grad<true, true>(*m, params, gradient, &messages);
    } else {
      *lp = stan::model::log_prob_grad<true, false>(*m, params, gradient, &messages);
    }
    std::copy(gradient.data(), gradient.data() + n, grad);
    return 0;
  } catch (const std::exception& e) {
    copy_error(e.what(), err, err_len);
    return 1;
  }
}

}  // extern "C"
