"""Build and verify application bundles (``<name>-<version>.tar.gz``).

A bundle holds everything a host needs to install an application without network access:
``descriptor.json``, ``wheels/`` (the app wheel and every dependency wheel for CPython 3.11 on
manylinux x86_64), ``models/<name>/<version>/`` and ``SHA256SUMS`` over all of them. Hosts
install it with ``pip install --no-index --find-links wheels``.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from llmops_provision.config import verify_app_dir
from llmops_provision.schemas import validate_against

#: The interpreter and platform every bundle targets: the Python 3.11 of Debian 12 hosts.
TARGET_PYTHON = "3.11"
TARGET_ABI = "cp311"
#: Debian 12 has glibc 2.36, so any manylinux wheel up to 2_36 installs there.
TARGET_PLATFORMS = (
    "manylinux1_x86_64",
    "manylinux2010_x86_64",
    "manylinux2014_x86_64",
    *(f"manylinux_2_{minor}_x86_64" for minor in range(5, 37)),
)
SUMS_NAME = "SHA256SUMS"
DESCRIPTOR_NAME = "descriptor.json"
WHEELS_DIR = "wheels"
DEFAULT_FIND_LINKS = (Path("/opt/wheels"),)
# Fixed tar metadata so the same inputs give the same archive bytes.
_TAR_MTIME = 315532800  # 1980-01-01

Log = Callable[[str], None]


class BundleError(Exception):
    """A bundle could not be built or failed verification; ``problems`` holds one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class BundleInfo:
    """A verified bundle: where it is, what it holds, and its own sha256."""

    path: Path
    name: str
    version: str
    sha256: str
    descriptor: dict[str, Any]
    files: tuple[str, ...] = field(default_factory=tuple)

    @property
    def wheels(self) -> tuple[str, ...]:
        return tuple(f for f in self.files if f.startswith(f"{WHEELS_DIR}/"))


@dataclass(frozen=True)
class BuildResult:
    info: BundleInfo
    reused: bool


def default_wheel_cache() -> Path:
    """Where downloaded dependency wheels are kept between builds."""
    env = os.environ.get("LLMOPS_WHEEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmops" / "wheels"


def bundle_filename(name: str, version: str) -> str:
    return f"{name}-{version}.tar.gz"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def descriptor_problems(descriptor: Any, where: str) -> list[str]:
    """Schema errors of a descriptor, one readable line each (empty when valid)."""
    return [str(e) for e in validate_against("descriptor", descriptor, where)]


def load_descriptor(app_dir: Path) -> dict[str, Any]:
    """Check an app dir (descriptor valid, model files present with their sha256) and return
    its descriptor."""
    errors = verify_app_dir(app_dir)
    if errors:
        raise BundleError([str(e) for e in errors])
    descriptor: dict[str, Any] = json.loads((app_dir / DESCRIPTOR_NAME).read_text())
    return descriptor


def _model_files(descriptor: dict[str, Any]) -> list[tuple[int, dict[str, Any]]]:
    models = descriptor.get("models", [])
    return list(enumerate(models)) if isinstance(models, list) else []


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _normalize_version(version: str) -> str:
    return version.replace("_", "-").lower()


def _run_pip(args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False, env=_pip_env())


def _pip_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("SOURCE_DATE_EPOCH", str(_TAR_MTIME))
    env["PIP_NO_INPUT"] = "1"
    return env


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _build_app_wheel(app_dir: Path, wheels: Path, log: Log) -> Path:
    log(f"building the app wheel from {app_dir}")
    with tempfile.TemporaryDirectory(prefix="llmops-wheel-") as tmp:
        # No build isolation: the controller's own setuptools builds it, so no network is needed.
        proc = _run_pip(
            ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp, str(app_dir)]
        )
        built = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(built) != 1:
            raise BundleError(
                [
                    f"{app_dir}: building the app wheel failed (pip wheel exit {proc.returncode}); "
                    f"fix the app's packaging:\n{_tail(proc.stderr or proc.stdout)}"
                ]
            )
        dest = wheels / built[0].name
        shutil.move(str(built[0]), dest)
    return dest


