"""The shared C emitter: an INTEGER GraphModule → one readable C file + a weights blob.

Used by the CPU targets (x86 now, ARM later). One module per step:

- ``lowering.py``: :class:`Lowering` walks the graph in order and legalizes each node into
  calls of the runtime (``backends/c_runtime``, ``qc_rt_<op>``): NHWC activations, int8
  activations stored as uint8 shifted by +128 (so the u8×s8 GEMM takes them as they are;
  zero points and clamps shift alike), weights repacked by the target's :class:`GemmLowering`,
  convolutions as im2col + GEMM (1×1 stride-1 ones read the NHWC rows directly), depthwise
  ones by a direct kernel. Shapes come from one reference run on the example inputs.
- ``../memory_plan.py``: :class:`MemoryPlan` gives every intermediate tensor an arena offset.
- ``render.py``: :func:`render` prints the C, one comment per step naming the source layer;
  same graph → same bytes. ``weights.py``: the blob; ``program.py``: the data in between.

The generated ABI (``qc_model.h``)::

    int qc_model_init(const void *weights, int64_t nbytes);      /* checks size and tag */
    int64_t qc_model_arena_bytes(void);
    const char *qc_model_manifest(void);                          /* JSON: I/O shapes, dtypes */
    int qc_model_run(const float *const *inputs, float *const *outputs, void *arena, int threads);
    int qc_model_run_int(const float *const *inputs, void *const *outputs, void *arena, int threads);
    int qc_model_run_checked(inputs, input_numel, n_inputs, outputs, output_numel, n_outputs,
                             as_int, arena, arena_bytes, threads);

``qc_model_run_checked`` runs either after checking every buffer's element count and the
arena size. ``qc_model_run_int`` writes each output as the integers the final Dequantize reads
(uint8 or int8). Error codes: 0 ok, negative: QC_MODEL_ERR_*, positive: a GEMM error.
"""
from .literals import c_float, c_ident
from .lower_gemm_ops import DEPTHWISE_MAX_CHANNELS
from .lowering import EMITTED_OPS, RESHAPES, SERIAL_BELOW_MACS, Lowering
from .program import (BackendUnsupported, GemmLowering, IOSpec, Program, QTensor, RequantArrays, Step, stored,
                      unsupported)
from .render import MODEL_HEADER, manifest, render
from .weights import HEADER_BYTES, WEIGHTS_TAG, WeightsBlob

__all__ = ["BackendUnsupported", "GemmLowering", "Lowering", "Program", "RequantArrays", "QTensor", "Step",
           "IOSpec", "WeightsBlob", "render", "manifest", "MODEL_HEADER", "SERIAL_BELOW_MACS",
           "DEPTHWISE_MAX_CHANNELS", "EMITTED_OPS", "RESHAPES", "HEADER_BYTES", "WEIGHTS_TAG", "c_float", "c_ident", "stored",
           "unsupported"]
