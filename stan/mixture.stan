// Bayesian mixture of K linear regressions on D covariates: the one Stan program behind
// backends/stan.py. Every variant the spec allows (models/spec.py) is selected by data, so one
// compiled program serves all specs.
//
// Log density convention: log prior + log likelihood with every normalising constant, so each
// term is a `target +=` of an _lpdf (a `~` statement would drop constants). Under an ordering
// constraint the iid prior restricted to the ordered region carries +log(K!).
//
// The likelihood is stan/formulations/quadratic_form_glm.stan, the fastest of the formulations
// compared by bench/stan_formulations.py (docs/performance.md): every component's log density
// comes from one product of quadratic features of the centred data with a coefficient matrix,
// and the log-sum-exp over components from one categorical_logit_glm_lpmf call, so reverse mode
// keeps no autodiff node per observation. Expanding the squared residual costs rounding: about
// 1e-16 (spread of the centred y and x . w)^2 / sigma^2 per observation, e.g. 1e-13 on the
// forum data; the exact-by-construction alternative is scaled_product_glm (about 2x slower).
//
// Written for Stan 2.35 and later (nothing newer is used).
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
  // sigma's prior (models/spec.py SigmaPrior, SciPy's shape/scale forms): 1: uniform(0, sigma_scale);
  // 2: halfnormal(sigma_scale); 3: gamma(sigma_shape, rate 1 / sigma_scale);
  // 4: inv_gamma(sigma_shape, sigma_scale); 5: lognormal(log(sigma_scale), sigma_shape)
  int<lower=1, upper=5> sigma_family;
  real<lower=0> sigma_scale;
  real<lower=0> sigma_shape;               // unused (0) for families 1 and 2
  int<lower=0, upper=2> ordering;          // 0: none; 1: by intercept; 2: by first slope
  int<lower=0, upper=1> shared_slopes;     // one slope vector for every component
  int<lower=0, upper=1> shared_intercepts; // one intercept for every component
  // Mixing weights: 0: theta ~ dirichlet(alpha); 1: a softmax regression on the covariates,
  // pi_k(x_n) = softmax(gamma_k1 + x_n . gamma_k[2:]), gamma's last row 0 (the reference) and
  // the free rows ~ normal(gamma_mu, gamma_sd). theta is then a one-element simplex, unused.
  int<lower=0, upper=1> softmax_weights;
  real gamma_mu;
  real<lower=0> gamma_sd;
  // Error distribution: 0: normal; 1: Student-t with nu_fixed degrees of freedom; 2: Student-t
  // with nu ~ gamma(nu_shape, nu_rate) a parameter. The unused numbers are 0.
  int<lower=0, upper=2> errors;
  real<lower=0> nu_fixed;
  real<lower=0> nu_shape;
  real<lower=0> nu_rate;
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
  if (shared_slopes && (ordering == 2 || D == 0)) {
    reject("shared slopes need D >= 1 and no ordering by slope");
  }
  if (shared_intercepts && (ordering == 1 || !has_intercept)) {
    reject("shared intercepts need has_intercept = 1 and no ordering by intercept");
  }
  int n_sigma = sigma_per_component ? K : 1;
  // Zero-size pieces switch the unused parameters off.
  int n_b_ordered = ordering == 1 ? K : 0;
  int n_b_free = (has_intercept && ordering != 1) ? (shared_intercepts ? 1 : K) : 0;
  int k_theta = softmax_weights ? 1 : K;
  int k_gamma_free = softmax_weights ? K - 1 : 0;
  int n_w_ordered = ordering == 2 ? K : 0;
  int d_w_free = ordering == 2 ? D - 1 : D;
  int k_w_free = shared_slopes ? 1 : K;
  int n_nu = errors == 2 ? 1 : 0;
  real sigma_upper = sigma_family == 1 ? sigma_scale : positive_infinity();
  real log_order_constant = ordering == 0 ? 0 : lgamma(K + 1);
  real normal_constant = -0.5 * N * log(2 * pi());
  // Quadratic-form features of the centred data: with yc = y - mean(y), xc = x - mean(x) and
  // a_k = b_k + mean(x) . w_k - mean(y), the residual is r = yc - a_k - xc . w_k and
  //   r^2 = yc^2 - 2 a yc - 2 yc (xc . w) + a^2 + 2 a (xc . w) + (xc . w)^2,
  // linear in the features [yc^2, yc, yc xc_d, 1, xc_d, xc_d xc_e (d <= e)]. Centring keeps
  // the cancellation in this expansion at the scale of the data's spread, not its offset.
  real y_mean = mean(y);
  row_vector[D] x_mean;
  for (d in 1:D) {
    x_mean[d] = mean(col(x, d));
  }
  vector[N] yc = y - y_mean;
  matrix[N, D] xc = x - rep_matrix(x_mean, N);
  int n_pairs = (D * (D + 1)) %/% 2;
  int P = 3 + 2 * D + n_pairs;
  matrix[N, P] F;
  F[:, 1] = square(yc);
  F[:, 2] = yc;
  F[:, 3] = rep_vector(1, N);
  {
    int j = 4;
    for (d in 1:D) {
      F[:, j] = yc .* col(xc, d);
      F[:, j + 1] = col(xc, d);
      j += 2;
    }
    for (d in 1:D) {
      for (e in d:D) {
        F[:, j] = col(xc, d) .* col(xc, e);
        j += 1;
      }
    }
  }
  row_vector[P] F_colsum = rep_row_vector(1, N) * F;
  array[N] int first = rep_array(1, N);
  vector[K] no_intercept = rep_vector(0, K);
}

