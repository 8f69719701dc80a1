"""`make check-exact` (python -m engine demo): the float64 and float32 streamed training step
against conventional back-propagation must report exact, and print its table."""

from engine.demo import check as demo_check


def test_the_engine_check_reports_exact_in_both_precisions(capsys):
    assert demo_check.main() == 0
    out = capsys.readouterr().out
    assert "| resnet18 (to layer2) | float64 |" in out and "| resnet18 (to layer2) | float32 |" in out
    assert "exact (within 1e-10 in float64, 1e-4 in float32)" in out