def _wheel_dist(wheel: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel file name."""
    parts = wheel.name.split("-")
    return parts[0], parts[1]


def _target_args() -> list[str]:
    args = [
        "--only-binary=:all:",
        "--python-version",
        TARGET_PYTHON,
        "--implementation",
        "cp",
        "--abi",
        TARGET_ABI,
    ]
    for platform in TARGET_PLATFORMS:
        args += ["--platform", platform]
    return args


def _resolve_dependencies(
    requirement: str,
    wheels: Path,
    cache: Path,
    find_links: Sequence[Path],
    log: Log,
) -> None:
    """Put every wheel ``requirement`` needs into ``wheels``, downloading only what the cache lacks.

    The final pass runs with ``--no-index`` from the app wheel, the cache and find-links, which
    is exactly how hosts install, so a bundle that builds is also one that installs offline.
    """
    links = [wheels, cache, *[p for p in find_links if p.is_dir()]]
    link_args = [arg for p in links for arg in ("--find-links", str(p))]
    offline = ["download", "-q", "--no-index", *link_args, *_target_args(), "-d", str(wheels)]
    proc = _run_pip([*offline, requirement])
    if proc.returncode == 0:
        log(f"dependency wheels: all found in {cache}")
        return
    log(f"downloading dependency wheels for CPython {TARGET_PYTHON} manylinux x86_64 into {cache}")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmops-dl-", dir=cache.parent) as tmp:
        online = ["download", "-q", *link_args, *_target_args(), "-d", tmp, requirement]
        proc = _run_pip(online)
        if proc.returncode != 0:
            raise BundleError(
                [
                    f"downloading the dependency wheels of {requirement} failed: a dependency "
                    f"has no wheel for CPython {TARGET_PYTHON} manylinux x86_64, or PyPI is not "
                    f"reachable; pip said:\n{_tail(proc.stderr or proc.stdout)}"
                ]
            )
        app_name = _canonical(requirement.split("==")[0])
        for wheel in Path(tmp).glob("*.whl"):
            if _canonical(_wheel_dist(wheel)[0]) == app_name:
                continue  # the app wheel stays out of the shared cache
            os.replace(wheel, cache / wheel.name)
    proc = _run_pip([*offline, requirement])
    if proc.returncode != 0:
        raise BundleError(
            [
                f"collecting the wheels of {requirement} offline failed after downloading them; "
                f"pip said:\n{_tail(proc.stderr or proc.stdout)}"
            ]
        )


def _copy_models(app_dir: Path, descriptor: dict[str, Any], stage: Path) -> list[str]:
    """Copy each model's directory into the stage; return problems (sha256 mismatches etc.)."""
    problems = []
    where = app_dir / DESCRIPTOR_NAME
    for idx, model in _model_files(descriptor):
        rel = _safe_relpath(str(model.get("path", "")))
        if rel is None:
            problems.append(f"{where}: models[{idx}].path must be a relative path inside the app")
            continue
        src = app_dir / rel
        if not src.is_file():
            problems.append(
                f"{where}: models[{idx}].path: {src} does not exist; train or copy the model first"
            )
            continue
        metadata = model.get("metadata")
        if metadata and not (app_dir / str(metadata)).is_file():
            problems.append(
                f"{where}: models[{idx}].metadata: {app_dir / str(metadata)} is missing"
            )
            continue
        if metadata and (app_dir / str(metadata)).parent != src.parent:
            problems.append(f"{where}: models[{idx}].metadata must sit beside models[{idx}].path")
            continue
        actual = _sha256_file(src)
        expected = model.get("sha256")
        if expected and expected != actual:
            problems.append(
                f"{where}: models[{idx}].sha256 is {expected} but {src} has sha256 {actual}; "
                "update the descriptor if the model was retrained on purpose"
            )
            continue
        # The whole model directory goes along: the loader needs metadata.json beside the weights.
        src_dir = src.parent
        for file in sorted(p for p in src_dir.rglob("*") if p.is_file()):
            dest = stage / file.relative_to(app_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest)
    return problems


def _safe_relpath(path: str) -> PurePosixPath | None:
    rel = PurePosixPath(path)
    if not path or rel.is_absolute() or ".." in rel.parts:
        return None
    return rel


def _write_sums(stage: Path) -> None:
    lines = []
    for file in sorted(p for p in stage.rglob("*") if p.is_file()):
        rel = file.relative_to(stage).as_posix()
        if rel != SUMS_NAME:
            lines.append(f"{_sha256_file(file)}  {rel}\n")
    (stage / SUMS_NAME).write_text("".join(lines))


def _write_tar(stage: Path, target: Path) -> None:
    """A reproducible tar.gz: sorted entries, fixed owner and mtime; gzip level 1 (wheels are
    already compressed, so a higher level costs CPU and saves almost nothing)."""
    import gzip

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mtime = _TAR_MTIME
        info.mode = 0o755 if info.isdir() else 0o644
        return info

    tmp = target.with_name(f".{target.name}.tmp")
    with (
        open(tmp, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in sorted(stage.rglob("*")):
            tar.add(path, arcname=path.relative_to(stage).as_posix(), recursive=False, filter=clean)
    os.replace(tmp, target)


def build_bundle(
    app_dir: Path,
    out_dir: Path,
    *,
    force: bool = False,
    wheel_cache: Path | None = None,
    find_links: Sequence[Path] = DEFAULT_FIND_LINKS,
    log: Log = print,
) -> BuildResult:
    """Build ``OUT_DIR/<name>-<version>.tar.gz`` from an app dir, or reuse it if already built."""
    app_dir = app_dir.resolve()
    descriptor = load_descriptor(app_dir)
    name, version = str(descriptor["name"]), str(descriptor["version"])
    target = out_dir / bundle_filename(name, version)
    if target.exists() and not force:
        try:
            info = verify_bundle(target)
        except BundleError as exc:
            raise BundleError(
                [
                    f"{target}: a bundle of {name} {version} exists but fails verification; "
                    "delete it or rebuild with --force",
                    *exc.problems,
                ]
            ) from exc
        if info.descriptor != descriptor:
            # Same version, different app (e.g. retrained model): reusing would ship stale files.
            changed = sorted(
                k
                for k in {*descriptor, *info.descriptor}
                if descriptor.get(k) != info.descriptor.get(k)
            )
            raise BundleError(
                [
                    f"{target} was built from a different {app_dir / DESCRIPTOR_NAME} "
                    f"({', '.join(changed)} changed) under the same version {version}; bump the "
                    "version, or rebuild with --force"
                ]
            )
        log(f"{name} {version}: reusing {target} (already built; --force rebuilds it)")
        return BuildResult(info=info, reused=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    cache = wheel_cache or default_wheel_cache()
    with tempfile.TemporaryDirectory(prefix=f".{name}-{version}-", dir=out_dir) as tmp:
        stage = Path(tmp)
        wheels = stage / WHEELS_DIR
        wheels.mkdir()
        package = descriptor.get("package", {})
        app_wheel = _build_app_wheel(app_dir / str(package.get("path", ".")), wheels, log)
        dist, wheel_version = _wheel_dist(app_wheel)
        if package.get("name") and _canonical(package["name"]) != _canonical(dist):
            raise BundleError(
                [
                    f"{app_dir / DESCRIPTOR_NAME}: package.name is {package['name']} but "
                    f"{app_dir / str(package.get('path', '.'))} builds {dist}; make them agree"
                ]
            )
        if _normalize_version(wheel_version) != _normalize_version(version):
            raise BundleError(
                [
                    f"{app_dir / DESCRIPTOR_NAME}: version is {version} but the app package "
                    f"builds version {wheel_version}; make them agree (pyproject.toml)"
                ]
            )
        _resolve_dependencies(f"{dist}=={wheel_version}", wheels, cache, find_links, log)
        problems = _copy_models(app_dir, descriptor, stage)
        if problems:
            raise BundleError(problems)
        (stage / DESCRIPTOR_NAME).write_text(json.dumps(descriptor, indent=2) + "\n")
        _write_sums(stage)
        log(f"writing {target}")
        _write_tar(stage, target)
    info = verify_bundle(target)
    log(
        f"{name} {version}: built {target} ({len(info.wheels)} wheels, "
        f"{target.stat().st_size / 1e6:.1f} MB, sha256 {info.sha256})"
    )
    return BuildResult(info=info, reused=False)


def _parse_sums(text: str, where: str) -> tuple[dict[str, str], list[str]]:
    sums: dict[str, str] = {}
    problems = []
    for lineno, line in enumerate(text.splitlines(), 1):
        match = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line)
        if not match:
            problems.append(f"{where}: {SUMS_NAME} line {lineno} is not '<sha256>  <path>'")
            continue
        sums[match.group(2)] = match.group(1)
    return sums, problems


def _hash_member(tar: tarfile.TarFile, member: tarfile.TarInfo, keep: bool) -> tuple[str, bytes]:
    """sha256 of a member's content, and the content itself when ``keep`` (small files only)."""
    fh = tar.extractfile(member)
    if fh is None:
        return hashlib.sha256().hexdigest(), b""
    digest = hashlib.sha256()
    kept = io.BytesIO()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        digest.update(chunk)
        if keep:
            kept.write(chunk)
    return digest.hexdigest(), kept.getvalue()


def verify_bundle(path: Path) -> BundleInfo:
    """Check a bundle against its SHA256SUMS and its descriptor; raise BundleError if not intact."""
    where = str(path)
    if not path.is_file():
        raise BundleError([f"{where}: no such bundle file"])
    digests: dict[str, str] = {}
    sums_text: str | None = None
    descriptor_bytes: bytes | None = None
    problems: list[str] = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                rel = _safe_relpath(member.name.removeprefix("./"))
                if rel is None:
                    problems.append(f"{where}: unsafe member path {member.name!r}")
                    continue
                if member.isdir():
                    continue
                if not member.isfile():
                    problems.append(f"{where}: {member.name} is not a regular file")
                    continue
                name = rel.as_posix()
                data_hash, data = _hash_member(
                    tar, member, keep=name in (SUMS_NAME, DESCRIPTOR_NAME)
                )
                digests[name] = data_hash
                if name == SUMS_NAME:
                    sums_text = data.decode("utf-8", "replace")
                elif name == DESCRIPTOR_NAME:
                    descriptor_bytes = data
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError([f"{where}: not a readable .tar.gz bundle: {exc}"]) from exc

    if sums_text is None:
        raise BundleError([*problems, f"{where}: has no {SUMS_NAME}; not a bundle built by us"])
    sums, sum_problems = _parse_sums(sums_text, where)
    problems += sum_problems
    for listed, expected in sorted(sums.items()):
        if listed not in digests:
            problems.append(f"{where}: {listed} is listed in {SUMS_NAME} but missing")
        elif digests[listed] != expected:
            problems.append(
                f"{where}: {listed} does not match its sha256 in {SUMS_NAME}: the bundle was "
                "modified after it was built; rebuild it with `llmops-provision bundle APP_DIR "
                "--force`"
            )
    for extra in sorted(set(digests) - set(sums) - {SUMS_NAME}):
        problems.append(f"{where}: {extra} is not listed in {SUMS_NAME} (added after the build)")

    descriptor: dict[str, Any] = {}
    if descriptor_bytes is None:
        problems.append(f"{where}: has no {DESCRIPTOR_NAME}")
    else:
        try:
            loaded = json.loads(descriptor_bytes)
        except ValueError as exc:
            problems.append(f"{where}: {DESCRIPTOR_NAME} is not valid JSON: {exc}")
        else:
            problems += descriptor_problems(loaded, f"{where}: {DESCRIPTOR_NAME}")
            descriptor = loaded if isinstance(loaded, dict) else {}
    for idx, model in _model_files(descriptor):
        rel_path = str(model.get("path", ""))
        metadata = model.get("metadata")
        if metadata and str(metadata) not in digests:
            problems.append(f"{where}: models[{idx}].metadata {metadata} is not in the bundle")
        if rel_path not in digests:
            problems.append(f"{where}: models[{idx}].path {rel_path} is not in the bundle")
        elif model.get("sha256") and digests[rel_path] != model["sha256"]:
            problems.append(
                f"{where}: {rel_path} does not match models[{idx}].sha256 of {DESCRIPTOR_NAME}"
            )
    if not any(rel.startswith(f"{WHEELS_DIR}/") and rel.endswith(".whl") for rel in digests):
        problems.append(f"{where}: has no wheels in {WHEELS_DIR}/")
    if problems:
        raise BundleError(problems)
    return BundleInfo(
        path=path,
        name=str(descriptor.get("name", "")),
        version=str(descriptor.get("version", "")),
        sha256=_sha256_file(path),
        descriptor=descriptor,
        files=tuple(sorted(digests)),
    )


def bundle_problems(path: Path) -> list[str]:
    """Hook for ``validate``: readable problems of a bundle file, empty when it is intact."""
    try:
        verify_bundle(path)
    except BundleError as exc:
        return exc.problems
    return []


def is_bundle_path(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz"))


def cmd_bundle(args: argparse.Namespace) -> int:
    """``llmops-provision bundle APP_DIR [--out DIR] [--force]``."""
    find_links: list[Path] = [*DEFAULT_FIND_LINKS, *(Path(p) for p in args.find_links or [])]
    try:
        result = build_bundle(
            Path(args.app_dir),
            Path(args.out),
            force=args.force,
            wheel_cache=Path(args.wheel_cache) if args.wheel_cache else None,
            find_links=find_links,
            log=lambda msg: print(msg, file=sys.stderr),
        )
    except BundleError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    print(result.info.path)
    return 0
