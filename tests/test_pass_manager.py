"""The pass manager: ordering edits, state checks, error context, timing and dumps."""
from collections import Counter

import pytest
import torch
import torch.nn as nn

import qcompiler
from qcompiler import GraphState, Pass, PassContext, PassError, PassManager, graph_pass
from qcompiler.core.meta import graph_info
from qcompiler.core.pass_manager import NodeError


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


def traced():
    return qcompiler.trace(Tiny().eval())


@graph_pass(requires=[GraphState.FLOAT])
def count_nodes(gm, ctx):
    """A user pass: counts call nodes."""
    return Counter(calls=sum(n.op.startswith("call") for n in gm.graph.nodes))


def test_default_pipeline_order_on_one_screen():
    pm = qcompiler.default_pipeline()
    assert pm.names() == ["fold_batchnorm", "quantize_weights", "fuse_patterns", "insert_observers", "calibrate",
                          "clip_ranges", "correct_bias", "fuse_qdq", "lower_to_integer"]
    text = pm.describe()
    assert len(text.splitlines()) <= 25 and "lower_to_integer" in text and "INTEGER" in text


def test_insert_replace_remove():
    pm = qcompiler.default_pipeline()
    pm.insert_after("fold_batchnorm", count_nodes)
    assert pm.names()[1] == "count_nodes"
    pm.remove("count_nodes").insert_before("fold_batchnorm", count_nodes)
    assert pm.names()[0] == "count_nodes"
    with pytest.raises(ValueError, match="already"):
        pm.append(count_nodes)
    with pytest.raises(KeyError, match="no pass named"):
        pm.remove("nope")

    @graph_pass(name="fold_batchnorm", requires=[GraphState.FLOAT], establishes=[GraphState.BN_FOLDED])
    def my_fold(gm, ctx):
        return qcompiler.passes.FoldBatchNorm().run(gm, ctx)

    pm.replace("fold_batchnorm", my_fold)
    assert pm["fold_batchnorm"] is my_fold


def test_requires_is_checked_and_names_providers():
    pm = PassManager([qcompiler.passes.FusePatterns()])
    with pytest.raises(PassError, match=r"fuse_patterns.*BN_FOLDED") as exc:
        pm.run(traced())
    assert "none in this pipeline" in str(exc.value)


def test_failure_names_pass_node_and_history():
    @graph_pass(requires=[GraphState.BN_FOLDED])
    def explode(gm, ctx):
        for node in ctx.nodes(gm):
            if node.op == "call_function":
                raise RuntimeError("boom")

    pm = PassManager([qcompiler.passes.FoldBatchNorm(), explode])
    with pytest.raises(PassError) as exc:
        pm.run(traced())
    msg = str(exc.value)
    assert "'explode'" in msg and "['fold_batchnorm']" in msg and "boom" in msg
    assert "relu" in msg                          # the node being worked on, format_node()
    assert exc.value.node is not None and exc.value.node.name == "relu"


def test_node_error_is_attributed():
    @graph_pass()
    def picky(gm, ctx):
        out = next(n for n in gm.graph.nodes if n.op == "output")
        raise NodeError(out, "I do not like outputs")

    with pytest.raises(PassError, match="I do not like outputs") as exc:
        PassManager([picky]).run(traced())
    assert exc.value.node.op == "output"


def test_establishes_is_verified():
    class Liar(Pass):
        name = "liar"
        requires = frozenset({GraphState.FLOAT})
        establishes = frozenset({GraphState.BN_FOLDED})

        def run(self, gm, ctx):
            return None                            # claims to fold BN, does nothing

    with pytest.raises(PassError, match="claims to establish BN_FOLDED.*not folded"):
        PassManager([Liar()]).run(traced())


def test_records_timing_changes_and_dumps(tmp_path):
    pm = PassManager([qcompiler.passes.FoldBatchNorm(), count_nodes])
    result = pm.run(traced(), PassContext(), dump_dir=tmp_path)
    assert [r.name for r in result.records] == ["fold_batchnorm", "count_nodes"]
    assert result.records[0].changes["folded"] == 1 and result.records[0].seconds >= 0
    assert result.records[1].changes["calls"] == 2        # conv, relu
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00_input.txt", "01_fold_batchnorm.txt",
                                                          "02_count_nodes.txt"]
    assert "bn" in (tmp_path / "00_input.txt").read_text()
    assert "bn" not in (tmp_path / "01_fold_batchnorm.txt").read_text()
    assert GraphState.BN_FOLDED in graph_info(result.graph_module).states
    assert "fold_batchnorm" in result.summary()


def test_bad_return_type_is_reported():
    @graph_pass()
    def wrong(gm, ctx):
        return 42

    with pytest.raises(PassError, match="must return"):
        PassManager([wrong]).run(traced())
