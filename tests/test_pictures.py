"""A network input as a picture (`nbsrc.pictures`)."""

from __future__ import annotations

import numpy as np
import pytest

from nbsrc.pictures import energy_map


def test_energy_map():
    rng = np.random.default_rng(0)
    latent = rng.normal(loc=np.arange(4)[:, None, None], scale=1.0, size=(4, 5, 6)).astype(np.float32)
    energy = energy_map(latent[None])
    assert energy.shape == (5, 6)
    np.testing.assert_allclose(energy, np.sqrt((latent.astype(np.float64) ** 2).mean(axis=0)), rtol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        energy_map(np.zeros((5, 6)))
