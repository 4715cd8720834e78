#include <features.h>
#include <hwloc.h>
