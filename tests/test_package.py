"""The package namespace (`nbsrc/__init__.py`)."""

from __future__ import annotations

import subprocess
import sys


def test_package_exports_light_names_without_torch():
    import nbsrc
    from nbsrc.config import Config, get_preset, list_presets
    from nbsrc.notebook import notebook_config

    assert nbsrc.Config is Config and nbsrc.get_preset is get_preset and nbsrc.list_presets is list_presets
    assert nbsrc.notebook_config is notebook_config
    assert sorted(nbsrc.__all__) == ["Config", "__version__", "get_preset", "list_presets", "notebook_config"]
    code = "import sys, nbsrc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", "import nbsrc must not import torch"
