"""Configuration precedence, validation messages and `extproc validate`."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from extproc.cli import main
from extproc.config import ConfigError, load_config
from extproc.detect.findings import Severity


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults_are_safe() -> None:
    config = load_config(environ={})
    assert config.enable_security_analysis is True
    assert config.enforcement.mode == "block"
    assert config.enforcement.min_severity is Severity.HIGH
    assert config.pii.action == "alert_only"
    assert config.server.failure_mode == "closed"
    assert config.envoy_message_timeout_ms > config.security_analysis_timeout_ms


def test_precedence_file_then_env_then_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pii:\n  action: alert_and_redact\nserver:\n  grpc_port: 6000\n  admin_port: 6001\n",
    )
    env = {"EXTPROC_SERVER__GRPC_PORT": "7000", "EXTPROC_ENFORCEMENT__MIN_SEVERITY": "medium"}
    config = load_config(path, environ=env, overrides=[("server.grpc_port", 8000)])
    assert config.pii.action == "alert_and_redact"  # file
    assert config.server.admin_port == 6001  # file
    assert config.enforcement.min_severity is Severity.MEDIUM  # env
    assert config.server.grpc_port == 8000  # CLI beats env


def test_every_error_is_reported_with_its_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "enforcment:\n  mode: block\nenforcement:\n  mode: blok\n  min_severity: hgh\n"
        "  categories:\n    - finding_type: pii\n      acton: flag\nserver:\n  grpc_port: 99999\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={"EXTPROC_PII__ACTON": "alert_only"})
    problems = "\n".join(info.value.problems)
    assert "enforcment: unknown setting; did you mean 'enforcement'?" in problems
    assert "enforcement.mode: Input should be 'block', 'flag' or 'log' (got 'blok')" in problems
    assert "enforcement.min_severity: unknown severity 'hgh'" in problems
    assert "enforcement.categories[0].acton: unknown setting; did you mean 'action'?" in problems
    assert "pii.acton: unknown setting; did you mean 'action'?" in problems
    assert "server.grpc_port: Input should be less than or equal to 65535" in problems
    assert len(info.value.problems) == 7  # the six above plus the missing categories[0].action


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "pii:\n  action: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert f"{path}:" in info.value.problems[0]
    assert "invalid YAML" in info.value.problems[0]


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_validate_prints_resolved_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "pii:\n  action: redact_silent\n")
    assert main(["validate", "--config", str(path), "--set", "server.workers=2"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pii"]["action"] == "redact_silent"
    assert printed["server"]["workers"] == 2
    assert printed["enforcement"]["min_severity"] == "high"


def test_validate_reports_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "pii:\n  acton: x\nenforcement:\n  min_confidence: 2\n")
    assert main(["validate", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"invalid configuration {path}" in err
    assert "  - pii.acton: unknown setting; did you mean 'action'?" in err
    assert "  - enforcement.min_confidence: Input should be less than or equal to 1" in err


def test_bad_set_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--set", "novalue"]) == 1
    assert "expected PATH=VALUE" in capsys.readouterr().err


def test_serve_refuses_a_bad_rule_pack(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - id: bad.one\n    category: nonsense\n    pattern: x\n    severity: high\n"
        "    confidence: 0.5\n    description: d\n"
    )
    assert main(["serve", "--set", f"security_analysis.rule_files=[{rules}]"]) == 1
    err = capsys.readouterr().err
    assert "invalid rule pack" in err
    assert "rule 'bad.one'" in err


def test_ml_budget_must_fit_inside_the_analysis_timeout() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={}, overrides=[("security_analysis_timeout_ms", 200)])
    assert "ml_budget_ms (250) must be below security_analysis_timeout_ms (200)" in str(info.value)
    ok = load_config(
        environ={},
        overrides=[("security_analysis_timeout_ms", 200), ("security_analysis.ml_budget_ms", 150)],
    )
    assert ok.security_analysis.ml_budget_ms == 150


def test_ml_settings_reject_bad_values() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            environ={},
            overrides=[
                ("security_analysis.operating_point", "paranoid"),
                ("security_analysis.ml_threshold", 1.5),
                ("security_analysis.ml_device", "tpu"),
            ],
        )
    text = str(info.value)
    for key in ("operating_point", "ml_threshold", "ml_device"):
        assert f"security_analysis.{key}" in text
