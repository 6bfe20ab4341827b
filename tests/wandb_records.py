"""Reading what wandb itself wrote: the `.wandb` transaction log of an offline run.

The file is wandb's own record log: a 7-byte header, then 32 KiB blocks of chunks
(crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each record a
serialized `wandb_internal_pb2.Record` protobuf message.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from google.protobuf.message import DecodeError
from patience import PATIENCE
from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER, CHUNK = 32768, 7, 7


def _payloads(data: bytes):
    pos, pending = HEADER, b""
    while pos + CHUNK <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK:  # block trailer padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK])
        if length == 0 and kind == 0:
            pos += left
            continue
        payload, pos = data[pos + CHUNK : pos + CHUNK + length], pos + CHUNK + length
        if kind == 1:
            yield payload
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            yield pending + payload


def _items(items) -> dict:
    """wandb's (key | nested_key, value_json) items as a flat dict; nested values as dicts."""
    out = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = json.loads(item.value_json)
    return out


def wandb_files(run_dir: Path) -> list[Path]:
    return sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))


def read_run(path: Path, timeout: float = PATIENCE) -> dict:
    """run record, metric definitions, history points, final summary and exit code of one finished
    W&B run.

    `run.finish()` returns once wandb's service has the exit record, and the service writes the file
    in 32 KiB blocks, the last of them when it closes the run's stream, after `finish` has returned.
    In the process that logged the run the file is complete only then: wait for its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = _parse(Path(path).read_bytes())
        except DecodeError:  # a block being written
            records = []
        if any(kind == "exit" for kind, _ in records):
            return _run(records)
        assert time.monotonic() < deadline, f"{path}: wandb wrote no exit record in {timeout:.0f} s"
        time.sleep(0.05)


def _parse(data: bytes) -> list:
    records = []
    for payload in _payloads(data):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        records.append((kind, record))
    return records


def _run(records: list) -> dict:
    run, metrics, history, summary, exit_code = None, [], [], {}, None
    for kind, record in records:
        if kind == "run":
            run = record.run
        elif kind == "metric":
            metrics.append(record.metric)
        elif kind == "history":
            history.append(_items(record.history.item))
        elif kind == "summary":
            summary.update(_items(record.summary.update))
        elif kind == "exit":
            exit_code = record.exit.exit_code
    config = _items(run.config.update) if run else {}
    return {
        "run": run,
        "config": config,
        "metrics": metrics,
        "history": history,
        "summary": summary,
        "exit_code": exit_code,
    }
