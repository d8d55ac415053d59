"""The `platform` trap and the import direction between layers."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_source_roots_are_not_packages():
    for root in ("platform", "models", "serve"):
        assert not (ROOT / root / "__init__.py").exists(), f"{root}/__init__.py would shadow or confuse imports"


def test_import_platform_from_repo_root_is_stdlib():
    code = "import platform, torch; print(platform.__file__); print(platform.python_version())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0]
    assert str(ROOT) not in first, f"`import platform` resolved into the repo: {first}"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_models_never_import_ray_or_platform():
    for path in (ROOT / "models").rglob("*.py"):
        bad = _imports(path) & {"ray", "argus_platform", "argus_serve", "jobs"}
        assert not bad, f"{path} imports {bad}: argus_models must stay pure torch/torchrec"


def test_serve_never_imports_the_training_code():
    for path in (ROOT / "serve").rglob("*.py"):
        bad = _imports(path) & {"argus_platform", "jobs"}
        assert not bad, f"{path} imports {bad}: argus_serve reads a run's files through argus_models only"


def test_nothing_imports_jobs():
    for root in ("platform", "models", "serve", "tests"):
        for path in (ROOT / root).rglob("*.py"):
            assert "jobs" not in _imports(path), f"{path} imports jobs/"


def test_the_data_code_does_not_import_the_job_config():
    """data/ reads its own config section (data/config.py); config.py imports data, never the reverse."""
    for path in (ROOT / "platform" / "argus_platform" / "data").rglob("*.py"):
        modules = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
        assert "argus_platform.config" not in modules, f"{path} imports argus_platform.config"


# The jobs whose file holds all there is of them (a generator's CLI around `data.synthetic.generate`).
SELF_CONTAINED_JOBS = {"bench_synthetic"}


def test_every_job_has_a_driver_of_its_name():
    """jobs/<job>.py is a thin file; the code it runs lives in a module of the same name (`<area>/<job>.py`)
    that it imports, so the driver of any job is found by its file name."""
    modules = {p.stem: p for root in ("platform", "serve") for p in (ROOT / root).rglob("*.py")}
    for job in sorted((ROOT / "jobs").glob("*.py")):
        if job.stem in SELF_CONTAINED_JOBS:
            continue
        assert job.stem in modules, f"jobs/{job.name} has no driver module {job.stem}.py under platform/ or serve/"
        driver = modules[job.stem].relative_to(ROOT).parts[1:]  # argus_platform/.../<job>.py
        dotted = ".".join(driver)[: -len(".py")]
        imported = {n.module for n in ast.walk(ast.parse(job.read_text())) if isinstance(n, ast.ImportFrom)}
        cli = (ROOT / "platform" / "argus_platform" / "cli.py").read_text()
        assert dotted in imported or ("argus_platform.cli" in imported and dotted in cli), (
            f"jobs/{job.name} does not run {dotted} (directly or through argus_platform.cli)"
        )


def test_the_pipeline_steps_need_only_the_standard_library_yaml_and_kubernetes():
    """The pipeline's steps run as KFP lightweight components in a plain Python image
    (pipeline.kfp.component_image) with PyYAML and the kubernetes client, carrying only
    argus_platform/pipeline: they must not import the training stack, kfp or the rest of the package."""
    allowed = set(sys.stdlib_module_names) | {"yaml", "kubernetes", "argus_platform"}
    package = ROOT / "platform" / "argus_platform" / "pipeline"
    for name in ("objects", "kube", "local", "steps"):
        path = package / f"{name}.py"
        assert _imports(path) <= allowed, f"{path} imports {_imports(path) - allowed}"
        tree = ast.parse(path.read_text())
        own = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        own |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        outside = {m for m in own if m.startswith("argus_platform") and not m.startswith("argus_platform.pipeline")}
        assert not outside, f"{path} imports {outside}, which the steps do not carry"
