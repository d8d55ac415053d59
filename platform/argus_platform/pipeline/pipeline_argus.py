"""`jobs/pipeline_argus.py compile | run-local`: the pipeline's command line.

    compile --out FILE     the pipeline IR YAML, the config's values as the parameters' defaults
    run-local              the same pipeline function on kfp.local (SubprocessRunner): the jobs run
                           in subprocesses of the training stack, Serve on loopback

Both take the job's `--config FILE` / `--set KEY=VALUE` (the pipeline's parameters, `kfp.*`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from pathlib import Path

from argus_platform.cli import config_epilog
from argus_platform.configlib import ConfigError, load_config, to_dict
from argus_platform.pipeline.config import PipelineConfig

REPO = Path(__file__).resolve().parents[3]


def parser() -> argparse.ArgumentParser:
    epilog = config_epilog(PipelineConfig, "pipeline parameters and kfp.* (YAML or --set)")
    p = argparse.ArgumentParser(
        description="The Argus Kubeflow pipeline: prepare → train → gate → tune → deploy → smoke request."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("compile", "write the pipeline IR YAML"), ("run-local", "run the pipeline on kfp.local")):
        s = sub.add_parser(
            name, help=text, description=text, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        s.add_argument("--config", help="YAML file of pipeline parameters")
        s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        if name == "compile":
            s.add_argument("--out", required=True, help="where to write the IR YAML")
        else:
            s.add_argument("--pipeline-root", default="", help="task outputs (default <home>/runs/<run>/pipeline)")
            s.add_argument("--keep-serving", action="store_true", help="leave the local Serve server running")
    return p


def compile_pipeline(cfg: PipelineConfig, out: Path) -> Path:
    from kfp import compiler

    from argus_platform.pipeline.pipeline import build

    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(cfg.kfp, cfg.home), str(out), pipeline_parameters=cfg.parameters())
    return out


def local_config(cfg: PipelineConfig) -> PipelineConfig:
    """run-local's parameters: the local backend, and the checkout as home unless one is given."""
    cfg.backend = "local"
    if cfg.home == PipelineConfig().home:
        cfg.home = str(REPO)
    cfg.home = str(Path(cfg.home).resolve())
    return cfg


class _Reasons:
    """stdout as it is, remembering the failure reasons the steps raise (kfp.local prints the failed
    task's traceback but reports only the task's name)."""

    PATTERN = re.compile(r"(?:StepFailed|GateFailed): (.*)")

    def __init__(self, out) -> None:
        self.out, self.reasons = out, []

    def write(self, text: str) -> int:
        self.reasons += self.PATTERN.findall(text)
        return self.out.write(text)

    def __getattr__(self, name: str):
        return getattr(self.out, name)


def artifacts(run_root: Path) -> list[str]:
    """One line per task output: the Metrics' values, the files."""
    lines = []
    for output in sorted(run_root.glob("*/executor_output.json")):
        task = output.parent.name
        for name, group in json.loads(output.read_text()).get("artifacts", {}).items():
            for a in group["artifacts"]:
                values = ", ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in a.get("metadata", {}).items()
                )
                lines.append(f"  {task}/{name}: {values or a['uri']}")
    return lines


def run_local(cfg: PipelineConfig, pipeline_root: str, keep_serving: bool) -> int:
    from kfp import local

    from argus_platform.pipeline import local as backend
    from argus_platform.pipeline.pipeline import build

    os.environ.setdefault("ARGUS_REPO", str(REPO))
    # The steps' cluster settings (requests, limits) mean nothing to the local runner.
    warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
    root = Path(pipeline_root or Path(cfg.home) / "runs" / cfg.run / "pipeline").resolve()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    print(f"[pipeline] run-local: {json.dumps(cfg.parameters())}\n[pipeline] task outputs under {root}", flush=True)
    started, before = time.time(), set(root.glob("*"))
    stdout, sys.stdout = sys.stdout, _Reasons(sys.stdout)
    try:
        build(cfg.kfp, cfg.home)(**cfg.parameters())
    except RuntimeError as exc:
        reasons = sys.stdout.reasons
        sys.stdout = stdout
        why = f"\n[pipeline] {reasons[-1]}" if reasons else ""
        print(f"[pipeline] FAILED after {time.time() - started:.0f}s: {exc}{why}", file=sys.stderr, flush=True)
        return 1
    finally:
        sys.stdout = stdout
        if not keep_serving and backend.stop_server(cfg.home, cfg.service):
            print(
                f"[pipeline] stopped the local Serve server {cfg.service!r} (--keep-serving leaves it up)", flush=True
            )
    print(f"[pipeline] succeeded in {time.time() - started:.0f}s; outputs:", flush=True)
    for run_root in sorted(set(root.glob("*")) - before):
        print("\n".join(artifacts(run_root)), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.command == "compile":
        out = compile_pipeline(cfg, Path(args.out))
        print(f"[pipeline] wrote {out} (defaults: {json.dumps(to_dict(cfg))})")
        return 0
    return run_local(local_config(cfg), args.pipeline_root, args.keep_serving)
