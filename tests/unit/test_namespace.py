"""Namespaces: one checked form (1-64 of letters, digits, '_' and '-'; not 'rq'), wherever the
namespace comes from, since every key gpufleet writes starts with it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from gpufleet.cli.main import cli
from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.settings import Settings

BAD = [
    "",
    "a\nb",
    "rq",  # gpufleet's own keys would be rq:nodes, rq:batch:...: inside rq's key space
    "x" * 65,
    "a:b",  # ':' separates the parts of a key name
    "a.b",  # '.' separates the parts of an rq queue name
    "fleet*1",  # '*' is SORT's wildcard (snapshot.py)
    "a b",
    "flotte-é",
]


@pytest.mark.parametrize("namespace", BAD)
def test_settings_refuse_a_namespace_that_cannot_prefix_keys(namespace: str) -> None:
    with pytest.raises(SettingsError, match="namespace"):
        Settings(namespace=namespace)
    with pytest.raises(SettingsError, match="namespace"):
        Settings().with_overrides(namespace=namespace)


def test_a_namespace_from_the_environment_is_checked_too() -> None:
    with pytest.raises(SettingsError, match="'a:b' must be 1-64 characters"):
        Settings.from_env({"GPUFLEET_NAMESPACE": "a:b"})


@pytest.mark.parametrize("namespace", ["gpufleet", "x" * 64, "Fleet_2-eu", "RQ", "rq2"])
def test_letters_digits_underscore_and_dash_are_a_namespace(namespace: str) -> None:
    assert Settings(namespace=namespace).namespace == namespace


@pytest.mark.parametrize("namespace", ["a:b", "rq", ""])
def test_a_bad_namespace_flag_is_a_usage_error(namespace: str) -> None:
    result = CliRunner().invoke(cli, ["--namespace", namespace, "status"])
    assert result.exit_code == 2 and "Invalid value for '--namespace'" in result.output
    assert "Traceback" not in result.output


def test_a_bad_namespace_env_var_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["status"], env={"GPUFLEET_NAMESPACE": "a b"})
    assert result.exit_code == 2 and "'a b' must be 1-64 characters" in result.output
