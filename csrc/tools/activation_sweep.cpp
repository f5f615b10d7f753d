// Max error of the float sigmoid/tanh in cells.h against double libm, in ulps of the
// correctly rounded result, over every float (stride 1) or every stride-th bit pattern.
// Build with the extension's flags and the ISA of the clone to check, e.g.
//   g++ -O3 -fno-math-errno -fno-trapping-math -ffp-contract=fast -fopenmp -march=x86-64-v4 \
//       -std=c++17 csrc/tools/activation_sweep.cpp -o /tmp/sweep && /tmp/sweep 1
// It also fails (exit 1) on a wrong special value: NaN in -> NaN out, +-inf, +-0.
//
// Measured (GCC 12, AMD EPYC), all 2^32 floats, x86-64-v4 build: sigmoid max 2.40 ulp
//   (x = -4.1572938); tanh max 2.29 ulp (x = 0.548331), 0.68 ulp for |x| < 0.5; near
//   saturation tanh 0.51 ulp (3 <= |x| < 12, libm's float tanh: 0.51) and sigmoid 0.61 ulp
//   (3 <= x < 12). The x86-64-v3 build gave the same maxima for the previous tanh; baseline
//   x86-64 (no FMA) was checked on every 997th float.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "../cells.h"

namespace {

constexpr int64_t kChunk = 4096;

// The loops the extension has: contiguous, independent iterations (vectorised here too).
__attribute__((noinline)) void sigmoid_loop(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fastrnn::sigmoid<float>(x[i]);
}
__attribute__((noinline)) void tanh_loop(const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = fastrnn::tanh_<float>(x[i]);
}

// |got - ref| in units of the float ulp at ref (2^-149 for subnormal results).
double ulps(float got, double ref) {
  if (std::isnan(ref)) return std::isnan(got) ? 0.0 : INFINITY;
  if (std::isnan(got)) return INFINITY;
  double a = std::fabs(ref);
  int e;
  std::frexp(a, &e);  // a in [2^(e-1), 2^e)
  if (a == 0) e = -148;
  const double ulp = std::ldexp(1.0, std::max(e - 1, -126) - 23);
  return std::fabs(static_cast<double>(got) - ref) / ulp;
}

struct Worst {
  double err = 0;
  float x = 0;
};

}  // namespace

int main(int argc, char** argv) {
  const uint64_t stride = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1;
  // wt0: tanh over |x| < 0.5 (the polynomial); wsat/ssat: tanh over 3 <= |x| < 12 and sigmoid
  // over 3 <= x < 12, near saturation, where the backward's 1 - y^2 and 1 - s cancel
  Worst ws, wt, wt0, wsat, ssat;
  const uint64_t total = uint64_t(1) << 32;
  const int64_t nchunks = static_cast<int64_t>((total + stride * kChunk - 1) / (stride * kChunk));
#pragma omp parallel
  {
    Worst ls, lt, lt0, lsat, lssat;
    float x[kChunk], s[kChunk], t[kChunk];
#pragma omp for schedule(dynamic, 64)
    for (int64_t c = 0; c < nchunks; ++c) {
      int64_t n = 0;
      for (; n < kChunk; ++n) {
        const uint64_t b = (static_cast<uint64_t>(c) * kChunk + n) * stride;
        if (b >= total) break;
        x[n] = fastrnn::bits_float(static_cast<uint32_t>(b));
      }
      sigmoid_loop(x, s, n);
      tanh_loop(x, t, n);
      for (int64_t i = 0; i < n; ++i) {
        const double xd = x[i];
        const double es = ulps(s[i], 1.0 / (1.0 + std::exp(-xd)));
        const double et = ulps(t[i], std::tanh(xd));
        if (es > ls.err) ls = {es, x[i]};
        if (et > lt.err) lt = {et, x[i]};
        if (std::fabs(x[i]) < 0.5f && et > lt0.err) lt0 = {et, x[i]};
        const bool sat = std::fabs(x[i]) >= 3.0f && std::fabs(x[i]) < 12.0f;
        if (sat && et > lsat.err) lsat = {et, x[i]};
        if (sat && x[i] > 0 && es > lssat.err) lssat = {es, x[i]};
      }
    }
#pragma omp critical
    {
      if (ls.err > ws.err) ws = ls;
      if (lt.err > wt.err) wt = lt;
      if (lt0.err > wt0.err) wt0 = lt0;
      if (lsat.err > wsat.err) wsat = lsat;
      if (lssat.err > ssat.err) ssat = lssat;
    }
  }
  std::printf(
      "stride %llu: sigmoid max %.3f ulp at x=%.9g; tanh max %.3f ulp at x=%.9g "
      "(%.3f at x=%.9g for |x| < 0.5)\n",
      static_cast<unsigned long long>(stride), ws.err, ws.x, wt.err, wt.x, wt0.err, wt0.x);
  std::printf(
      "near saturation: tanh max %.3f ulp at x=%.9g (3 <= |x| < 12), sigmoid max %.3f ulp "
      "at x=%.9g (3 <= x < 12)\n",
      wsat.err, wsat.x, ssat.err, ssat.x);
  // special values, through the same loops
  const float sp[] = {NAN, -NAN, INFINITY, -INFINITY, 0.0f, -0.0f};
  const float want_s[] = {NAN, NAN, 1.0f, 0.0f, 0.5f, 0.5f};
  const float want_t[] = {NAN, NAN, 1.0f, -1.0f, 0.0f, -0.0f};
  float s[6], t[6];
  sigmoid_loop(sp, s, 6);
  tanh_loop(sp, t, 6);
  int bad = 0;
  for (int i = 0; i < 6; ++i) {
    const bool ok_s = std::isnan(want_s[i]) ? std::isnan(s[i]) : s[i] == want_s[i];
    const bool ok_t =
        std::isnan(want_t[i]) ? std::isnan(t[i]) : (t[i] == want_t[i] && std::signbit(t[i]) == std::signbit(want_t[i]));
    if (!ok_s || !ok_t) {
      std::printf("special x=%g: sigmoid %g, tanh %g\n", sp[i], s[i], t[i]);
      bad = 1;
    }
  }
  return bad;
}
