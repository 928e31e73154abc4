/* One decoding step of one layer through the analog KV cache, in a single call.

   The Python cache (gaincell/cache.py) does this work in about 45 tensor operations per layer and token; at the sizes
   of a small model each costs microseconds of dispatch for nanoseconds of arithmetic.  gaincell/native/__init__.py
   compiles this file on first use, once with REAL = float and once with REAL = double, and calls it through ctypes.
   It is the cache's write followed by its expanded read (AnalogCacheLayer._read_expanded):

     write   per key/value head: x = a * k + b; V = DAC(x): clamp to [0, kv_max], quantise on the published grid;
             y = V - kv_offset; ring slot `slot` stores y^0 ... y^P (terms = P + 1) and the write time `now`.
     read    slot j's leak e_j = exp((t_j - now) / tau) (1 without leakage) and weights w_jp = g_p e_j^p;
             query pulses u = DAC(a_q * q + b_q) * (1 / score_saturation), the DAC on [0, 1];
             first array   phi_j = clamp(u . sum_p w_jp y_jp, 0, 1);
             second array  A_t = sum_(j in tile t) sum_p (phi_j w_jp) v_jp, tiles of array_size slots;
             readout       out = step * sum_t Q(clamp(A_t * out_scale, -limit, limit)), Q = rounding on the grid.

   The maps, DACs, HardSigmoid and readout are evaluated in REAL in the order PyTorch evaluates the Python path (x * a + b,
   the clamp, division by the step, round half to even, multiplication by the step).  Three things differ at the level
   of rounding: the arrays' sums of products are taken in another order (the tensor path weights the products
   u . y_jp, this file the powers), the powers y^p and e^p are repeated products where PyTorch calls pow, and the leak
   is libm's exp where PyTorch uses its own; a readout or HardSigmoid that sits exactly on a rounding boundary can then
   land one level over.  Compiled with -ffp-contract=off, so no multiply-add is fused; the function is cloned for AVX2
   and for the baseline instruction set, and the loader picks the one this processor runs. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef REAL
#error "compile with -DREAL=float or -DREAL=double"
#endif

/* x86-64 Linux: one AVX2 and one baseline version, chosen when the library loads (GNU ifunc); the loader rebuilds
   with GAINCELL_NO_CLONES where the C library has no ifunc */
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(GAINCELL_NO_CLONES)
#define CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CLONES
#endif

#define CONCAT_(a, b) a##b
#define CONCAT(a, b) CONCAT_(a, b)
#define DECODE_STEP CONCAT(gaincell_decode_step_, REAL)

/* Mirrors gaincell.native.DecodeParams (ctypes).  Strides count elements. */
typedef struct {
    int64_t batch, heads, kv_heads, head_dim, window, terms, array_size;
    int64_t slot;  /* ring slot this step writes */
    int64_t slots; /* slots read after the write: min(tokens written, window) */
    int64_t q_batch_stride, q_head_stride, k_batch_stride, k_head_stride, v_batch_stride, v_head_stride;
    int64_t leaks, kv_quantise, q_quantise, out_quantise, out_exact_grid;
    double now, tau;
    double kv_max, kv_step, kv_offset;    /* the K/V DAC */
    double q_step, score_scale;           /* the query DAC's step; 1 / score_saturation */
    double out_scale, out_limit, out_step; /* 1 / (output_saturation * step), 1 / step, step */
} decode_params;

static inline REAL clamp_to(REAL x, REAL lo, REAL hi) { return x < lo ? lo : (x > hi ? hi : x); }

/* round half to even in the default rounding mode, as torch.round */
static inline REAL round_even(REAL x) { return sizeof(REAL) == sizeof(float) ? (REAL)nearbyintf((float)x) : (REAL)nearbyint((double)x); }

/* u . y over n numbers, in eight interleaved partial sums (vectorisable without reassociating one sum). */
static inline REAL dot(const REAL *restrict u, const REAL *restrict y, int64_t n) {
    REAL acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int k = 0; k < 8; k++) acc[k] += u[d + k] * y[d + k];
    REAL s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++) s += u[d] * y[d];
    return s;
}

/* Write one token's K and V into the ring, then read every query head through both arrays.
   query (B, H, D), key and value (B, Hkv, D) with the strides in p and unit stride over D; maps: per-head scale and
   bias; poly: the cell polynomial g_0 ... g_P; powers (B, Hkv, 2, W, terms, D) and t_write (B, W), contiguous, are
   updated in place; out (B, H, D), contiguous.  Returns 0, or 1 when scratch memory could not be allocated. */
