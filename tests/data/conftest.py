"""Fixtures of the data tests."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.data.test_pairs import mixed_rows


@pytest.fixture
def raw() -> pd.DataFrame:
    return pd.DataFrame(mixed_rows())
