"""Latent statistics (`nbsrc.latent_stats`)."""

from __future__ import annotations

import numpy as np
import pytest

from nbsrc import latent_stats


def test_latent_statistics():
    rng = np.random.default_rng(0)
    latents = [
        rng.normal(loc=np.arange(4)[:, None, None], scale=1.0, size=(4, 5, 6)).astype(np.float32) for _ in range(3)
    ]
    result = latent_stats.latent_statistics(latents, bins=20)
    np.testing.assert_allclose(result["mean"], np.arange(4), atol=0.4)
    assert result["hist"].sum() == 3 * 4 * 5 * 6 and len(result["edges"]) == 21 and result["count"] == 3
    with pytest.raises(ValueError, match="one C"):
        latent_stats.latent_statistics([np.zeros((4, 2, 2)), np.zeros((3, 2, 2))])
