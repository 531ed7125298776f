"""The package's top level loads its names lazily: the data pipeline imports without timm or the model code."""

import subprocess
import sys

import pytest

import stgcma_fast


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return set(res.stdout.split())


def test_data_pipeline_imports_without_timm_or_model_code():
    loaded = _modules_after("import stgcma_fast.data, stgcma_fast.data.loader, stgcma_fast.data.frontend")
    assert "stgcma_fast.data.loader" in loaded  # the statement ran
    assert not {"timm", "stgcma_fast.model", "stgcma_fast.backbone"} & loaded


def test_model_names_load_on_first_use():
    loaded = _modules_after("from stgcma_fast import FastSTGCMA")
    assert {"timm", "stgcma_fast.model"} <= loaded


@pytest.mark.parametrize("name", stgcma_fast.__all__)
def test_every_public_name_resolves(name):
    value = getattr(stgcma_fast, name)
    assert getattr(value, "__name__", name) == name or name == "PRESETS"
    assert name in dir(stgcma_fast)


def test_all_names_every_lazy_name():
    assert sorted(stgcma_fast.__all__) == sorted(stgcma_fast._LAZY)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        stgcma_fast.Nope  # noqa: B018
