"""qcompiler: a compiler-style int8 quantization framework for PyTorch models.

    qm = qcompiler.quantize(model, calibration_batches)     # float → INTEGER graph (reference)
    print(qm.report())
    fast = qcompiler.compile(qm, target="reference")
"""
from qcompiler.core.meta import GraphState
from qcompiler.core.pass_manager import Pass, PassContext, PassError, PassManager, PassResult, graph_pass
from qcompiler.core.qconfig import Capabilities, QConfig, TensorSpec
from qcompiler.core.report import sqnr_db
from qcompiler.core.tracing import TraceError, trace
from qcompiler.api import QuantizedModel, available_targets, compile, quantize  # noqa: A004
from qcompiler.pipeline import default_pipeline

__version__ = "0.1.0"

__all__ = ["trace", "quantize", "compile", "QuantizedModel", "PassManager", "Pass", "PassContext",
           "PassResult", "PassError", "graph_pass", "GraphState", "QConfig", "TensorSpec",
           "Capabilities", "default_pipeline", "available_targets", "TraceError", "sqnr_db"]
