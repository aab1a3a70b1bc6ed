/* qcompiler C runtime: the elementwise kernels (conventions in qc_runtime.h). */
#ifndef QC_RT_ELEMENTWISE_H
#define QC_RT_ELEMENTWISE_H

#include "qc_runtime.h"

#endif
