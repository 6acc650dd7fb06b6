"""The parent's side of the worker processes: start them, hear from them, end them."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as PipeEnd
from typing import Any

import trio

from clients.loadgen.errors import LoadError
from clients.loadgen.messages import WorkerFailed, WorkerPlan, receive_from
from clients.loadgen.worker import worker_entry


@dataclass
class WorkerHandle:
    """A started worker process and the parent's end of its pipe."""

    index: int
    process: multiprocessing.process.BaseProcess
    pipe: PipeEnd
    connections: int


async def start_workers(plans: Sequence[WorkerPlan]) -> list[WorkerHandle]:
    """One worker process per plan (spawn context). If one cannot be started, the ones
    already started are ended and the error is raised."""
    context = multiprocessing.get_context("spawn")
    handles: list[WorkerHandle] = []
    try:
        for plan in plans:
            parent_end, child_end = context.Pipe()
            process = context.Process(target=worker_entry, args=(plan, child_end),
                                      name=f"loadgen-worker-{plan.index}", daemon=True)
            handles.append(WorkerHandle(plan.index, process, parent_end, len(plan.connections)))
            await trio.to_thread.run_sync(process.start)
            child_end.close()
    except BaseException:
        await stop_workers(handles, 0.0)
        raise
    return handles


async def receive_all(handles: Sequence[WorkerHandle], kind: type[Any],
                      limit_s: float) -> list[Any]:
    """One message of ``kind`` from every worker within ``limit_s``.
    Raises ``LoadError``."""
    results: list[Any] = [None] * len(handles)

    async def one(slot: int, handle: WorkerHandle) -> None:
        try:
            message = await receive_from(handle.pipe)
        except (EOFError, OSError):
            raise LoadError(f"worker {handle.index} exited "
                            f"(exit code {handle.process.exitcode})") from None
        if isinstance(message, WorkerFailed):
            raise LoadError(f"worker {handle.index} failed:\n{message.error}")
        if not isinstance(message, kind):
            raise LoadError(f"worker {handle.index} sent {message!r}")
        results[slot] = message

    try:
        with trio.fail_after(limit_s):
            async with trio.open_nursery() as nursery:
                for slot, handle in enumerate(handles):
                    nursery.start_soon(one, slot, handle)
    except trio.TooSlowError:
        raise LoadError(f"workers did not answer within {limit_s:.0f} s") from None
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        raise first if isinstance(first, LoadError) else group from None
    return results


async def stop_workers(handles: Sequence[WorkerHandle], grace_s: float) -> None:
    """Join every worker, allowing ``grace_s`` in all; terminate, then kill, one that
    has not ended by then."""
    with trio.CancelScope(shield=True):
        deadline = time.monotonic() + grace_s
        for handle in handles:
            process = handle.process
            if process.pid is not None:
                await trio.to_thread.run_sync(process.join,
                                              max(0.0, deadline - time.monotonic()))
                if process.exitcode is None:
                    process.terminate()
                    await trio.to_thread.run_sync(process.join, 2.0)
                if process.exitcode is None:
                    process.kill()
                    await trio.to_thread.run_sync(process.join, 2.0)
            handle.pipe.close()
