"""Every registered recipe rebuilds through a frozen config that rejects unknown keys."""

from __future__ import annotations

import pytest

from analysis.recipes import RECIPE_MODULES, registry


def test_every_recipe_module_registers_kinds():
    kinds = registry()
    assert len(kinds) >= 20, sorted(kinds)
    for name in RECIPE_MODULES:
        assert name.endswith(".recipes"), name


@pytest.mark.parametrize("kind", sorted(registry()))
def test_unknown_config_keys_are_rejected_before_any_work(kind, tiny_lm):
    fn = registry()[kind]
    with pytest.raises(ValueError, match="unknown .*config keys"):
        fn(tiny_lm, {"zz_not_a_setting": 1})
