"""How a release gets onto the box, for the updater (``agent.ota.updater``): fetch it through
TUF (a delta when the running release's bundle is kept, else the full bundle), check that
what was signed is what was asked for and that the bundle's manifest matches, then unpack
it into the install backend (agent releases) or beside the current model, where the
accuracy gate judges it (model releases).

``Installer`` does the I/O of one install; the updater decides when, owns the record and
says through the ``step`` hook that each stage is done (saving the record before it goes
on, and stopping the install when the agent stops). Switching, the trial and the commit
stay with the updater.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.ota import errors as e
from agent.ota import machine as m
from agent.ota.backend import InstallBackend
from agent.ota.crash import crash_point
from agent.ota.fetch import FetchConfig, Fetcher, Target
from agent.ota.settings import OtaSettings
from agent.ota.slots import AppSlots
from common import bundle as common_bundle

log = logging.getLogger(__name__)

Step = Callable[[str], None]  # a stage is done: "downloaded", "verified", "installed"
Report = Callable[[float | None], None]  # say the state now, with a progress if given
Progress = Callable[[int, int], None]  # (bytes so far, bytes in all)


@dataclass(frozen=True)
class GateOutcome:
    """The accuracy gate's verdict (agent.ota.model_gate.GateResult, as the updater uses it)."""

    ok: bool
    reason: str
    detail: str
    figures: dict[str, object]


Gate = Callable[[Path, Path | None], GateOutcome]  # (candidate dir, current dir) -> verdict


def check_manifest(bundle: Path, release: str) -> None:
    """The bundle's MANIFEST.json names ``release`` and every file matches its sha256."""
    try:
        manifest = common_bundle.read_manifest(bundle)
    except common_bundle.BundleError as exc:
        raise e.OtaError(e.BAD_BUNDLE, str(exc)) from exc
    named = manifest.get("release")
    if named is None or str(named) != release:
        raise e.OtaError(e.BAD_BUNDLE, f"bundle says release {named}, wanted {release}")


def check_release(desired: m.Desired, running: str | None) -> None:
    """A release name the machine can order, and no downgrade unless the campaign allows it."""
    try:
        m.release_key(desired.release)
    except ValueError as exc:
        raise e.OtaError(e.BAD_METADATA, str(exc)) from exc
    if not desired.allow_downgrade and m.is_downgrade(running, desired.release):
        raise e.OtaError(e.DOWNGRADE, f"{desired.release} is older than the running {running}")


def check_target(full: Target, desired: m.Desired) -> None:
    """The target is signed as the artifact and release that were asked for."""
    artifact = full.custom.get("artifact")
    release = full.custom.get("release")
    if artifact != desired.artifact or release != desired.release:
        raise e.OtaError(
            e.BAD_METADATA,
            f"{full.path} is signed as {artifact} {release}, "
            f"not {desired.artifact} {desired.release}",
        )


def fetch_config(settings: OtaSettings, ota_dir: Path, default_ca: Path | None) -> FetchConfig:
    """Where and how to fetch: the ``[ota]`` settings, TUF metadata and downloads under
    ``ota_dir``, the broker's CA when ``ota.ca`` is not set."""
    return FetchConfig(
        metadata_url=settings.metadata_url,
        targets_url=settings.targets_url,
        ca=settings.ca or default_ca,
        trusted_root=settings.trusted_root,
        metadata_dir=ota_dir / "tuf",
        download_dir=ota_dir / "download",
        max_target_bytes=settings.max_target_bytes,
        timeout_s=settings.timeout_s,
        retries=settings.download_retries,
    )


def model_slots(base: Path | None) -> AppSlots:
    """The model's release dirs (``ota.model_slots_dir``); OtaError when not configured."""
    if base is None:
        raise e.OtaError(e.INSTALL, "model updates are not configured (ota.model_slots_dir)")
    return AppSlots(base, required="bundle.json", marker_beside=True)


class Installer:
    def __init__(
        self,
        fetch_config: FetchConfig,
        backend: InstallBackend,
        model_slots_dir: Path | None,
        *,
        step: Step,
        report: Report,
        progress: Progress,
    ) -> None:
        self.fetch_config = fetch_config
        self.backend = backend
        self.model_slots_dir = model_slots_dir
        self.step = step
        self.report = report
        self.progress = progress

    def agent(self, desired: m.Desired, running_code: str | None) -> None:
        """Fetch, check and unpack an agent release into the backend (not switched yet)."""
        check_release(desired, running_code)
        self.report(0.0)
        fetcher = Fetcher(self.fetch_config)
        running = self.backend.running()
        kept = self.backend.kept_bundle(running) if running is not None else None
        full, bundle, used_delta = fetcher.fetch_bundle(
            desired.target, running, kept, progress=self.progress
        )
        check_target(full, desired)
        self.step("downloaded")
        log.info("%s downloaded (%s)", desired.target, "delta" if used_delta else "full")
        crash_point("verify")
        check_manifest(bundle, desired.release)
        self.step("verified")
        self.report(None)
        self.backend.install(bundle, desired.release, full.sha256)
        self.step("installed")
        fetcher.clean()

    def model(self, desired: m.Desired, gate: Gate) -> None:
        """A model bundle: fetch, unpack beside the current model and run the accuracy gate
        (a refused model is removed again); switching the model link is the updater's."""
        slots = self.model_slots()
        check_release(desired, slots.running())
        self.report(0.0)
        fetcher = Fetcher(self.fetch_config)
        full, info = fetcher.target(desired.target)
        check_target(full, desired)
        bundle = fetcher.download(full, info, self.progress)
        self.step("downloaded")
        crash_point("verify")
        candidate = slots.install_bundle(bundle, desired.release, full.sha256)
        current = slots.current_path() if slots.running() else None
        result = gate(candidate, current)
        if not result.ok:
            slots.remove(desired.release)
            raise e.OtaError(result.reason or e.ACCURACY_GATE, result.detail)
        log.info("model %s passed the gate: %s", desired.release, result.figures)
        self.step("verified")
        self.report(None)
        self.step("installed")

    def model_slots(self) -> AppSlots:
        return model_slots(self.model_slots_dir)

    def clean(self) -> None:
        """Remove what downloads left behind."""
        Fetcher(self.fetch_config).clean()
