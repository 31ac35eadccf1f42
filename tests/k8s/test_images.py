"""The Dockerfiles and the build script produce the images the manifests run (without Docker)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
FLAVOURS = ("neuron", "gpu", "cpu")
DEFAULT_REGISTRY = "hw-agnostic-inference"

sys.path.insert(0, str(DOCKER))
import pyproject_deps  # noqa: E402


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def _runtime_images() -> dict[str, str]:
    """Runtime accelerator label -> image in servingruntimes/ (before site settings)."""
    images = {}
    for path in (REPO_ROOT / "servingruntimes").glob("diffusers-*.yaml"):
        runtime = yaml.safe_load(path.read_text())
        images[runtime["metadata"]["labels"]["hw-agnostic-inference/accelerator"]] = runtime["spec"]["containers"][0][
            "image"
        ]
    return images


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dockerfile_runs_the_predictor_as_a_non_root_user(flavour: str) -> None:
    instructions = _instructions(DOCKER / f"Dockerfile.{flavour}")
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] == "1000", f"Dockerfile.{flavour}: last USER must be 1000"
    (entrypoint,) = [args for name, args in instructions if name == "ENTRYPOINT"]
    assert entrypoint.endswith('"python", "-m", "predictor"]'), entrypoint
    env = " ".join(args for name, args in instructions if name == "ENV")
    assert "HF_HOME=/var/cache/huggingface" in env
    run = " ".join(args for name, args in instructions if name == "RUN")
    assert 'chown 1000:1000 "${HF_HOME}"' in run
    assert {"8080", "8081"} <= set(" ".join(a for n, a in instructions if n == "EXPOSE").split())


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dockerfile_pins_its_base_image_and_installs_this_package(flavour: str) -> None:
    instructions = _instructions(DOCKER / f"Dockerfile.{flavour}")
    args = dict(
        arg.split("=", 1) for name, arg in instructions if name == "ARG" and "=" in arg and arg.startswith("BASE_IMAGE")
    )
    base = args["BASE_IMAGE"]
    assert ":" in base and not base.endswith(":latest"), f"Dockerfile.{flavour}: pin the base image tag"
    run = " ".join(arg for name, arg in instructions if name == "RUN")
    if flavour == "neuron":
        # optimum-neuron decides transformers/diffusers; the SDK's torch is frozen.
        assert "--no-deps /tmp/src" in run and "pyproject_deps.py" in run and "optimum-neuron" in run
    else:
        assert re.search(r"pip install -c /tmp/src/constraints\.txt( -c \S+)* /tmp/src\b", run), run


def test_dockerignore_allowlists_what_pip_install_needs() -> None:
    for flavour in FLAVOURS:
        ignore = (DOCKER / f"Dockerfile.{flavour}.dockerignore").read_text().splitlines()
        assert "*" in ignore, "the context is an allowlist: ignore everything, then re-include"
        for needed in ("!pyproject.toml", "!constraints.txt", "!README.md", "!predictor/", "!docker/pyproject_deps.py"):
            assert needed in ignore, f"Dockerfile.{flavour}.dockerignore drops {needed[1:]}"


def test_the_neuron_image_keeps_the_sdks_torch_and_lets_optimum_neuron_pick_transformers() -> None:
    deps = pyproject_deps.dependencies(REPO_ROOT / "pyproject.toml", ["torch", "transformers", "diffusers"])
    names = {pyproject_deps.requirement_name(dep) for dep in deps}
    assert not names & {"torch", "transformers", "diffusers"}
    assert "kserve" in names and "boto3" in names


def test_pyproject_deps_normalizes_names() -> None:
    assert pyproject_deps.requirement_name("Huggingface_Hub>=0.30") == "huggingface-hub"
    assert pyproject_deps.requirement_name("kserve>=0.21,<0.22") == "kserve"


def test_build_script_builds_the_images_the_runtimes_use() -> None:
    env = {**os.environ, "DRY_RUN": "1", "PUSH": "1"}
    env.pop("REGISTRY", None)
    env.pop("TAG", None)
    result = subprocess.run(
        ["bash", str(DOCKER / "build.sh"), "all"], capture_output=True, text=True, env=env, timeout=30, check=True
    )
    tags = re.findall(r"--tag (\S+)", result.stdout)
    controller = f"{DEFAULT_REGISTRY}/controller:0.1.0"  # controller/deploy/kustomization.yaml's image
    playground = f"{DEFAULT_REGISTRY}/playground:0.1.0"  # deploy/playground/deployment.yaml's image
    expected = [*_runtime_images().values(), controller, playground]
    assert sorted(tags) == sorted(expected), "docker/build.sh and the manifests disagree"
    assert "controller/Dockerfile" in next(line for line in result.stdout.splitlines() if controller in line)
    assert "docker/Dockerfile.playground" in next(line for line in result.stdout.splitlines() if playground in line)
    for dockerfile in ("Dockerfile.cpu", "Dockerfile.playground"):
        line = next(line for line in result.stdout.splitlines() if dockerfile in line)
        assert "linux/amd64\\,linux/arm64" in line or "linux/amd64,linux/arm64" in line
    assert result.stdout.count("--push") == 5


def test_the_playground_image_runs_non_root_without_torch() -> None:
    instructions = _instructions(DOCKER / "Dockerfile.playground")
    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "Dockerfile.playground: run as non-root"
    (entrypoint,) = [args for name, args in instructions if name == "ENTRYPOINT"]
    assert entrypoint.endswith('"python", "-m", "playground"]'), entrypoint
    run = " ".join(args for name, args in instructions if name == "RUN")
    assert "--no-deps /tmp/src" in run and "--extra playground" in run, "only the playground extra, no torch"
    ignore = (DOCKER / "Dockerfile.playground.dockerignore").read_text().splitlines()
    for needed in ("*", "!pyproject.toml", "!README.md", "!predictor/", "!playground/", "!docker/pyproject_deps.py"):
        assert needed in ignore, f"Dockerfile.playground.dockerignore lacks {needed}"


def test_pyproject_deps_prints_one_extra_and_refuses_an_unknown_one() -> None:
    deps = pyproject_deps.dependencies(REPO_ROOT / "pyproject.toml", extra="playground")
    assert {pyproject_deps.requirement_name(dep) for dep in deps} == {"fastapi", "uvicorn", "httpx"}
    result = subprocess.run(
        [sys.executable, str(DOCKER / "pyproject_deps.py"), str(REPO_ROOT / "pyproject.toml"), "--extra", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "no optional extra 'nope'" in result.stderr


def test_runtime_images_are_named_after_their_dockerfile() -> None:
    expected = {"neuron": "neuron", "nvidia": "gpu", "cpu": "cpu"}
    for accelerator, image in _runtime_images().items():
        flavour = expected[accelerator]
        assert image.startswith(f"{DEFAULT_REGISTRY}/predictor-{flavour}:")
        assert (DOCKER / f"Dockerfile.{flavour}").is_file()


def test_build_script_rejects_an_unknown_target() -> None:
    result = subprocess.run(
        ["bash", str(DOCKER / "build.sh"), "tpu"],
        capture_output=True,
        text=True,
        env={**os.environ, "DRY_RUN": "1"},
        timeout=30,
        check=False,
    )
    assert result.returncode == 2 and "usage" in result.stderr


# ----------------------------------------------------------------------------- what each image runs

# Image -> the modules it runs: the entrypoint, plus the neuron-compile Job's command in the Neuron image.
IMAGE_ENTRY_MODULES = {
    "cpu": ["predictor.__main__"],
    "gpu": ["predictor.__main__"],
    "neuron": ["predictor.__main__", "modelbuild.neuron_compile"],
    "playground": ["playground.__main__"],
}


def _module_file(name: str) -> Path | None:
    path = REPO_ROOT.joinpath(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _first_party_closure(entries: list[str]) -> set[str]:
    """The repository's modules that ``entries`` import, transitively (imports anywhere in a module:
    the conservative reading, since a function-level import runs when that code path does)."""
    from tests.source_imports import file_imports

    seen: set[str] = set()
    todo = list(entries)
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            module = ".".join(parts[:depth])
            path = _module_file(module)
            if path is None or module in seen:
                continue
            seen.add(module)
            for imported in file_imports(path, REPO_ROOT):
                todo.append(imported)
                target = _module_file(imported)
                if target is not None and target.name == "__init__.py":  # `from package import name`: any submodule
                    todo.extend(f"{imported}.{child.stem}" for child in target.parent.glob("*.py"))
    return seen


def test_the_neuron_compile_job_runs_a_module_of_the_neuron_image() -> None:
    job = yaml.safe_load((REPO_ROOT / "deploy/neuron-compile/job.yaml").read_text())
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["python", "-m"]
    assert container["command"][2] in IMAGE_ENTRY_MODULES["neuron"]
    assert container["image"].split("/")[-1].startswith("predictor-neuron:")


@pytest.mark.parametrize("image", sorted(IMAGE_ENTRY_MODULES))
def test_each_image_context_holds_every_package_its_commands_import(image: str) -> None:
    allowed = {
        line[1:].strip("/")
        for line in (DOCKER / f"Dockerfile.{image}.dockerignore").read_text().splitlines()
        if line.startswith("!") and line.endswith("/")
    }
    packages = {module.split(".")[0] for module in _first_party_closure(IMAGE_ENTRY_MODULES[image])}
    assert packages - allowed == set(), f"Dockerfile.{image}.dockerignore leaves out what the image runs"
    if image in ("cpu", "gpu"):
        assert packages == {"predictor"}, "the runtime images carry the server only"


def _third_party_imports(modules: set[str]) -> set[str]:
    """Top-level names of what ``modules`` import from outside the repository and the standard library."""
    from tests.source_imports import file_imports

    names = set()
    for module in modules:
        for imported in file_imports(_module_file(module), REPO_ROOT):
            top = imported.split(".")[0]
            if _module_file(top) is None and top not in sys.stdlib_module_names:
                names.add(top)
    return names


def _installed_with(requirements: list[str]) -> set[str]:
    """The distributions pip installs for ``requirements`` (their requirements too, extras aside), as
    found in this environment."""
    from importlib.metadata import PackageNotFoundError, requires

    todo = [pyproject_deps.requirement_name(requirement) for requirement in requirements]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [pyproject_deps.requirement_name(r) for r in requires(name) or () if "extra ==" not in r]
        except PackageNotFoundError:
            pass
    return seen


def test_the_controller_image_installs_what_its_run_path_imports() -> None:
    from importlib.metadata import packages_distributions

    run = " ".join(args for name, args in _instructions(REPO_ROOT / "controller" / "Dockerfile") if name == "RUN")
    assert "pyproject_deps.py /tmp/src/pyproject.toml --extra controller" in run, run
    extra = pyproject_deps.dependencies(REPO_ROOT / "pyproject.toml", extra="controller")
    installed = _installed_with(extra)
    distributions = packages_distributions()
    for name in sorted(_third_party_imports(_first_party_closure(["controller.__main__", "controller.loop"]))):
        provided_by = {pyproject_deps.normalize(d) for d in distributions.get(name, [name])}
        assert provided_by & installed, f"controller imports {name}, which the controller extra does not install"
