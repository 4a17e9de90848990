"""What a box installed from the package relies on (docs/deploy.md): the launcher's
first model (`init-model`), the agent starting without a model until one reaches its
slot, and on-box enrollment merging into the packaged config and fetching the fleet's
TUF root. Real model, real TLS; the packaged agent.toml itself, paths moved into tmp.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import tomli_w

from agent.config import AgentSettings
from agent.ota import errors as e
from agent.ota.launch import init_model
from agent.vision.model_fetch import ModelFiles
from agent.vision.modelcard import DEFAULT_CARD
from agent.vision.runner import awaiting_model
from common.model_bundle import build_model_bundle
from common.settings import load_settings
from fleet_server.identity.ca import CertificateAuthority
from fleet_server.ota.release import tar_directory
from hil_tests.ota_rig import StaticHttps
from provisioning.errors import ProvisionError
from provisioning.onbox import fetch_trusted_root, merge_config
from tests.detection_helpers import model_files, photo, write_png

__all__ = ["model_files"]  # the fixture, used by name

PACKAGED = Path(__file__).resolve().parent.parent / "packaging" / "agent" / "agent.toml"


def _packaged_config(tmp: Path) -> Path:
    text = PACKAGED.read_text()
    for old, new in (
        ("/var/lib/camfleet-agent", tmp / "state"),
        ("/etc/camfleet-agent", tmp / "etc"),
    ):
        text = text.replace(old, str(new))
    path = tmp / "etc" / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _model_tar(tmp: Path, model: ModelFiles, release: str) -> Path:
    evals = tmp / f"eval-{release}"
    evals.mkdir()
    write_png(evals / "astronaut.png", photo("astronaut"))
    (evals / "expected.json").write_text(
        json.dumps({"astronaut.png": [{"label": "Person", "box": [0.03, 0.03, 0.71, 0.99]}]})
    )
    bundle = build_model_bundle(model.model, model.labels, DEFAULT_CARD, evals, release,
                                tmp / f"m-{release}")  # fmt: skip
    return tar_directory(bundle, tmp / f"model-{release}.tar.gz")


@pytest.fixture(scope="module")
def first_model(tmp_path_factory: pytest.TempPathFactory, model_files: ModelFiles) -> Path:
    """The real model as a model bundle .tar.gz, release 1.0.0 (what a model package holds)."""
    return _model_tar(tmp_path_factory.mktemp("model"), model_files, "1.0.0")


def test_first_model_goes_into_the_empty_slot_only(
    tmp_path: Path, model_files: ModelFiles, first_model: Path
) -> None:
    settings = load_settings(AgentSettings, _packaged_config(tmp_path))
    assert settings.ota is not None
    # no model yet: the agent starts without detection (it reports and takes updates)
    assert awaiting_model(settings) == tmp_path / "state" / "models" / "current"
    first = first_model
    assert init_model(settings.ota, first, if_none=True) == "1.0.0"
    assert awaiting_model(settings) is None
    current = tmp_path / "state" / "models" / "current"
    assert current.resolve().name == "1.0.0" and (current / "card.toml").is_file()
    # a box with a model keeps it: a newer package changes nothing, only OTA (with its gate)
    second = _model_tar(tmp_path, model_files, "2.0.0")
    assert init_model(settings.ota, second, if_none=True) is None
    assert current.resolve().name == "1.0.0"


def test_a_tampered_model_bundle_is_refused_and_the_slot_stays_empty(
    tmp_path: Path, first_model: Path
) -> None:
    settings = load_settings(AgentSettings, _packaged_config(tmp_path))
    assert settings.ota is not None
    good = first_model
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(good, "r:gz") as src, tarfile.open(bad, "w:gz") as dst:
        for member in src:
            f = src.extractfile(member)
            data = f.read() if f is not None else b""
            if member.name.endswith("labels.txt"):
                data = data.replace(b"Person", b"Persen")
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(e.OtaError, match="bad_bundle"):
        init_model(settings.ota, bad, if_none=True)
    assert awaiting_model(settings) is not None
    assert not list((tmp_path / "state" / "models" / "releases").iterdir())


def test_enrollment_keeps_the_packaged_tables(tmp_path: Path) -> None:
    path = _packaged_config(tmp_path)
    merged = merge_config(path, {
        "device_id": "cam-0042", "state_dir": str(tmp_path / "state"),
        "mqtt": {"host": "fleet.city", "port": 8883, "ca": "r", "cert": "c", "key": "k"},
        "camera": {"type": "picamera2", "fps": 5.0},
        "renewal": {"est_url": "https://fleet.city:8443"},
    })  # fmt: skip
    assert merged["device_id"] == "cam-0042"
    assert merged["camera"] == {"type": "picamera2", "fps": 5.0}  # no stale opencv url
    (tmp_path / "merged.toml").write_text(tomli_w.dumps(merged))
    again = load_settings(AgentSettings, tmp_path / "merged.toml")  # a valid agent config
    assert again.mqtt.host == "fleet.city" and again.renewal is not None
    assert again.mqtt.keepalive_s == load_settings(AgentSettings, path).mqtt.keepalive_s
    # the packaged tables stay: OTA with the model slot, detection on that slot
    assert again.ota is not None and again.ota.model_slots_dir == tmp_path / "state" / "models"
    assert again.ota.metadata_url.startswith("https://fleet.example.org:8444/")
    assert again.pipeline is not None and again.pipeline.detector is not None
    assert again.pipeline.detector.card == tmp_path / "state/models/current/card.toml"
    (tmp_path / "broken.toml").write_text("device_id = [")
    with pytest.raises(ProvisionError, match="not a readable TOML"):
        merge_config(tmp_path / "broken.toml", {})


def test_the_fleet_tuf_root_comes_over_https_checked_against_the_fleet_root(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    served = tmp_path / "served"
    (served / "ota" / "metadata").mkdir(parents=True)
    root_json = json.dumps({"signed": {"_type": "root", "version": 1}, "signatures": []})
    (served / "ota" / "metadata" / "1.root.json").write_text(root_json)
    host = StaticHttps(served, ca).start()
    try:
        dest = tmp_path / "etc" / "ota-root.json"
        config: dict[str, object] = {
            "ota": {"metadata_url": f"{host.base}/ota/metadata/", "trusted_root": str(dest)}
        }
        # another CA's root: refused (logged), nothing written
        other = CertificateAuthority(tmp_path / "other")
        other.init()
        assert fetch_trusted_root(tmp_path, config, other.root_cert_path) is None
        assert not dest.exists()
        assert fetch_trusted_root(tmp_path, config, ca.root_cert_path) == dest
        assert json.loads(dest.read_text())["signed"]["_type"] == "root"
        # there already: kept; a path outside the box's root: left alone
        assert fetch_trusted_root(tmp_path, config, ca.root_cert_path) is None
        outside = {"ota": {"metadata_url": f"{host.base}/ota/metadata/",
                           "trusted_root": "/etc/camfleet-agent/ota-root.json"}}  # fmt: skip
        assert fetch_trusted_root(tmp_path, outside, ca.root_cert_path) is None
    finally:
        host.stop()
