#include <features.h>
#include <infiniband/verbs.h>
