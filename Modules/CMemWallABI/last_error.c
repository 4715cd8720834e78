/* mw_last_error's storage: one buffer per thread, so a failure on one thread never overwrites
 * the message another thread is reading, and reading it allocates nothing. */
#include "../../include/memwall.h"   /* the installed header, one copy */
#include "memwall_abi_internal.h"
#include <string.h>

enum { LAST_ERROR_BYTES = 4096 };
static _Thread_local char last_error[LAST_ERROR_BYTES];

void memwall_abi_set_last_error(const char *message, size_t length) {
    if (message == NULL) length = 0;
    if (length >= LAST_ERROR_BYTES) {
        length = LAST_ERROR_BYTES - 1;
        /* Step back over UTF-8 continuation bytes so the cut leaves whole characters. */
        while (length > 0 && ((unsigned char)message[length] & 0xC0) == 0x80) length--;
    }
    if (length > 0) memcpy(last_error, message, length);
    last_error[length] = '\0';
}

const char *mw_last_error(void) { return last_error; }
