/* features.h first: liburing.h defines _GNU_SOURCE/_XOPEN_SOURCE itself, which
   otherwise gives fd_set two incompatible definitions across C modules.
   linux/io_uring.h first: swift-system's CSystem defines io_uring_sqe behind the
   same include guard, so whichever comes second must see the kernel header. */
#include <features.h>
#include <linux/io_uring.h>
#include <liburing.h>
