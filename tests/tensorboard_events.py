"""Reads the scalars of TensorBoard event files (TFRecord framing of tensorboardX's Event protos)."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

from tensorboardX.proto import event_pb2


def scalar_series(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} over every event file under `directory`, in file and write order."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for path in sorted(Path(directory).glob("**/events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            record = data[at + 12 : at + 12 + length]  # after the length and its CRC
            at += 12 + length + 4  # and the record's CRC
            event = event_pb2.Event.FromString(record)
            for value in event.summary.value:
                series[value.tag].append((event.step, value.simple_value))
    return dict(series)
