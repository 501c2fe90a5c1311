"""The demo's command line: boxes too small for its particles' SNR are refused."""
import pytest

from cryohess_plugin.demo import MIN_BOX, parseArgs


def test_default_box_is_the_smallest_accepted():
    assert parseArgs([]).box == MIN_BOX
    assert parseArgs(["--box", str(MIN_BOX + 32)]).box == MIN_BOX + 32


def test_small_box_is_refused_with_the_fix(capsys):
    with pytest.raises(SystemExit) as stopped:
        parseArgs(["--box", "32"])
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "--box 32 is too small" in message and "use --box %d or larger" % MIN_BOX in message
