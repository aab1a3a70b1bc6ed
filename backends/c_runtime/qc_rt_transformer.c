/* qcompiler C runtime: the transformer kernels. Each kernel's comment names the integer op of
 * qcompiler/core it implements bit for bit. */
#include "qc_rt_transformer.h"
