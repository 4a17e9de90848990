"""Model updates through the updater: the real detector model, real photos, model bundles
in a real TUF repository on an HTTPS host. A model that fails its accuracy gate is refused
and the current model stays; one that passes is switched in and the agent restarted.

The updater runs in this process (the agent process tests are in test_ota_agent.py); its
publish and restart seams are recorded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.ota.eval_set import make_eval_set
from agent.ota.settings import OtaSettings
from agent.ota.slots import AppSlots
from agent.ota.updater import Updater
from agent.vision.detector import Detector
from agent.vision.model_fetch import ModelFiles
from fleet_server.identity.ca import CertificateAuthority
from hil_tests.ota_rig import StaticHttps
from tests.detection_helpers import detector, model_files, model_release_repo, photo, write_png

__all__ = ["detector", "model_files"]  # fixtures

pytestmark = pytest.mark.slow


class Recorder:
    def __init__(self) -> None:
        self.sent: list[dict[str, object]] = []
        self.restarts = 0
        self.cond = threading.Condition()

    def publish(self, kind: str, body: dict[str, object]) -> bool:
        assert kind == "update_state"
        with self.cond:
            self.sent.append(body)
            self.cond.notify_all()
        return True

    def restart(self) -> None:
        with self.cond:
            self.restarts += 1
            self.cond.notify_all()

    def wait(self, campaign: str, state: str, timeout: float = 120.0) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for b in self.sent:
                    if b["campaign"] == campaign and b["state"] == state:
                        return b
                left = deadline - time.monotonic()
                assert left > 0, f"no {campaign} {state}: {self.sent}"
                self.cond.wait(left)


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory,
    ca: CertificateAuthority,
    model_files: ModelFiles,
    detector: Detector,
) -> Iterator[tuple[Path, StaticHttps, dict[str, str]]]:
    """Model releases 1.0.0 (the real model), 1.1.0 (the same model, a new release) and
    2.0.0 (its label map shuffled: Person and Car swapped) on an HTTPS host."""
    tmp = tmp_path_factory.mktemp("ota-model")
    photos = tmp / "photos"
    photos.mkdir()
    images = [write_png(photos / f"{n}.png", photo(n)) for n in ("astronaut", "camera", "chelsea")]
    eval_dir = make_eval_set(detector, images, tmp / "eval")
    targets = model_release_repo(
        tmp, model_files, eval_dir, {"1.0.0": False, "1.1.0": False, "2.0.0": True}
    )
    https = StaticHttps(tmp / "repo", ca).start()
    yield tmp, https, targets
    https.stop()


def _digest(path: Path) -> dict[str, str]:
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def test_model_gate_refuses_a_bad_model_and_promotes_a_good_one(
    tmp_path: Path, ca: CertificateAuthority, models: tuple[Path, StaticHttps, dict[str, str]]
) -> None:
    src, https, targets = models
    root = tmp_path / "root.json"
    shutil.copyfile(src / "repo" / "metadata" / "1.root.json", root)
    settings = OtaSettings.model_validate(
        {
            "metadata_url": f"{https.base}/metadata/",
            "targets_url": f"{https.base}/targets/",
            "ca": str(ca.root_cert_path),
            "trusted_root": str(root),
            "slots_dir": str(tmp_path / "slots"),
            "model_slots_dir": str(tmp_path / "models"),
            "model_gate": {"max_slowdown": 5.0},  # timing on a shared test box is noisy
        }
    )
    # the factory model: release 1.0.0 in the model slot
    models_slots = AppSlots(tmp_path / "models", required="bundle.json", marker_beside=True)
    shutil.copytree(src / "m-1.0.0", tmp_path / "models" / "releases" / "1.0.0")
    (tmp_path / "models" / "complete").mkdir()
    (tmp_path / "models" / "complete" / "1.0.0").write_text('{"release": "1.0.0"}')
    models_slots.switch("1.0.0")
    before = _digest(models_slots.current_path())
    rec = Recorder()
    up = Updater(settings, tmp_path / "state", rec.publish, rec.restart, default_ca=None)
    up.start()
    assert up.versions()["model"] == "1.0.0"

    def desire(campaign: str, release: str) -> None:
        body: dict[str, Any] = {
            "campaign": campaign,
            "artifact": "model",
            "release": release,
            "target": targets[release],
        }
        up.handle_desired(body)

    desire("m-bad", "2.0.0")
    failed = rec.wait("m-bad", "failed")
    assert str(failed["error"]).startswith("accuracy_gate: "), failed
    assert failed["running"] == "1.0.0"
    assert models_slots.running() == "1.0.0"
    assert _digest(models_slots.current_path()) == before  # the old model untouched
    assert models_slots.installed() == ["1.0.0"]  # the refused candidate removed
    assert rec.restarts == 0
    assert not any(p for p in (tmp_path / "state" / "ota" / "download").glob("*"))

    desire("m-good", "1.1.0")
    done = rec.wait("m-good", "committed")
    assert done["release"] == "1.1.0"
    with rec.cond:  # then the restart that loads it (after the slot is tidied)
        assert rec.cond.wait_for(lambda: rec.restarts == 1, timeout=30)
    assert models_slots.running() == "1.1.0"
    assert os.readlink(tmp_path / "models" / "current") == "releases/1.1.0"
    assert models_slots.installed() == ["1.0.0", "1.1.0"]  # the previous kept for a rollback
    states = [b["state"] for b in rec.sent if b["campaign"] == "m-good"]
    assert states.index("downloading") < states.index("installing") < states.index("committed")
