#include <features.h>
#include <numa.h>
#include <numaif.h>
