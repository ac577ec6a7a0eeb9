/* Element types: names, sizes, parsing. The conversions themselves are
 * inlines of the plugin SDK (attn_plugin.h), shared with the backends. */
#include "internal.h"

#include <string.h>

int attn__dtype_valid(attn_dtype t) { return t == ATTN_F32 || t == ATTN_F16 || t == ATTN_BF16; }

const char *attn_dtype_str(attn_dtype t) {
  switch (t) {
  case ATTN_F32: return "f32";
  case ATTN_F16: return "f16";
  case ATTN_BF16: return "bf16";
  }
  return "?";
}

size_t attn_dtype_size(attn_dtype t) {
  switch (t) {
  case ATTN_F32: return 4;
  case ATTN_F16:
  case ATTN_BF16: return 2;
  }
  return 0;
}

attn_status attn_dtype_parse(const char *s, attn_dtype *t) {
  ATTN_ENTER("attn_dtype_parse");
  if (!s) return attn__error(ATTN_ERR_INVALID_ARG, "s: NULL");
  if (!t) return attn__error(ATTN_ERR_INVALID_ARG, "t: NULL");
  static const struct {
    const char *name;
    attn_dtype t;
  } names[] = {{"f32", ATTN_F32},  {"float32", ATTN_F32}, {"f16", ATTN_F16},
               {"float16", ATTN_F16}, {"bf16", ATTN_BF16}, {"bfloat16", ATTN_BF16}};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
    if (strcmp(s, names[i].name) == 0) {
      *t = names[i].t;
      return ATTN_OK;
    }
  return attn__error(ATTN_ERR_INVALID_ARG, "s: \"%.32s\" is not f32, f16 or bf16", s);
}