CLONES int DECODE_STEP(const decode_params *p, const REAL *query, const REAL *key, const REAL *value, const REAL *q_scale,
                const REAL *q_bias, const REAL *k_scale, const REAL *k_bias, const REAL *v_scale, const REAL *v_bias,
                const REAL *poly, REAL *powers, double *t_write, REAL *out) {
    const int64_t B = p->batch, HKV = p->kv_heads, D = p->head_dim, W = p->window, T = p->terms;
    const int64_t size = p->array_size, n = p->slots, G = p->heads / p->kv_heads;
    const REAL kv_max = (REAL)p->kv_max, kv_step = (REAL)p->kv_step, kv_offset = (REAL)p->kv_offset;
    const REAL q_step = (REAL)p->q_step, score_scale = (REAL)p->score_scale;
    const REAL out_scale = (REAL)p->out_scale, out_limit = (REAL)p->out_limit, out_step = (REAL)p->out_step;

    REAL *weights = malloc(sizeof(REAL) * (size_t)(n * T)); /* w_jp of one batch row */
    REAL *pulses = malloc(sizeof(REAL) * (size_t)D);        /* one head's query pulses */
    REAL *phi = malloc(sizeof(REAL) * (size_t)n);           /* one head's first-array outputs */
    REAL *cell = malloc(sizeof(REAL) * (size_t)D);          /* one key slot's cell responses */
    REAL *charge = malloc(sizeof(REAL) * (size_t)D);        /* one tile's charge */
    REAL *sum = malloc(sizeof(REAL) * (size_t)D);           /* the digital sum over tiles */
    if (!weights || !pulses || !phi || !cell || !charge || !sum) {
        free(weights), free(pulses), free(phi), free(cell), free(charge), free(sum);
        return 1;
    }
    for (int64_t b = 0; b < B; b++) {
        /* ---- write: the DAC of K and V, their powers into the slot, the write time */
        for (int64_t hk = 0; hk < HKV; hk++) {
            for (int64_t s = 0; s < 2; s++) {
                const REAL *x = s == 0 ? key + b * p->k_batch_stride + hk * p->k_head_stride
                                       : value + b * p->v_batch_stride + hk * p->v_head_stride;
                const REAL a = s == 0 ? k_scale[hk] : v_scale[hk], c = s == 0 ? k_bias[hk] : v_bias[hk];
                REAL *cell = powers + (((b * HKV + hk) * 2 + s) * W + p->slot) * T * D;
                for (int64_t d = 0; d < D; d++) {
                    REAL level = clamp_to(x[d] * a + c, (REAL)0, kv_max);
                    if (p->kv_quantise) level = round_even(level / kv_step) * kv_step;
                    const REAL y = level - kv_offset;
                    REAL power = 1;
                    for (int64_t e = 0; e < T; e++) {
                        cell[e * D + d] = power;
                        power *= y;
                    }
                }
            }
        }
        t_write[b * W + p->slot] = p->now;
        /* ---- the slots' weights g_p e_j^p */
        for (int64_t j = 0; j < n; j++) {
            const REAL leak = p->leaks ? (REAL)exp((t_write[b * W + j] - p->now) / p->tau) : (REAL)1;
            REAL power = 1;
            for (int64_t e = 0; e < T; e++) {
                weights[j * T + e] = power * poly[e];
                power *= leak;
            }
        }
        for (int64_t h = 0; h < p->heads; h++) {
            const int64_t hk = h / G;
            const REAL *keys = powers + ((b * HKV + hk) * 2 + 0) * W * T * D;
            const REAL *values = powers + ((b * HKV + hk) * 2 + 1) * W * T * D;
            const REAL *q = query + b * p->q_batch_stride + h * p->q_head_stride;
            for (int64_t d = 0; d < D; d++) {
                REAL u = clamp_to(q[d] * q_scale[h] + q_bias[h], (REAL)0, (REAL)1);
                if (p->q_quantise) u = round_even(u / q_step) * q_step;
                pulses[d] = u * score_scale;
            }
            /* ---- first array: per slot, the cell responses f(e_j y_jd) = sum_p w_jp y_jd^p, then their dot product
               with the pulses and the HardSigmoid */
            for (int64_t j = 0; j < n; j++) {
                const REAL *y = keys + j * T * D;
                for (int64_t d = 0; d < D; d++) cell[d] = weights[j * T] * y[d];
                for (int64_t e = 1; e < T; e++) {
                    const REAL w = weights[j * T + e];
                    for (int64_t d = 0; d < D; d++) cell[d] += w * y[e * D + d];
                }
                phi[j] = clamp_to(dot(pulses, cell, D), (REAL)0, (REAL)1);
            }
            /* ---- second array, tile by tile, and the readout */
            for (int64_t d = 0; d < D; d++) sum[d] = 0;
            for (int64_t start = 0; start < n; start += size) {
                const int64_t stop = start + size < n ? start + size : n;
                for (int64_t d = 0; d < D; d++) charge[d] = 0;
                for (int64_t j = start; j < stop; j++) {
                    if (phi[j] == 0) continue; /* adds nothing */
                    for (int64_t e = 0; e < T; e++) {
                        const REAL w = phi[j] * weights[j * T + e];
                        const REAL *v = values + (j * T + e) * D;
                        for (int64_t d = 0; d < D; d++) charge[d] += w * v[d];
                    }
                }
                for (int64_t d = 0; d < D; d++) {
                    REAL level = clamp_to(charge[d] * out_scale, -out_limit, out_limit);
                    if (p->out_quantise)
                        level = p->out_exact_grid ? round_even(level + out_limit) - out_limit : round_even(level);
                    sum[d] += level;
                }
            }
            REAL *o = out + (b * p->heads + h) * D;
            for (int64_t d = 0; d < D; d++) o[d] = sum[d] * out_step;
        }
    }
    free(weights), free(pulses), free(phi), free(cell), free(charge), free(sum);
    return 0;
}
