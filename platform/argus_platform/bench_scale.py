"""`jobs/bench_scale.py`: the whole training job on synthetic logs of growing size, timed and measured.

Each grid point is a full run (`train_argus.train`: generate, prepare, one epoch, validation and test
over the full catalogue) in `<out_dir>/<events>x<items>`, while a sampler thread reads the resident
memory of this process and every process under it (Ray's workers included) once a second. The
figures per point: generate / prepare / epoch / evaluation seconds, training events/s, peak RSS per
process and of all of them together; then the growth ratios against linear (epoch time at 10M ÷ at
1M, ideal 10). A point whose `scale.json` exists is not run again, so an interrupted grid continues.
RSS counts shared pages (the torch libraries, Ray's object store) in every process that maps them,
so the sum over processes over-counts; the machine's own figure (total − available memory, peak
and before the run) is what the run really used.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from argus_models.rundir import absolute
from argus_platform.config import TrainJobConfig
from argus_platform.configlib import ConfigError, load_config
from argus_platform.configlib import documented as _help
from argus_platform.progress import StolenCpu
from argus_platform.raytrain import init_ray, say_where_logs_go
from argus_platform.train_argus import train


@dataclass
class ScaleBenchConfig:
    events: list[int] = _help("events of the event-size sweep", factory=lambda: [1_000_000, 3_000_000, 10_000_000])
    events_items: int = _help("catalogue size of the event-size sweep", 1_000_000)
    items: list[int] = _help("catalogue sizes of the item-size sweep", factory=lambda: [10_000, 100_000, 1_000_000])
    items_events: int = _help("events of the item-size sweep", 3_000_000)
    events_per_user: int = _help("mean events per user (users = events / this)", 40)
    train_config: str = _help("training YAML every point starts from ('' = the embedded default)", "")
    train_overrides: list[str] = _help(
        "overrides for every point (after the bench's own: synthetic sizes, one epoch, no impressions)", factory=list
    )
    out_dir: str = _help(
        "runs in <out_dir>/<events>x<items>, figures in <out_dir>/scale.json and scale.md", "runs/bench-scale"
    )

    def validate(self) -> None:
        if not self.events and not self.items:
            raise ConfigError("bench_scale: give at least one point (events or items)")
        if self.events_per_user < 2:
            raise ConfigError(f"events_per_user must be at least 2, got {self.events_per_user}")


def grid(cfg: ScaleBenchConfig) -> list[tuple[int, int]]:
    """(events, items) points, each once: the event sweep, then the item sweep."""
    points = [(e, cfg.events_items) for e in cfg.events] + [(cfg.items_events, i) for i in cfg.items]
    return list(dict.fromkeys(points))


class MemorySampler:
    """Peak RSS per process (this one and its descendants) and of their sum, sampled every `every_s`."""

    def __init__(self, every_s: float = 1.0) -> None:
        self.every_s = every_s
        self.peak_total = 0
        self.machine_before = psutil.virtual_memory().total - psutil.virtual_memory().available
        self.peak_machine = self.machine_before
        self.peak_by_pid: dict[int, tuple[int, str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process(os.getpid())
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss, name = proc.memory_info().rss, " ".join(proc.cmdline()[:1] or [proc.name()])
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += rss
                if rss > self.peak_by_pid.get(proc.pid, (0, ""))[0]:
                    self.peak_by_pid[proc.pid] = (rss, proc.name() if name.endswith("python") else name[:40])
            self.peak_total = max(self.peak_total, total)
            vm = psutil.virtual_memory()
            self.peak_machine = max(self.peak_machine, vm.total - vm.available)
            self._stop.wait(self.every_s)

    def summary(self) -> dict:
        top = sorted(self.peak_by_pid.values(), reverse=True)[:5]
        return {
            "peak_total_gib": round(self.peak_total / 2**30, 2),
            "peak_machine_used_gib": round(self.peak_machine / 2**30, 2),
            "machine_used_before_gib": round(self.machine_before / 2**30, 2),
            "peak_process_gib": round(top[0][0] / 2**30, 2) if top else 0.0,
            "largest_processes": [{"name": n, "peak_rss_gib": round(r / 2**30, 2)} for r, n in top],
        }


def point_config(cfg: ScaleBenchConfig, events: int, items: int, run_dir: Path) -> TrainJobConfig:
    users = max(1, events // cfg.events_per_user)
    own = [
        f"data.synthetic.num_users={users}",
        f"data.synthetic.num_items={items}",
        f"data.synthetic.events_per_user={cfg.events_per_user}",
        "data.synthetic.impressions_per_event=0",
        "optim.epochs=1",
        "optim.eval_every_epochs=1",
        f"run.dir={run_dir}",
    ]
    return load_config(TrainJobConfig, cfg.train_config or None, own + list(cfg.train_overrides))


def run_point(cfg: ScaleBenchConfig, events: int, items: int, root: Path) -> dict:
    run_dir = root / f"{events}x{items}"
    done = run_dir / "scale.json"
    if done.is_file():
        print(f"[argus] bench_scale: {run_dir.name} already measured ({done})", flush=True)
        return json.loads(done.read_text())
    print(f"[argus] bench_scale: {events:,} events x {items:,} items -> {run_dir}", flush=True)
    job = point_config(cfg, events, items, run_dir)
    started, stolen = time.time(), StolenCpu()
    with MemorySampler() as memory:
        final = train(job)
    job_steal = stolen.fraction()
    summary = json.loads((run_dir / "data" / "summary.json").read_text())
    epoch = final["history"][-1]
    stages = summary["stage_seconds"]
    row = {
        "events": summary["validation"]["clean_rows"],
        "target_events": events,
        "items": items,
        "catalogue": summary["num_items"],
        "users": summary["num_users"],
        "generate_s": stages.get("generate", 0.0),
        "prepare_s": round(sum(v for k, v in stages.items() if k != "generate"), 1),
        "epoch_s": round(epoch["epoch_seconds"], 1),
        "validation_s": round(epoch["validation_seconds"], 1),
        "test_s": round(epoch.get("test_seconds", 0.0), 1),
        "train_events_per_s": round(epoch["train_events_per_second"]),
        # the share of the machine's CPU the hypervisor gave to other guests (None: not reported)
        "epoch_cpu_stolen_pct": _pct(epoch.get("cpu_stolen_fraction")),
        "job_cpu_stolen_pct": _pct(job_steal),
        "job_s": round(time.time() - started, 1),
        "test_ndcg@10": final["test"]["ndcg@10"],
        "popularity_ndcg@10": final["baselines"]["popularity"]["test"]["ndcg@10"],
        "precision": final["protocol"]["precision"],
        **memory.summary(),
    }
    row["prepare_events_per_s"] = round(row["events"] / max(row["prepare_s"], 1e-9))
    done.write_text(json.dumps(row, indent=2))
    return row


def _pct(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 1)


def growth(rows: list[dict], key: str, by: str, work=None) -> list[dict]:
    """Ratio of `key` between the largest and smallest point of the sweep over `by` (other axis fixed),
    beside the ideal (linear) ratio of `work(row)` (default: the swept size itself)."""
    if len(rows) < 2:
        return []
    lo, hi = min(rows, key=lambda r: r[by]), max(rows, key=lambda r: r[by])
    size = work or (lambda r: r[by])
    ideal = size(hi) / size(lo)
    got = hi[key] / max(lo[key], 1e-9)
    return [
        {
            "metric": key,
            "sweep": by,
            "from": lo[by],
            "to": hi[by],
            "ratio": round(got, 2),
            "linear": round(ideal, 2),
            "work": by if work is None else ("users × items" if ideal != 1.0 else "constant"),
            "vs_linear": round(got / ideal, 2),
        }
    ]


def bench(cfg: ScaleBenchConfig) -> dict:
    cfg.validate()
    root = absolute(cfg.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    train_cfg = load_config(TrainJobConfig, cfg.train_config or None, list(cfg.train_overrides))
    init_ray(train_cfg.scaling.local_num_cpus, quiet=not train_cfg.run.verbose)
    say_where_logs_go(root, "run.verbose=true in train_overrides", "[scale]")
    rows = [run_point(cfg, e, i, root) for e, i in grid(cfg)]
    by_events = [r for r in rows if r["items"] == cfg.events_items and r["target_events"] in cfg.events]
    by_items = [r for r in rows if r["target_events"] == cfg.items_events and r["items"] in cfg.items]
    ratios = []
    for key in ("generate_s", "prepare_s", "epoch_s"):
        ratios += growth(by_events, key, "events")
    # full-catalogue evaluation scores every user against every item: its work is users × items
    pairs = lambda r: r["users"] * r["catalogue"]  # noqa: E731
    ratios += growth(by_events, "test_s", "events", pairs) + growth(by_items, "test_s", "catalogue", pairs)
    ratios += growth(by_items, "epoch_s", "catalogue", lambda r: 1.0)  # ideally flat in the catalogue
    result = {"points": rows, "growth": ratios}
    (root / "scale.json").write_text(json.dumps(result, indent=2))
    (root / "scale.md").write_text(format_tables(result) + "\n")
    return result


COLUMNS = [
    ("events", "events", "{:,}"),
    ("catalogue", "items", "{:,}"),
    ("generate_s", "generate s", "{:.0f}"),
    ("prepare_s", "prepare s", "{:.0f}"),
    ("epoch_s", "epoch s", "{:.0f}"),
    ("validation_s", "validation s", "{:.0f}"),
    ("test_s", "test s", "{:.0f}"),
    ("job_s", "job s", "{:.0f}"),
    ("train_events_per_s", "train events/s", "{:,}"),
    ("epoch_cpu_stolen_pct", "CPU stolen in epoch %", "{:.1f}"),
    ("prepare_events_per_s", "prepare events/s", "{:,}"),
    ("peak_process_gib", "peak RSS/process GiB", "{:.2f}"),
    ("peak_total_gib", "peak RSS sum GiB", "{:.2f}"),
    ("peak_machine_used_gib", "machine used GiB", "{:.2f}"),
]


def format_tables(result: dict) -> str:
    head = "| " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * len(COLUMNS)]
    for r in result["points"]:
        lines.append(
            "| " + " | ".join("n/a" if r.get(key) is None else fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |"
        )
    if result["growth"]:
        lines += ["", "| growth | sweep | ratio | linear in | linear | ÷ linear |", "|---|---|---|---|---|---|"]
        for g in result["growth"]:
            lines.append(
                f"| {g['metric']} | {g['sweep']} {g['from']:,} → {g['to']:,} | {g['ratio']} | {g['work']} | "
                f"{g['linear']} | {g['vs_linear']} |"
            )
    return "\n".join(lines)
