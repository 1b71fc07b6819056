// The benchmark's own view of the system hiredis (the library's CHiredis is not a product).
#include <hiredis/hiredis.h>
#include <hiredis/async.h>
