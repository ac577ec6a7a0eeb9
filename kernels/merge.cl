/* attn_merge: combine two partial attention results over disjoint key sets.
 * One work-item per row (i, h, b):
 *   lse = logaddexp(lse_a, lse_b), out = e^(lse_a - lse) out_a + e^(lse_b - lse) out_b
 * Two empty partials (lse -inf) give zeros and -inf; an empty partial's row
 * adds nothing even if it holds NaN; a NaN lse makes the row NaN. Each row is
 * read whole before it is written (element by element, in order), so out may
 * be out_a or out_b itself. Build options -DAT= -DBT= -DOT=: the storage
 * types of out_a, out_b and out (kernels/common.cl); lse is f32. */
#ifndef AT
#define AT 0
#endif
#ifndef BT
#define BT 0
#endif
#ifndef OT
#define OT 0
#endif
typedef ATTN_TYPE(AT) at;
typedef ATTN_TYPE(BT) bt;
typedef ATTN_TYPE(OT) ot;

__kernel void attn_merge(__global const at *a, long a_off, long4 a_st,
                         __global const float *la, long la_off, long4 la_st,
                         __global const bt *b, long b_off, long4 b_st,
                         __global const float *lb, long lb_off, long4 lb_st,
                         __global ot *o, long o_off, long4 o_st,
                         __global float *l, long l_off, long4 l_st, int has_lse,
                         int H, int S, int Dv) {
  const long i = get_global_id(0), h = get_global_id(1), n = get_global_id(2);
  const float xa = la[la_off + n * la_st.s0 + h * la_st.s1 + i * la_st.s2];
  const float xb = lb[lb_off + n * lb_st.s0 + h * lb_st.s1 + i * lb_st.s2];
  const float m = (isnan(xa) || isnan(xb)) ? xa + xb : fmax(xa, xb);
  float lse, wa, wb;
  if (m == -INFINITY) {
    lse = -INFINITY, wa = 0.0f, wb = 0.0f;
  } else {
    lse = m + log(exp(xa - m) + exp(xb - m));
    wa = exp(xa - lse), wb = exp(xb - lse);
  }
  const __global at *ar = a + a_off + n * a_st.s0 + h * a_st.s1 + i * a_st.s2;
  const __global bt *br = b + b_off + n * b_st.s0 + h * b_st.s1 + i * b_st.s2;
  __global ot *orow = o + o_off + n * o_st.s0 + h * o_st.s1 + i * o_st.s2;
  for (int e = 0; e < Dv; e++) {
    const float va = wa != 0.0f ? wa * ATTN_LD(AT, ar, e * a_st.s3) : 0.0f;
    const float vb = wb != 0.0f ? wb * ATTN_LD(BT, br, e * b_st.s3) : 0.0f;
    ATTN_ST(OT, orow, e * o_st.s3, va + vb);
  }
  if (has_lse) l[l_off + n * l_st.s0 + h * l_st.s1 + i * l_st.s2] = lse;
}
