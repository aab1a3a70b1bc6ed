/* qcompiler C runtime: the transformer kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_TRANSFORMER_H
#define QC_RT_TRANSFORMER_H

#include "qc_runtime.h"

#endif
