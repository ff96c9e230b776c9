"""Whether a test failed, as fixtures see it at teardown (set by tests/conftest.py's report hook)."""

from __future__ import annotations

import pytest

FAILED = pytest.StashKey[bool]()
