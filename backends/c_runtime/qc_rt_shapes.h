/* qcompiler C runtime: the shapes kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_SHAPES_H
#define QC_RT_SHAPES_H

#include "qc_runtime.h"

#endif
