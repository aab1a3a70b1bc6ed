"""docs/supported-ops.md is what the op table and the targets' capabilities say today."""
from pathlib import Path

from click.testing import CliRunner

from qcompiler.cli import main
from qcompiler.supported_ops import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "supported-ops.md"


def test_supported_ops_table_matches_the_code():
    assert DOC.read_text() == render(), "docs/supported-ops.md is stale: run `qcompiler supported-ops --write " \
                                        "docs/supported-ops.md`"


def test_cli_prints_the_table():
    result = CliRunner().invoke(main, ["supported-ops"])
    assert result.exit_code == 0 and result.output == render()
