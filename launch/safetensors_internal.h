/*
** safetensors_internal: what the header parser (safetensors_header.c) shares
** with the reader and writer (safetensors.c). Not for use elsewhere.
*/
#ifndef MOE_SAFETENSORS_INTERNAL_H
#define MOE_SAFETENSORS_INTERNAL_H

#include "launch/safetensors.h"

#define META_KEY "__metadata__"

/* Parses and checks the header JSON h[0..n) of f (f->path, data_start and
** data_size set): fills f's tensor and metadata tables (f owns them, also on
** failure; strings go into f->pool, n + 1 bytes the caller allocated). */
moe_status moe_st_parse_header(moe_st_file *f, const unsigned char *h, size_t n);

/* s is well-formed UTF-8. */
int moe_st_utf8_valid(const char *s);
/* Elements and bytes of a shape with elements of elem bytes; 0 on overflow. */
int moe_st_shape_numel(const int64_t *shape, int ndim, size_t elem, uint64_t *numel, uint64_t *bytes);

#endif