parameters {
  simplex[k_theta] theta;                  // mixing weights (canonical name: pi)
  matrix[k_gamma_free, D + 1] gamma_free;  // softmax weights' free rows
  ordered[n_w_ordered] w_first_ordered;    // first slope of each component, when ordered by it
  matrix[k_w_free, d_w_free] w_free;       // one row when the slopes are shared
  ordered[n_b_ordered] b_ordered;
  vector[n_b_free] b_free;
  vector<lower=0, upper=sigma_upper>[n_sigma] sigma;
  vector<lower=0>[n_nu] nu;                // Student-t degrees of freedom, when a parameter
}

transformed parameters {
  matrix[K, D] w;
  vector[has_intercept ? K : 0] b;
  matrix[softmax_weights ? K : 0, D + 1] gamma;
  if (softmax_weights) {
    gamma = append_row(gamma_free, rep_row_vector(0, D + 1));
  }
  if (ordering == 2) {
    w = append_col(w_first_ordered, w_free);
  } else if (shared_slopes) {
    w = rep_matrix(w_free[1], K);
  } else {
    w = w_free;
  }
  if (ordering == 1) {
    b = b_ordered;
  } else if (shared_intercepts) {
    b = rep_vector(b_free[1], K);
  } else {
    b = b_free;
  }
}

