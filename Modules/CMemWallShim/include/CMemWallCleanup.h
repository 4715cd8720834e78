#ifndef CMEMWALLCLEANUP_H
#define CMEMWALLCLEANUP_H
/* Files this process created and must not leave behind: removed when their
   owner lets go, at exit(3), and on SIGINT, SIGTERM and SIGHUP. The table is
   fixed-size and the signal handler only calls async-signal-safe functions
   (fstat, fstatat, unlinkat, sigaction, raise), so removal works even when a
   signal interrupts malloc or a lock holder. SIGKILL cannot be caught: a file
   may remain after it. */
#include <stdint.h>

/* How many files can be registered at once. */
#define MEMWALL_CLEANUP_SLOTS 64

/* Registers `name` in the directory `dirfd` (ownership of dirfd passes to the
   table on success) as the file open on `fd`; the file is removed only while
   that name still refers to the same inode, so a name reused by someone else is
   never removed. Installs the exit and signal handlers on first use (a signal
   whose disposition is not the default, e.g. SIGHUP ignored under nohup, is left
   alone). Returns the slot, or -1 with errno (ENOSPC: table full;
   ENAMETOOLONG; or fstat's errno). */
int memwall_cleanup_register(int dirfd, const char *name, int fd);

/* Removes the slot's file now (if its name still refers to the registered
   inode) and frees the slot. Returns 0, or -1 with unlinkat's errno. */
int memwall_cleanup_remove(int slot);

/* Frees the slot and keeps the file. */
void memwall_cleanup_forget(int slot);

/* open(2) flag O_PATH (a directory handle for *at calls, no read permission needed). */
int memwall_o_path(void);

/* Number of registered files (for tests). */
int memwall_cleanup_count(void);

/* Flushes C stdio's standard output (where Swift's print writes) and reports
   whether everything written to it so far reached the kernel: 0, or -1 with
   errno (errno is EIO when an earlier, buffered write failed unseen). */
int memwall_flush_standard_output(void);
#endif
