"""The quiet terminal's pieces: rank 0's `[argus]` lines copied to the progress log, and the driver
following that file (lines written before it started are not printed again)."""

import io
import time

from argus_platform.console import Follow, ProgressTee


def test_progress_tee_copies_only_our_complete_lines(tmp_path):
    inner = io.StringIO()
    tee = ProgressTee(inner, tmp_path / "logs" / "progress.log")
    tee.write("[argus] epoch 1 done")
    tee.write(": train_loss=1.0\nsome library chatter\n  not ours, indented\n  [argus] indented\n")
    tee.write("[argus] sharding plan:\n  t_item: row_wise\n  t_ctx: table_wise\nchatter\n[argus] half")
    assert inner.getvalue().startswith("[argus] epoch 1 done: train_loss=1.0\nsome library chatter")  # all passed on
    logged = (tmp_path / "logs" / "progress.log").read_text()
    assert logged == (  # our lines and the indented lines continuing them; the unfinished line waits
        "[argus] epoch 1 done: train_loss=1.0\n[argus] indented\n"
        "[argus] sharding plan:\n  t_item: row_wise\n  t_ctx: table_wise\n"
    )


def test_follow_prints_what_is_appended_while_it_runs(tmp_path, capsys):
    log = tmp_path / "progress.log"
    log.write_text("[argus] from an earlier run\n")
    with Follow(log, every=0.05):
        with open(log, "a") as f:
            f.write("[argus] step 20\n[argus] par")
            f.flush()
            time.sleep(0.3)
            assert capsys.readouterr().out == "[argus] step 20\n"  # complete lines only, while running
            f.write("tial, then done\n")
    assert capsys.readouterr().out == "[argus] partial, then done\n"  # the rest at the end
