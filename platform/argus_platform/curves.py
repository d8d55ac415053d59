"""Training curves: TensorBoard event files under `<run dir>/tensorboard/` and `curves.png`.

Rank 0 writes them (tensorboardX, which Ray Tune already brings; `tensorboard --logdir <run dir>`
shows them): every `optim.log_every_steps` the loss, each loss term and both learning rates by step;
every epoch its loss, seconds and events/s; every evaluation the validation metrics. At the end of
the run `curves.png` draws the training loss and validation NDCG@10 against the epoch.
"""

from __future__ import annotations

from pathlib import Path

TENSORBOARD = "tensorboard"
CURVES = "curves.png"


class Curves:
    """Scalars for TensorBoard; a no-op on ranks other than 0."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD), flush_secs=30)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for tag, value in values.items():  # TensorBoard's tags take no "@": ndcg@10 -> ndcg_at_10
                self.writer.add_scalar(tag.replace("@", "_at_"), float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(train_losses: list[list[float]], history: list[dict], path: Path, title: str = "") -> Path:
    """curves.png: training loss per epoch (left) and validation NDCG@10 per evaluated epoch (right).
    train_losses: [[epoch, loss], ...]; history: the run's evaluated epochs (metrics.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train_losses:
        epochs, losses = zip(*train_losses)
        left.plot(epochs, losses, marker="." if len(epochs) < 40 else None)
    left.set(xlabel="epoch", ylabel="training loss", title="training loss")
    evaluated = [(h["epoch"], h["validation"]["ndcg@10"]) for h in history if "ndcg@10" in h.get("validation", {})]
    if evaluated:
        epochs, ndcg = zip(*evaluated)
        right.plot(epochs, ndcg, marker="o", color="tab:green")
        best = max(range(len(ndcg)), key=ndcg.__getitem__)
        right.annotate(f"{ndcg[best]:.4f}", (epochs[best], ndcg[best]), textcoords="offset points", xytext=(0, 6))
    right.set(xlabel="epoch", ylabel="NDCG@10", title="validation NDCG@10")
    right.margins(y=0.15)  # room for the best value's label
    for ax in (left, right):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
