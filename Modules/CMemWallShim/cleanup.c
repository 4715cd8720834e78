#define _GNU_SOURCE
#include "CMemWallCleanup.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A slot is FREE, CLAIMED while its owner fills or empties it, or ARMED: only
   ARMED slots are touched by the exit and signal handlers. */
enum { FREE = 0, CLAIMED = 1, ARMED = 2 };

struct cleanup_slot {
    _Atomic int state;
    int dirfd;
    dev_t dev;
    ino_t ino;
    char name[256];
};

static struct cleanup_slot slots[MEMWALL_CLEANUP_SLOTS];
static pthread_once_t handlers_once = PTHREAD_ONCE_INIT;
static const int handled_signals[] = { SIGINT, SIGTERM, SIGHUP };

/* Unlinks the slot's name when it still names the registered inode. Only
   async-signal-safe calls. */
static int remove_slot_file(struct cleanup_slot *s) {
    struct stat st;
    if (fstatat(s->dirfd, s->name, &st, AT_SYMLINK_NOFOLLOW) != 0) return 0;   /* already gone */
    if (st.st_dev != s->dev || st.st_ino != s->ino) return 0;                  /* not ours any more */
    return unlinkat(s->dirfd, s->name, 0);
}

static void remove_all(void) {
    for (int i = 0; i < MEMWALL_CLEANUP_SLOTS; i++) {
        int expected = ARMED;
        /* Claim the slot so that the owner (or a second signal) does not work on it too. */
        if (atomic_compare_exchange_strong(&slots[i].state, &expected, CLAIMED)) {
            (void)remove_slot_file(&slots[i]);
            /* Left CLAIMED: the process is ending. */
        }
    }
}

static void on_signal(int sig) {
    int saved = errno;
    remove_all();
    errno = saved;
    /* SA_RESETHAND restored the default action; the signal is blocked inside
       the handler, so it is delivered (and ends the process) on return. */
    raise(sig);
}

static void on_exit_handler(void) { remove_all(); }

static void install_handlers(void) {
    atexit(on_exit_handler);
    for (size_t i = 0; i < sizeof handled_signals / sizeof handled_signals[0]; i++) {
        struct sigaction old;
        if (sigaction(handled_signals[i], NULL, &old) != 0) continue;
        /* Ignored (nohup) or someone else's handler: leave it as it is. */
        if ((old.sa_flags & SA_SIGINFO) || old.sa_handler != SIG_DFL) continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        for (size_t j = 0; j < sizeof handled_signals / sizeof handled_signals[0]; j++)
            sigaddset(&sa.sa_mask, handled_signals[j]);
        sa.sa_flags = SA_RESETHAND;
        (void)sigaction(handled_signals[i], &sa, NULL);
    }
}

int memwall_cleanup_register(int dirfd, const char *name, int fd) {
    size_t len = strlen(name);
    if (len == 0 || strchr(name, '/') != NULL) { errno = EINVAL; return -1; }
    if (len >= sizeof slots[0].name) { errno = ENAMETOOLONG; return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0) return -1;
    pthread_once(&handlers_once, install_handlers);
    for (int i = 0; i < MEMWALL_CLEANUP_SLOTS; i++) {
        int expected = FREE;
        if (!atomic_compare_exchange_strong(&slots[i].state, &expected, CLAIMED)) continue;
        slots[i].dirfd = dirfd;
        slots[i].dev = st.st_dev;
        slots[i].ino = st.st_ino;
        memcpy(slots[i].name, name, len + 1);
        atomic_store(&slots[i].state, ARMED);
        return i;
    }
    errno = ENOSPC;
    return -1;
}

/* Takes an ARMED slot back from the handlers; false when a handler has it. */
static int claim(int slot) {
    if (slot < 0 || slot >= MEMWALL_CLEANUP_SLOTS) return 0;
    int expected = ARMED;
    return atomic_compare_exchange_strong(&slots[slot].state, &expected, CLAIMED);
}

static void release(int slot) {
    int dirfd = slots[slot].dirfd;
    atomic_store(&slots[slot].state, FREE);
    close(dirfd);
}

int memwall_cleanup_remove(int slot) {
    if (!claim(slot)) return 0;
    int r = remove_slot_file(&slots[slot]);
    int e = errno;
    release(slot);
    errno = e;
    return r;
}

void memwall_cleanup_forget(int slot) {
    if (claim(slot)) release(slot);
}

int memwall_cleanup_count(void) {
    int n = 0;
    for (int i = 0; i < MEMWALL_CLEANUP_SLOTS; i++)
        if (atomic_load(&slots[i].state) == ARMED) n++;
    return n;
}

int memwall_flush_standard_output(void) {
    if (fflush(stdout) != 0) return -1;
    if (ferror(stdout)) { errno = EIO; return -1; }
    return 0;
}

int memwall_o_path(void) { return O_PATH; }
