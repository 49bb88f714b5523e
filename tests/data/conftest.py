"""Fixtures the data tests share: defined in test_data_api.py, offered to every test file in this folder."""

from test_data_api import offline_keras  # noqa: F401 (a fixture: pytest finds it by name in this conftest)
