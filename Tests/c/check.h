/* The checks the C test programs share: each prints "ok N - what" or "not ok N - what: why",
 * and the program ends with "N passed, M failed" and exits with the number failed. */
#ifndef MEMWALL_TEST_CHECK_H
#define MEMWALL_TEST_CHECK_H

#include "memwall.h"

#include <stdio.h>
#include <string.h>

static int checks, failures;

static void check(int ok, const char *what, const char *why) {
    checks++;
    if (ok) {
        printf("ok %d - %s\n", checks, what);
    } else {
        failures++;
        printf("not ok %d - %s: %s\n", checks, what, why ? why : "");
    }
}

/* A call expected to fail with `status` and a last-error message mentioning `needle`. */
static void check_fails(int rc, int status, const char *needle, const char *what) {
    char why[700];
    const char *message = mw_last_error();
    snprintf(why, sizeof why, "status %d (%s), expected %d (%s); message \"%s\"", rc, mw_status_name(rc), status,
             mw_status_name(status), message);
    check(rc == status && strstr(message, needle) != NULL, what, why);
}

/* The closing line, and the exit status. */
static int finish(void) {
    printf("%d passed, %d failed\n", checks - failures, failures);
    return failures;
}

#endif
