/* What the Swift side of libmemwall needs from C and no caller sees (hidden visibility:
 * the version script exports mw_* only, and these are not mw_*). */
#ifndef MEMWALL_ABI_INTERNAL_H
#define MEMWALL_ABI_INTERNAL_H

#include <stddef.h>

/* The release mw_version() reports (and the Makefile writes into memwall.pc). */
#define MEMWALL_RELEASE "0.1.0"

/* Copies `length` bytes of UTF-8 into the calling thread's last-error buffer (cut at a
 * character boundary to fit, always NUL-terminated). */
void memwall_abi_set_last_error(const char *message, size_t length);

#endif
