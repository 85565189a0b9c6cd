"""The doctests of scoring/ and producer/ (features/ has its own runner in
tests/test_feature_spec.py): small pure functions with their examples, run by pytest.

One test per module, so a failing example names its module; the modules that must hold
examples are checked to have some, so they cannot silently disappear.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import producer
import scoring

MODULES = sorted(
    info.name
    for package in (scoring, producer)
    for info in pkgutil.iter_modules(package.__path__, f"{package.__name__}.")
)
#: Modules whose examples are the point: at least one must run.
WITH_EXAMPLES = {"scoring.rules", "producer.pacing"}


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
    if name in WITH_EXAMPLES:
        assert result.attempted > 0, f"{name} lost its examples"
