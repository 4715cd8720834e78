/* The constant parts of the ABI: versions and the one table of status names. The names are
 * MemWallError.Code's raw values; the Swift side builds its code -> status map from this table. */
#include "../../include/memwall.h"   /* the installed header, one copy */
#include "memwall_abi_internal.h"

int mw_abi_version(void) { return MW_ABI_VERSION; }

const char *mw_version(void) { return MEMWALL_RELEASE; }

const char *mw_status_name(int status) {
    switch (status) {
    case MW_OK: return "ok";
    case MW_E_SYSTEM_CALL: return "system-call";
    case MW_E_INVALID_ARGUMENT: return "invalid-argument";
    case MW_E_MALFORMED_INPUT: return "malformed-input";
    case MW_E_NOT_FOUND: return "not-found";
    case MW_E_ALREADY_EXISTS: return "already-exists";
    case MW_E_BUSY: return "busy";
    case MW_E_OUT_OF_BOUNDS: return "out-of-bounds";
    case MW_E_MISALIGNED: return "misaligned";
    case MW_E_UNSUPPORTED: return "unsupported";
    case MW_E_HARDWARE_REQUIRED: return "hardware-required";
    case MW_E_TIMED_OUT: return "timed-out";
    case MW_E_CANCELLED: return "cancelled";
    case MW_E_DISCONNECTED: return "disconnected";
    case MW_E_SHORT_TRANSFER: return "short-transfer";
    case MW_E_NO_MEMORY_ON_NODE: return "no-memory-on-node";
    case MW_E_REMOTE_ACCESS: return "remote-access";
    case MW_E_CORRUPTED: return "corrupted";
    case MW_E_MISUSE: return "misuse";
    case MW_E_MISSING_DEPENDENCY: return "missing-dependency";
    case MW_E_INTERNAL: return "internal";
    default: return "unknown";
    }
}
