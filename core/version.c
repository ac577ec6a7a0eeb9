/* The one source of libattn.so proper; everything else comes from the core
 * convenience library (libattn_core.la). */
#include "config.h"
#include "internal.h"

const char *attn_version(void) { return PACKAGE_VERSION; }
