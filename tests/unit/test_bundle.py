"""Bundles built from a tiny app with no dependencies: a real pip wheel build, offline."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from llmops_provision import bundle, cli

APP_VERSION = "0.3.1"
MODEL_BYTES = b"not really a torch state dict, but bytes with a known sha256\n"


def make_app(root: Path, version: str = APP_VERSION) -> Path:
    """A minimal app dir: a package with no runtime deps (and a dev extra that doesn't exist)."""
    app = root / "tinyapp"
    (app / "tinyapp").mkdir(parents=True)
    (app / "tinyapp" / "__init__.py").write_text('GREETING = "hello from tinyapp"\n')
    (app / "pyproject.toml").write_text(
        f"""[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tinyapp"
version = "{version}"
dependencies = []

[project.optional-dependencies]
dev = ["this-dev-only-package-does-not-exist-anywhere"]

[tool.setuptools]
packages = ["tinyapp"]
"""
    )
    model_dir = app / "models" / "tiny" / "1.0.0"
    model_dir.mkdir(parents=True)
    (model_dir / "model.pt").write_bytes(MODEL_BYTES)
    (model_dir / "metadata.json").write_text('{"name": "tiny", "version": "1.0.0"}\n')
    descriptor = {
        "name": "tinyapp",
        "version": version,
        "package": {"name": "tinyapp", "path": "."},
        "components": {
            "api": {
                "entry_point": "tinyapp.api:create_app",
                "kind": "asgi",
                "health_path": "/healthz",
            }
        },
        "models": [
            {
                "name": "tiny",
                "version": "1.0.0",
                "path": "models/tiny/1.0.0/model.pt",
                "metadata": "models/tiny/1.0.0/metadata.json",
                "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
                "format": "torch-state-dict",
            }
        ],
    }
    (app / "descriptor.json").write_text(json.dumps(descriptor, indent=2))
    return app


def build(
    app: Path, out: Path, force: bool = False, logs: list[str] | None = None
) -> bundle.BuildResult:
    return bundle.build_bundle(
        app,
        out,
        force=force,
        wheel_cache=out.parent / "wheel-cache",
        find_links=(),
        log=(logs if logs is not None else []).append,
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> bundle.BuildResult:
    root = tmp_path_factory.mktemp("bundle")
    return build(make_app(root), root / "dist")


def rewrite_bundle(src: Path, dest: Path, change: dict[str, bytes | None]) -> None:
    """Copy a bundle, replacing (bytes) or deleting (None) members, or adding new ones."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz") as tout:
        seen = set()
        for member in tin:
            seen.add(member.name)
            data = tin.extractfile(member).read() if member.isfile() else None  # type: ignore[union-attr]
            if member.name in change:
                data = change[member.name]
                if data is None:
                    continue
                member.size = len(data)
            tout.addfile(member, io.BytesIO(data) if data is not None else None)
        for name, data in change.items():
            if name not in seen and data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tout.addfile(info, io.BytesIO(data))


def test_bundle_holds_descriptor_wheel_models_and_checksums(built: bundle.BuildResult) -> None:
    info = built.info
    assert info.path.name == f"tinyapp-{APP_VERSION}.tar.gz"
    assert not built.reused
    assert info.files == (
        "SHA256SUMS",
        "descriptor.json",
        "models/tiny/1.0.0/metadata.json",
        "models/tiny/1.0.0/model.pt",
        f"wheels/tinyapp-{APP_VERSION}-py3-none-any.whl",
    )
    # The dev extra is not a runtime dependency: nothing of it is in the bundle.
    assert info.wheels == (f"wheels/tinyapp-{APP_VERSION}-py3-none-any.whl",)
    assert info.sha256 == hashlib.sha256(info.path.read_bytes()).hexdigest()


def test_bundle_round_trip_installs_offline_and_passes_sha256sum(
    built: bundle.BuildResult, tmp_path: Path
) -> None:
    with tarfile.open(built.info.path, "r:gz") as tar:
        tar.extractall(tmp_path / "release", filter="data")
    release = tmp_path / "release"
    # What a host does: coreutils' sha256sum -c, then an install with no index at all.
    subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=release, check=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check"),
            *("--no-index", "--find-links", str(release / "wheels")),
            *("--target", str(tmp_path / "site"), f"tinyapp=={APP_VERSION}"),
        ],
        check=True,
    )
    out = subprocess.run(
        [sys.executable, "-c", "import tinyapp; print(tinyapp.GREETING)"],
        env={"PYTHONPATH": str(tmp_path / "site")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "hello from tinyapp"


def test_building_the_same_version_again_reuses_the_first_build(
    built: bundle.BuildResult,
) -> None:
    app = built.info.path.parent.parent / "tinyapp"
    before = built.info.path.stat().st_mtime_ns
    logs: list[str] = []
    again = build(app, built.info.path.parent, logs=logs)
    assert again.reused
    assert again.info.sha256 == built.info.sha256
    assert built.info.path.stat().st_mtime_ns == before
    assert any("reusing" in line for line in logs), logs


def test_force_rebuild_gives_identical_bytes(built: bundle.BuildResult, tmp_path: Path) -> None:
    app = built.info.path.parent.parent / "tinyapp"
    rebuilt = build(app, tmp_path / "dist", force=True)
    assert not rebuilt.reused
    assert rebuilt.info.sha256 == built.info.sha256


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models/tiny/1.0.0/model.pt": b"swapped weights"}, "does not match its sha256"),
        ({"wheels/evil-1.0-py3-none-any.whl": b"PK"}, "is not listed in SHA256SUMS"),
        ({"models/tiny/1.0.0/metadata.json": None}, "listed in SHA256SUMS but missing"),
        ({"SHA256SUMS": None}, "has no SHA256SUMS"),
    ],
)
def test_a_tampered_bundle_is_refused(
    built: bundle.BuildResult, tmp_path: Path, change: dict[str, bytes | None], message: str
) -> None:
    tampered = tmp_path / built.info.path.name
    rewrite_bundle(built.info.path, tampered, change)
    with pytest.raises(bundle.BundleError) as exc:
        bundle.verify_bundle(tampered)
    assert any(message in p and str(tampered) in p for p in exc.value.problems), exc.value.problems


def test_a_tampered_bundle_with_matching_sums_fails_on_the_descriptor_model_hash(
    built: bundle.BuildResult, tmp_path: Path
) -> None:
    """Swapping a model and rewriting SHA256SUMS still disagrees with descriptor.json."""
    new = b"other weights"
    with tarfile.open(built.info.path, "r:gz") as tar:
        sums = tar.extractfile("SHA256SUMS").read().decode()  # type: ignore[union-attr]
    old_hash = hashlib.sha256(MODEL_BYTES).hexdigest()
    sums = sums.replace(old_hash, hashlib.sha256(new).hexdigest())
    tampered = tmp_path / built.info.path.name
    rewrite_bundle(
        built.info.path,
        tampered,
        {"models/tiny/1.0.0/model.pt": new, "SHA256SUMS": sums.encode()},
    )
    problems = bundle.bundle_problems(tampered)
    assert any("does not match models[0].sha256" in p for p in problems), problems


def test_a_corrupt_file_is_refused_with_a_readable_message(tmp_path: Path) -> None:
    bogus = tmp_path / "ocr-1.0.0.tar.gz"
    bogus.write_bytes(b"this is not gzip")
    assert bundle.bundle_problems(bogus) == [
        f"{bogus}: not a readable .tar.gz bundle: not a gzip file"
    ]


def test_version_mismatch_between_descriptor_and_package_is_an_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    descriptor = json.loads((app / "descriptor.json").read_text())
    descriptor["version"] = "9.9.9"
    (app / "descriptor.json").write_text(json.dumps(descriptor))
    with pytest.raises(bundle.BundleError, match=r"version is 9\.9\.9 but the app package builds"):
        build(app, tmp_path / "dist")
    assert not list((tmp_path / "dist").glob("*.tar.gz"))


def test_model_changed_since_descriptor_is_an_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    (app / "models/tiny/1.0.0/model.pt").write_bytes(b"retrained")
    with pytest.raises(
        bundle.BundleError, match=r"models\[0\]\.sha256: sha256 of models/tiny/1.0.0/model.pt is"
    ):
        build(app, tmp_path / "dist")


def test_invalid_descriptor_names_the_field(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    descriptor = json.loads((app / "descriptor.json").read_text())
    descriptor["components"]["db"] = descriptor["components"]["api"]
    (app / "descriptor.json").write_text(json.dumps(descriptor))
    with pytest.raises(bundle.BundleError) as exc:
        build(app, tmp_path / "dist")
    assert any(
        p.startswith(f"{app / 'descriptor.json'}: components") for p in exc.value.problems
    ), exc.value.problems


def test_cli_bundle_builds_then_reuses(
    built: bundle.BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = built.info.path.parent.parent / "tinyapp"
    out = tmp_path / "dist"
    out.mkdir()
    shutil.copy(built.info.path, out / built.info.path.name)
    argv = ["bundle", str(app), "--out", str(out), "--wheel-cache", str(tmp_path / "c")]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / built.info.path.name)
    assert "reusing" in captured.err


def test_cli_bundle_of_a_dir_without_descriptor_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["bundle", str(tmp_path), "--out", str(tmp_path / "dist")]) == 2
    assert "no descriptor.json" in capsys.readouterr().err


def test_validate_accepts_a_bundle_and_refuses_a_tampered_one(
    built: bundle.BuildResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["validate", str(built.info.path)]) == 0
    capsys.readouterr()
    tampered = tmp_path / built.info.path.name
    rewrite_bundle(built.info.path, tampered, {"models/tiny/1.0.0/model.pt": b"swapped"})
    assert cli.main(["validate", str(tampered)]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert f"{tampered}: models/tiny/1.0.0/model.pt does not match its sha256" in text, text


def test_same_version_with_a_changed_model_is_not_reused(
    built: bundle.BuildResult, tmp_path: Path
) -> None:
    """A retrained model under the same version must not silently ship the old bundle."""
    app = make_app(tmp_path)
    out = tmp_path / "dist"
    out.mkdir()
    shutil.copy(built.info.path, out / built.info.path.name)
    new = b"retrained weights"
    (app / "models/tiny/1.0.0/model.pt").write_bytes(new)
    descriptor = json.loads((app / "descriptor.json").read_text())
    descriptor["models"][0]["sha256"] = hashlib.sha256(new).hexdigest()
    (app / "descriptor.json").write_text(json.dumps(descriptor))
    with pytest.raises(bundle.BundleError, match=r"\(models changed\) under the same version"):
        build(app, out)
    assert build(app, out, force=True).info.descriptor["models"][0]["sha256"] == (
        hashlib.sha256(new).hexdigest()
    )