model {
  if (softmax_weights) {
    target += normal_lpdf(to_vector(gamma_free) | gamma_mu, gamma_sd);
  } else {
    target += dirichlet_lpdf(theta | alpha);
  }
  target += normal_lpdf(w_first_ordered | slope_mu, slope_sd);
  target += normal_lpdf(to_vector(w_free) | slope_mu, slope_sd);
  target += normal_lpdf(b_ordered | intercept_mu, intercept_sd);
  target += normal_lpdf(b_free | intercept_mu, intercept_sd);
  if (sigma_family == 1) {
    target += uniform_lpdf(sigma | 0, sigma_scale);
  } else if (sigma_family == 2) {
    target += normal_lpdf(sigma | 0, sigma_scale) + n_sigma * log2();
  } else if (sigma_family == 3) {
    target += gamma_lpdf(sigma | sigma_shape, 1 / sigma_scale);
  } else if (sigma_family == 4) {
    target += inv_gamma_lpdf(sigma | sigma_shape, sigma_scale);
  } else {
    target += lognormal_lpdf(sigma | log(sigma_scale), sigma_shape);
  }
  if (errors == 2) {
    target += gamma_lpdf(nu | nu_shape, nu_rate);
  }
  target += log_order_constant;

  if (errors > 0 || softmax_weights) {
    // Student-t errors or softmax weights: no quadratic form; each observation's log-sum-exp
    // over components of log pi_k(x_n) + log f(y_n | mu_nk, sigma_k), f normal or Student-t
    // written out per element (Lange, Little & Taylor 1989) because the vectorised _lpdf
    // functions return only their sum.
    vector[K] sigma_k = sigma_per_component ? sigma : rep_vector(sigma[1], K);
    matrix[N, K] mu = rep_matrix(has_intercept ? b' : rep_row_vector(0, K), N);
    if (D > 0) {
      mu += x * w';
    }
    matrix[N, K] z2 = square((rep_matrix(y, K) - mu) ./ rep_matrix(sigma_k', N));
    matrix[N, K] lp;
    if (errors > 0) {
      real nu_value = errors == 2 ? nu[1] : nu_fixed;
      lp = rep_matrix(-log(sigma_k)' + lgamma(0.5 * (nu_value + 1)) - lgamma(0.5 * nu_value)
                      - 0.5 * log(nu_value * pi()), N) - 0.5 * (nu_value + 1) * log1p(z2 / nu_value);
    } else {
      lp = rep_matrix(-log(sigma_k)' - 0.5 * log(2 * pi()), N) - 0.5 * z2;
    }
    if (softmax_weights) {
      matrix[N, K] eta = rep_matrix(col(gamma, 1)', N);
      if (D > 0) {
        eta += x * block(gamma, 1, 2, K, D)';
      }
      for (n in 1:N) {
        target += log_sum_exp(lp[n] + log_softmax(eta[n]')');
      }
    } else {
      lp += rep_matrix(log(theta)', N);
      for (n in 1:N) {
        target += log_sum_exp(lp[n]);
      }
    }
  } else {
    // C[j, k]: each feature's coefficient in log(theta_k) + log N(y | mu_k, sigma_k) (less the
    // -log(2 pi)/2 shared by all components), so that L = F C in one matrix product.
    vector[K] sigma_k = sigma_per_component ? sigma : rep_vector(sigma[1], K);
    vector[K] h = -0.5 * inv_square(sigma_k);
    vector[K] a = -rep_vector(y_mean, K);
    if (D > 0) {
      a += w * x_mean';
    }
    if (has_intercept) {
      a += b;
    }
    matrix[P, K] C;
    C[1] = h';
    C[2] = (-2 * a .* h)';
    C[3] = (log(theta) - log(sigma_k) + square(a) .* h)';
    {
      int j = 4;
      for (d in 1:D) {
        C[j] = (-2 * col(w, d) .* h)';
        C[j + 1] = (2 * a .* col(w, d) .* h)';
        j += 2;
      }
      for (d in 1:D) {
        for (e in d:D) {
          C[j] = ((d == e ? 1 : 2) * col(w, d) .* col(w, e) .* h)';
          j += 1;
        }
      }
    }
    // A draw far out in the unconstrained space (sigma underflowing to 0, a weight to 0) makes C
    // non-finite, and the GLM function throws on that. NUTS and L-BFGS treat a throw and -inf
    // alike, but Stan's ADVI computes log_p__ for its output draws with no catch: one wide
    // draw would end the run. -inf states the same thing without the throw.
    real c_total = sum(C);
    if (is_nan(c_total) || is_inf(c_total)) {
      target += negative_infinity();
    } else {
      target += dot_product(F_colsum, col(C, 1)) - categorical_logit_glm_lpmf(first | F, no_intercept, C)
                + normal_constant;
    }
  }
}
