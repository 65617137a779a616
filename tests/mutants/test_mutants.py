"""The mutants still apply to the code, and the unit tests catch every one of them.

The integration tests of each mutant (aimed faults on the real broker) take a few
minutes in all: run them with `python -m tests.mutants --repeat 5` (README, "Mutants").
"""

import pytest

from tests.mutants import MUTANTS
from tests.mutants.runner import main

pytestmark = pytest.mark.mutants


def test_every_mutant_patch_applies_to_the_current_code(capsys: pytest.CaptureFixture[str]):
    assert main(["--check"]) == 0, capsys.readouterr().err


def test_every_mutant_names_tests_and_a_unit_test_among_them():
    for mutant in MUTANTS:
        assert mutant.patch.exists(), mutant.name
        assert mutant.unit_tests(), f"{mutant.name}: no unit test catches it in the default run"


def test_the_unit_tests_catch_every_mutant(capsys: pytest.CaptureFixture[str]):
    status = main(["--unit", "--jobs", "4", "--timeout", "20"])
    out = capsys.readouterr()
    assert status == 0, out.out + out.err
