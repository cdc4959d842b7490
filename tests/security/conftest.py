"""Fixtures for the security tests: the tiny checkpoint and an `engine.LLM` reference."""

from __future__ import annotations

from tests.service.conftest import reference_llm, tiny_model  # noqa: F401 - fixtures
