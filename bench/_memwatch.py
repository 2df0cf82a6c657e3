"""Runs a service with a view of its memory for a bench: ``python bench/_memwatch.py DIR -m MODULE ARGS``.

A thread of the service answers requests the bench writes to ``DIR/request`` (``<seq> <command>``)
with a JSON line in ``DIR/reply``: ``heap`` (pymalloc blocks, glibc's malloc figures, objects the
collector tracks, the sizes of the gateway's tables), ``trim`` (``malloc_trim(0)``, and the RSS
before and after: memory the allocator held but could give back) and, when BENCH_TRACEMALLOC=N is
set (N frames), ``mark`` and ``top`` (where the memory allocated since the mark was allocated,
biggest first).
Reading a table's ``len`` from another thread is safe under the GIL; nothing here changes the
service. Costs nothing between requests; ``heap`` walks the collector's objects (some ms).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


_MALLINFO2_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")  # fmt: skip


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = _MallInfo2
apps: list[Any] = []  # the gateway apps the service built
_marks: list[tracemalloc.Snapshot] = []


def rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE / 2**20


def _tables() -> dict[str, int]:
    """Sizes of the gateway's per-call tables (0 where there is no gateway)."""
    out: dict[str, int] = {}
    for app in apps:
        core = app.core
        table = core.calls.table
        registrar = core.registrar
        sizes = {
            "tx_clients": len(core.transactions.clients),
            "tx_servers": len(core.transactions.servers),
            "calls": len(table.calls),
            "by_dialog": len(table._by_dialog),
            "by_invite": len(table._by_invite),
            "retired": len(table._retired),
            "nonce_counts": len(registrar._nonces._counts),
            "lockout": len(registrar._lockout._sources),
        }
        for key, value in sizes.items():
            out[key] = out.get(key, 0) + value
    from services.runtime.logs import call_traces

    out["call_traces"] = len(call_traces)
    return out


def _heap() -> dict[str, Any]:
    info = _libc.mallinfo2()
    return {
        "rss_mib": round(rss_mib(), 1),
        "py_blocks": sys.getallocatedblocks(),
        "gc_objects": len(gc.get_objects()),
        "gc_collections": [generation["collections"] for generation in gc.get_stats()],
        "malloc_in_use_mib": round(info.uordblks / 2**20, 1),
        "malloc_free_mib": round(info.fordblks / 2**20, 1),
        "mmap_mib": round(info.hblkhd / 2**20, 1),
        **_tables(),
    }


def _collect() -> dict[str, Any]:
    """A full collection now: what was garbage waiting for the collector (cycles) goes."""
    before = sys.getallocatedblocks()
    found = gc.collect()
    return {"unreachable": found, "py_blocks_before": before, "py_blocks_after": sys.getallocatedblocks()}


def _trim() -> dict[str, Any]:
    before = rss_mib()
    _libc.malloc_trim(0)
    return {"rss_before_mib": round(before, 1), "rss_after_mib": round(rss_mib(), 1)}


def _snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def _mark() -> dict[str, Any]:
    """Remembers what is allocated now: ``top`` then shows what was allocated since."""
    if tracemalloc.is_tracing():
        _marks[:] = [_snapshot()]
    return {}


def _top(limit: int = 15) -> dict[str, Any]:
    if not tracemalloc.is_tracing():
        return {"top": ["BENCH_TRACEMALLOC is not set"]}
    snapshot = _snapshot()
    group = "traceback" if tracemalloc.get_traceback_limit() > 1 else "lineno"
    lines = []
    if _marks:
        for diff in snapshot.compare_to(_marks[0], group)[:limit]:
            frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in diff.traceback)
            lines.append(f"{diff.size_diff / 2**10:+9.0f} KiB {diff.count_diff:+8d} blocks  {frames}")
    else:
        for stat in snapshot.statistics(group)[:limit]:
            frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback)
            lines.append(f"{stat.size / 2**10:9.0f} KiB {stat.count:8d} blocks  {frames}")
    return {"traced_mib": round(tracemalloc.get_traced_memory()[0] / 2**20, 1), "top": lines}


def _answer(folder: Path) -> None:
    request, reply = folder / "request", folder / "reply"
    done = ""
    while True:
        time.sleep(0.2)
        try:
            text = request.read_text().strip()
        except OSError:
            continue
        if not text or text == done:
            continue
        done = text
        seq, _, command = text.partition(" ")
        commands = {"heap": _heap, "trim": _trim, "mark": _mark, "collect": _collect, "top": _top}
        try:
            answer = commands[command]() if command in commands else {"error": f"unknown {command!r}"}
        except Exception as exc:  # a bench view: say what failed, never stop the service
            answer = {"error": repr(exc)}
        partial = folder / "reply.part"
        partial.write_text(json.dumps({"seq": seq, **answer}))
        partial.replace(reply)


def main() -> None:
    folder, flag, module, *rest = sys.argv[1:]
    assert flag == "-m", "usage: _memwatch.py DIR -m MODULE ARGS"
    frames = int(os.environ.get("BENCH_TRACEMALLOC", "0") or 0)
    if frames:
        tracemalloc.start(frames)
    import services.sipgw.app as gateway_app

    build = gateway_app.SipGatewayApp.__init__

    def remembered(self: Any, *args: Any, **kwargs: Any) -> None:
        build(self, *args, **kwargs)
        apps.append(self)

    gateway_app.SipGatewayApp.__init__ = remembered  # type: ignore[method-assign]
    threading.Thread(target=_answer, args=(Path(folder),), name="memwatch", daemon=True).start()
    sys.argv = [module, *rest]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
