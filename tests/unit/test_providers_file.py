"""The providers file of the CLI/library: keys come from the environment, errors name the entry, never a key."""

from __future__ import annotations

from pathlib import Path

import pytest

from crewflow.entrypoints.providers_file import ProvidersFileError, load_providers_file

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return path


def test_providers_are_read_with_keys_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, """
budget: 2.5
providers:
  - {name: a, kind: openai, model: m, base_url: 'http://127.0.0.1:1/v1', api_key_env: KEY_A, priority: 2,
     price: {input_per_1k: 0.1, output_per_1k: 0.2}}
  - {name: b, kind: scripted, model: s}
""")
    loaded = load_providers_file(path, env={"KEY_A": "sk-very-secret-value"})
    a, b = loaded.providers
    assert (a.name, a.kind, a.priority, a.price.input_per_1k, a.price.output_per_1k) == ("a", "openai", 2, 0.1, 0.2)
    assert a.api_key == "sk-very-secret-value"
    assert "sk-very-secret-value" not in repr(a)
    assert b.api_key == ""
    assert loaded.budget is not None and loaded.budget.limit == 2.5


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("providers: []", "non-empty 'providers'"),
        ("providers: [{name: a, kind: openai}]", "model is required"),
        ("providers: [{name: a, kind: openai, model: m, api_key: sk-inline}]", "api_key_env"),
        ("providers: [{name: a, kind: openai, model: m, api_key_env: NOT_SET_ANYWHERE}]", "NOT_SET_ANYWHERE"),
        ("providers: [{name: a, kind: x, model: m}, {name: a, kind: x, model: m}]", "unique"),
        ("budget: -1\nproviders: [{name: a, kind: x, model: m}]", "budget"),
        ("providers: [{name: a, kind: x, model: m, price: {input_per_1k: cheap}}]", "input_per_1k"),
    ],
)
def test_a_malformed_file_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProvidersFileError, match=message) as info:
        load_providers_file(write(tmp_path, text), env={})
    assert "sk-inline" not in str(info.value)


def test_a_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ProvidersFileError, match="no such providers file"):
        load_providers_file(tmp_path / "nope.yaml")
