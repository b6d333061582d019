// Candidate formulation of the likelihood of stan/mixture.stan (same data, parameters, priors
// and log density; only the likelihood block differs). Compared by bench/experiments/stan_formulations.py;
// the fastest one that matches the oracle is copied into stan/mixture.stan.
//
// matrix_max_shift: the N x K matrix of log(theta_k) + component log densities, then the
// log-sum-exp over each row by hand with the row maximum shifted out (the forums' recipe).
//
// Written for Stan 2.35 and later.
data {
  int<lower=1> N;
  int<lower=1> K;
  int<lower=0> D;
  matrix[N, D] x;
  vector[N] y;
  int<lower=0, upper=1> has_intercept;
  int<lower=0, upper=1> sigma_per_component;
  vector<lower=0>[K] alpha;                // Dirichlet concentration of the weights
  real slope_mu;
  real<lower=0> slope_sd;
  real intercept_mu;
  real<lower=0> intercept_sd;
  int<lower=1, upper=2> sigma_family;      // 1: uniform(0, sigma_scale); 2: halfnormal(sigma_scale)
  real<lower=0> sigma_scale;
  int<lower=0, upper=2> ordering;          // 0: none; 1: by intercept; 2: by first slope
}

transformed data {
  if (ordering == 1 && !has_intercept) {
    reject("ordering by intercept needs has_intercept = 1");
  }
  if (ordering == 2 && D == 0) {
    reject("ordering by slope needs D >= 1");
  }
  if (D == 0 && !has_intercept) {
    reject("D = 0 needs has_intercept = 1");
  }
  int n_sigma = sigma_per_component ? K : 1;
  // Zero-size pieces switch the unused parameters off.
  int n_b_ordered = ordering == 1 ? K : 0;
  int n_b_free = (has_intercept && ordering != 1) ? K : 0;
  int n_w_ordered = ordering == 2 ? K : 0;
  int d_w_free = ordering == 2 ? D - 1 : D;
  real sigma_upper = sigma_family == 1 ? sigma_scale : positive_infinity();
  real log_order_constant = ordering == 0 ? 0 : lgamma(K + 1);
  real normal_constant = -0.5 * N * log(2 * pi());
}

parameters {
  simplex[K] theta;                        // mixing weights (canonical name: pi)
  ordered[n_w_ordered] w_first_ordered;    // first slope of each component, when ordered by it
  matrix[K, d_w_free] w_free;
  ordered[n_b_ordered] b_ordered;
  vector[n_b_free] b_free;
  vector<lower=0, upper=sigma_upper>[n_sigma] sigma;
}

transformed parameters {
  matrix[K, D] w;
  vector[has_intercept ? K : 0] b;
  if (ordering == 2) {
    w = append_col(w_first_ordered, w_free);
  } else {
    w = w_free;
  }
  if (ordering == 1) {
    b = b_ordered;
  } else {
    b = b_free;
  }
}

model {
  target += dirichlet_lpdf(theta | alpha);
  target += normal_lpdf(to_vector(w) | slope_mu, slope_sd);
  if (has_intercept) {
    target += normal_lpdf(b | intercept_mu, intercept_sd);
  }
  if (sigma_family == 1) {
    target += uniform_lpdf(sigma | 0, sigma_scale);
  } else {
    target += normal_lpdf(sigma | 0, sigma_scale) + n_sigma * log2();
  }
  target += log_order_constant;

  {
    // Means of every observation under every component: one matrix product, N x K.
    matrix[N, K] mu;
    if (D == 0) {
      mu = rep_matrix(b', N);
    } else {
      mu = x * w';
      if (has_intercept) {
        mu += rep_matrix(b', N);
      }
    }
    vector[K] sigma_k = sigma_per_component ? sigma : rep_vector(sigma[1], K);
    vector[K] inv_sigma = inv(sigma_k);
    vector[K] log_scale = log(theta) - log(sigma_k);
    matrix[N, K] L;
    for (k in 1:K) {
      L[:, k] = log_scale[k] - 0.5 * square((y - col(mu, k)) * inv_sigma[k]);
    }
    vector[N] m;
    for (n in 1:N) {
      m[n] = max(L[n]);
    }
    // Stan has no rows_sum: the row sums are a product with a vector of ones.
    target += sum(m + log(exp(L - rep_matrix(m, K)) * rep_vector(1, K))) + normal_constant;
  }
}
