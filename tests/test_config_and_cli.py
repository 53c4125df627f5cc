"""Configuration (typed, validated with key and line) and the CLI, run as a user would run it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gengate.cli.main import main
from gengate.errors import ConfigError
from gengate.settings import load_settings

GOOD = """\
server:
  port: 9000
storage:
  data_dir: {data}
providers:
  openai:
    type: openai
    base_url: https://api.openai.example/v1
    api_key: env:TEST_UPSTREAM_KEY
models:
  gpt:
    deployments:
      - {{provider: openai, model: gpt-4o-mini}}
pricing:
  gpt-4o-mini: {{input: 0.15, output: 0.6}}
policy:
  teams:
    research: {{rpm: 60, budget: {{usd: 10, period: month}}}}
"""


def test_embedded_defaults_need_no_file() -> None:
    settings = load_settings(None, environ={})
    assert {"offline", "local", "offline-embed"} <= set(settings.models)
    assert settings.database_url.startswith("sqlite+aiosqlite:///")


def test_env_references_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.format(data=tmp_path))
    settings = load_settings(path, environ={"TEST_UPSTREAM_KEY": "sk-upstream", "GENGATE_SERVER__PORT": "9100"})
    api_key = settings.providers["openai"].api_key
    assert api_key is not None and api_key.get_secret_value() == "sk-upstream"
    assert "sk-upstream" not in repr(settings)
    assert settings.server.port == 9100
    assert settings.policy.teams["research"].rpm == 60


@pytest.mark.parametrize(
    ("patch", "expected"),
    [
        (("port: 9000", "port: lots"), ":2: server.port:"),
        (("gpt-4o-mini: {input: 0.15", "gpt-4o-mini: {input: -1"), ":15: pricing.gpt-4o-mini.input:"),
        (("type: openai", "type: carrier-pigeon"), ":7: providers.openai.type:"),
        (("rpm: 60", "rpm: 60, colour: red"), "policy.teams.research.colour: Extra inputs are not permitted"),
        (("provider: openai, model", "provider: nobody, model"), "unknown provider 'nobody'"),
    ],
)
def test_config_errors_name_key_and_line(tmp_path: Path, patch: tuple[str, str], expected: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.format(data=tmp_path).replace(*patch))
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={"TEST_UPSTREAM_KEY": "x"})
    assert expected in err.value.message


def test_missing_env_secret_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.format(data=tmp_path))
    with pytest.raises(ConfigError) as err:
        load_settings(path, environ={})
    assert "TEST_UPSTREAM_KEY" in err.value.message and ":9:" in err.value.message


def test_cli_config_check(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(GOOD.format(data=tmp_path))
    runner = CliRunner()
    ok = runner.invoke(main, ["config", "check", str(path)], env={"TEST_UPSTREAM_KEY": "x"})
    assert ok.exit_code == 0 and "1 models" in ok.output
    path.write_text("server: [unclosed")
    bad = runner.invoke(main, ["config", "check", str(path)])
    assert bad.exit_code == 1 and "not valid YAML" in bad.output


def test_cli_reads_the_current_directorys_gengate_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A newcomer writes gengate.yaml and runs commands next to it: no --config needed; an explicit one still wins.
    (tmp_path / "gengate.yaml").write_text(
        f"storage: {{data_dir: {tmp_path / 'data'}}}\n"
        "models: {house-model: {deployments: [{provider: offline, model: house}]}}\n"
    )
    other = tmp_path / "other.yaml"
    other.write_text(f"storage: {{data_dir: {tmp_path / 'other'}}}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENGATE_CONFIG", raising=False)
    runner = CliRunner()
    assert "house-model" in runner.invoke(main, ["models"]).output
    assert "house-model" not in runner.invoke(main, ["models", "-c", str(other)]).output
    assert "house-model" not in runner.invoke(main, ["models"], env={"GENGATE_CONFIG": str(other)}).output
    checked = runner.invoke(main, ["config", "check"])
    assert checked.exit_code == 0 and "1 models" in checked.output


def test_cli_keys_lifecycle_and_logs(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(f"storage: {{data_dir: {tmp_path / 'data'}}}\n")
    runner = CliRunner()
    created = runner.invoke(main, ["keys", "create", "-c", str(path), "--team", "ops", "--rpm", "5"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    key_id = secret.split("-")[2]
    listed = runner.invoke(main, ["keys", "list", "-c", str(path)])
    assert key_id in listed.output and "ops" in listed.output and secret not in listed.output
    assert runner.invoke(main, ["keys", "revoke", "-c", str(path), key_id]).exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", "-c", str(path), key_id])
    assert again.exit_code == 1 and "no active key" in again.output
    assert "revoked" in runner.invoke(main, ["keys", "list", "-c", str(path), "--all"]).output
    logs = runner.invoke(main, ["logs", "-c", str(path)])
    assert logs.exit_code == 0 and "STATUS" in logs.output
    models = runner.invoke(main, ["models", "-c", str(path)])
    assert "offline" in models.output


def test_gengate_serve_starts_on_embedded_defaults_and_answers(tmp_path: Path) -> None:
    """The README's first command, minus make: a newcomer's `gengate serve` with no config answers."""
    import socket
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENGATE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gengate.cli.main", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        key = ""
        deadline = time.time() + 30
        while time.time() < deadline and not key:
            line = proc.stderr.readline()
            if line.strip().startswith("sk-gg-"):
                key = line.strip()
        assert key, "serve did not print a bootstrap key"
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        resp = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
            json={"model": "offline", "messages": [{"role": "user", "content": "hello"}]},
        )  # fmt: skip
        assert resp.status_code == 200 and "offline provider" in resp.json()["choices"][0]["message"]["content"]
        assert (tmp_path / "data" / "gengate.db").exists()
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown
    assert proc.returncode in (0, -15)
    # the batched request log was flushed on shutdown
    with sqlite3.connect(tmp_path / "data" / "gengate.db") as db:
        rows = db.execute("SELECT model, status FROM requests").fetchall()
    assert ("offline", 200) in rows


def test_shipped_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "examples" / "gengate.yaml"
    settings = load_settings(
        example, environ={"GENGATE_ADMIN_KEY": "a" * 32, "OPENAI_API_KEY": "x", "AZURE_OPENAI_KEY": "y"}
    )
    assert settings.models["gpt-4o-mini"].deployments[2].priority == 1
    assert settings.policy.teams["support"].budget is not None
    assert settings.apps["hr-assistant"].tools[0].bound == {"employee_id": "claims.sub"}
