"""The pcap-slim command: a thin typed front over the coordinator, with rich progress bars.

Only typer loads at start-up; the engine (and numba) loads inside the command, so `--help` and
`--version` answer at once.
"""

from __future__ import annotations

import enum
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from . import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import TaskID

    from .cluster import Options as ClusterOptions
    from .coordinator import FileResult, Job
    from .metrics import Metrics

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
MMAP_MAX_WORKERS = 2  # default I/O: mmap with up to this many workers, buffered reads above


class Output(enum.StrEnum):
    human = "human"
    json = "json"


class Rules(enum.StrEnum):
    compatible = "compatible"
    forensic = "forensic"


def _version(value: bool) -> None:
    """`pcap-slim X.Y.Z (kernels: ...)`: which kernels a run would use, and why."""
    if value:
        from .kernelset import KernelChoiceError, describe

        try:
            kernels = describe()
        except KernelChoiceError as e:
            _err(f"pcap-slim: {e}")
            raise typer.Exit(EXIT_USAGE) from None
        typer.echo(f"pcap-slim {__version__} (kernels: {kernels})")
        raise typer.Exit(EXIT_OK)


def _usage(msg: str) -> typer.BadParameter:
    return typer.BadParameter(msg)


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def slim(
    dir: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Slim every pending *.pcap / *.pcapng (also .gz, .zst) in this directory in "
            "place.",
        ),
    ] = None,
    single: Annotated[Path | None, typer.Option("--single", help="Slim one file in place.")] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=256, help="Files processed at once (--dir).")
    ] = 1,
    age_minutes: Annotated[
        float, typer.Option(min=0, help="--dir only: skip files modified less than N minutes ago.")
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files that would be slimmed; write nothing.")
    ] = False,
    check_only: Annotated[
        bool, typer.Option("--check-only", help="Analyse and report; write nothing.")
    ] = False,
    output: Annotated[Output, typer.Option(help="Report format.")] = Output.human,
    max_io_mbps: Annotated[
        float | None,
        typer.Option(min=0.001, help="Cap read+write throughput, decimal MB/s, all workers."),
    ] = None,
    max_cpu_percent: Annotated[
        float | None,
        typer.Option(min=1, max=100, help="Cap this process's share of the machine's CPU."),
    ] = None,
    cpu_backoff_above: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=100,
            help="Lower the CPU target while the rest of the machine uses more than F %.",
        ),
    ] = None,
    cpu_backoff_strength: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="How hard to back off, 0.0-1.0.")
    ] = 0.5,
    mmap: Annotated[bool, typer.Option("--mmap", help="Force memory-mapped reads.")] = False,
    no_mmap: Annotated[bool, typer.Option("--no-mmap", help="Force buffered reads.")] = False,
    rules: Annotated[Rules, typer.Option(help="Decision rules.")] = Rules.compatible,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Progress bars on stderr (default: on a terminal with human output).",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch", help="--dir only: keep running, slimming each capture once it is eligible."
        ),
    ] = False,
    recursive: Annotated[
        bool,
        typer.Option(
            "--recursive", help="--dir only: every directory below it too (markers per directory)."
        ),
    ] = False,
    scheduler: Annotated[
        str | None,
        typer.Option(
            help="--dir on a Dask cluster: the scheduler's address (tcp://HOST:PORT); one task "
            "per file, on workers that see the files."
        ),
    ] = None,
    rescan_seconds: Annotated[
        float,
        typer.Option(min=1, help="--watch: look through the directory this often as well."),
    ] = 60.0,
    metrics_file: Annotated[
        Path | None,
        typer.Option(help="Write Prometheus metrics here (node_exporter textfile format)."),
    ] = None,
    compress_level: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=19,
            help="Compressed captures: the level of the slim copy (gzip 1-9, default 6; zstd "
            "1-19, default 3).",
        ),
    ] = None,
    offset_map: Annotated[
        bool,
        typer.Option(
            "--offset-map", help="Write each file's old-to-new record offsets beside its marker."
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Slim packet captures in place: keep every packet, header and handshake; cut encrypted
    payloads to their first 24 bytes."""
    if (dir is None) == (single is None):
        raise _usage("give exactly one of --dir and --single")
    if mmap and no_mmap:
        raise _usage("--mmap and --no-mmap exclude each other")
    if dry_run and check_only:
        raise _usage("--dry-run and --check-only exclude each other")
    if single is not None and age_minutes:
        raise _usage("--age-minutes applies to --dir only")
    if watch and dir is None:
        raise _usage("--watch applies to --dir only")
    if (recursive or scheduler) and dir is None:
        raise _usage("--recursive and --scheduler apply to --dir only")
    if watch and (recursive or scheduler):
        raise _usage("--watch watches one directory here; it excludes --recursive and --scheduler")
    if watch and (dry_run or check_only):
        raise _usage("--watch slims files; it excludes --dry-run and --check-only")
    if offset_map and (dry_run or check_only):
        raise _usage(
            "--offset-map is written when files are slimmed, not with --dry-run or --check-only"
        )
    use_mmap = True if mmap else False if no_mmap else workers <= MMAP_MAX_WORKERS
    show_progress = (
        (sys.stderr.isatty() and output is Output.human) if progress is None else progress
    )
    if output is Output.json:
        show_progress = False if progress is None else progress
    code = _run(
        directory=dir,
        single=single,
        workers=workers,
        age_minutes=age_minutes,
        dry_run=dry_run,
        check_only=check_only,
        as_json=output is Output.json,
        max_io_mbps=max_io_mbps,
        max_cpu_percent=max_cpu_percent,
        cpu_backoff_above=cpu_backoff_above,
        cpu_backoff_strength=cpu_backoff_strength,
        use_mmap=use_mmap,
        rules=rules.value,
        show_progress=show_progress and not watch,
        watch=watch,
        rescan_seconds=rescan_seconds,
        metrics_file=metrics_file,
        offset_map=offset_map,
        compress_level=compress_level,
        recursive=recursive,
        scheduler=scheduler,
    )
    raise typer.Exit(code)


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def _run(
    *,
    directory: Path | None,
    single: Path | None,
    workers: int,
    age_minutes: float,
    dry_run: bool,
    check_only: bool,
    as_json: bool,
    max_io_mbps: float | None,
    max_cpu_percent: float | None,
    cpu_backoff_above: float | None,
    cpu_backoff_strength: float,
    use_mmap: bool,
    rules: str,
    show_progress: bool,
    watch: bool = False,
    rescan_seconds: float = 60.0,
    metrics_file: Path | None = None,
    offset_map: bool = False,
    compress_level: int | None = None,
    recursive: bool = False,
    scheduler: str | None = None,
) -> int:
    from .shutdown import Shutdown
    from .throttle import throttles

    t0 = time.perf_counter()
    shutdown = Shutdown()
    shutdown.install()
    # the throttles start before the engine loads, so loading it is charged to the CPU budget
    io, cpu = throttles(
        max_io_mbps, max_cpu_percent, cpu_backoff_above, cpu_backoff_strength, shutdown.sleep
    )

    from . import kernelset

    try:
        kernels = kernelset.active()
    except kernelset.KernelChoiceError as e:
        _err(f"pcap-slim: {e}")
        return EXIT_USAGE
    if kernels.fallback:
        _err(
            f"note: kernels: jit — {kernels.fallback}; reinstall pcapslim where a C compiler is "
            "available for the ahead-of-time kernels (faster start, no compile on first use)"
        )
    from . import coordinator as co
    from . import report
    from .errors import PcapslimError

    metrics = None
    client = None
    if scheduler is not None:  # before anything is touched
        from . import cluster

        try:
            client = cluster.connect(scheduler)
        except PcapslimError as e:
            _err(f"pcap-slim: {e}")
            return EXIT_FAIL
    try:
        if watch:
            from . import watch as watching

            watching.require()
        if metrics_file is not None:
            from . import metrics as m

            m.require()
            metrics = m.Metrics(metrics_file)
            metrics.write()
    except (PcapslimError, OSError) as e:
        _err(f"pcap-slim: {e}")
        return EXIT_FAIL if isinstance(e, OSError) else EXIT_USAGE
    job = co.Job(
        check_only=check_only,
        use_mmap=use_mmap,
        io=io,
        cpu=cpu,
        rules=rules,
        shutdown=shutdown,
        offset_map=offset_map,
        compress_level=compress_level,
        # zstd compresses on the cores the workers leave, none under a CPU cap
        compress_threads=0 if cpu is not None else max(0, (os.cpu_count() or 1) // workers - 1),
    )
    if watch:
        assert directory is not None
        return _watch(directory, job, workers, age_minutes, as_json, rescan_seconds, metrics, t0)

    if directory is not None:
        try:
            if not dry_run and not check_only:
                for d in co.directories(directory, recursive):
                    co.clean_stale_tmps(d)
            files = co.pending_files(directory, age_minutes, recursive=recursive)
        except OSError as e:
            msg = f"{directory}: cannot read the directory: {e.strerror or e}"
            if as_json:
                print(
                    report.json_report(
                        [], int((time.perf_counter() - t0) * 1000), check_only, rules, error=msg
                    )
                )
            _err(f"FAIL {msg}")
            return EXIT_FAIL
    else:
        assert single is not None
        files = [single]

    if dry_run:
        for p in files:
            if directory is None and _marked_quietly(p):
                continue
            if as_json:
                print(report.dry_run_line(str(p)))
            else:
                _err(f"would slim: {p}")
        if not as_json:
            _err(f"dry-run: {len(files)} file(s) would be slimmed")
        return EXIT_OK

    try:
        if client is not None:
            results = _process_on_cluster(
                client,
                files,
                _cluster_options(
                    job, max_io_mbps, max_cpu_percent, cpu_backoff_above, cpu_backoff_strength
                ),  # fmt: skip
                as_json,
                show_progress,
                on_result=metrics.record if metrics is not None else None,
            )
        else:
            results = _process(
                files,
                job,
                workers,
                as_json,
                show_progress,
                check_only,
                list_marked=directory is None,
                on_result=metrics.record if metrics is not None else None,
            )
    finally:
        co.drain()
        if client is not None:
            client.close()
        if metrics is not None:
            metrics.write()
    if directory is not None:  # marked files are not listed in --dir mode
        results = [r for r in results if r.status != co.STATUS_MARKED]
    elapsed = time.perf_counter() - t0
    if as_json:
        print(report.json_report(results, int(elapsed * 1000), check_only, rules))
    else:
        _err(report.human_summary(results, elapsed, check_only))
    return EXIT_FAIL if any(r.status == co.STATUS_FAIL for r in results) else EXIT_OK


def _cluster_options(
    job: Job,
    max_io_mbps: float | None,
    max_cpu_percent: float | None,
    cpu_backoff_above: float | None,
    cpu_backoff_strength: float,
) -> ClusterOptions:
    from .cluster import Options

    return Options(
        check_only=job.check_only,
        use_mmap=job.use_mmap,
        rules=job.rules,
        max_io_mbps=max_io_mbps,
        max_cpu_percent=max_cpu_percent,
        cpu_backoff_above=cpu_backoff_above,
        cpu_backoff_strength=cpu_backoff_strength,
        compress_level=job.compress_level,
        offset_map=job.offset_map,
    )


def _process_on_cluster(
    client: object,
    files: list[Path],
    opts: ClusterOptions,
    as_json: bool,
    show_progress: bool,
    on_result: Callable[[FileResult], None] | None,
) -> list[FileResult]:
    """One task per file; a human line as each finishes (in the order they finish), the
    overall progress bar advanced by whole files."""
    from . import report
    from .cluster import slim_paths
    from .coordinator import STATUS_MARKED

    bars = _Bars(files) if show_progress else None

    def one(i: int, r: FileResult) -> None:
        if on_result is not None:
            on_result(r)
        if bars is not None:
            bars.finish(str(files[i]))
        if not as_json and r.status != STATUS_MARKED:
            line = report.human_line(r)
            if bars is not None:
                bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                _err(line)

    try:
        if bars is not None:
            bars.start()
        return slim_paths(client, files, opts, one)
    finally:
        if bars is not None:
            bars.stop()


def _watch(
    directory: Path,
    job: Job,
    workers: int,
    age_minutes: float,
    as_json: bool,
    rescan_seconds: float,
    metrics: Metrics | None,
    t0: float,
) -> int:
    """--watch: a line (or JSON object) per file as each finishes, a summary at the end."""
    from . import coordinator as co
    from . import report
    from .sdnotify import Notifier
    from .watch import Watcher

    assert job.shutdown is not None

    def on_result(r: FileResult) -> None:
        if as_json:
            print(report.json_line(report.file_entry(r)), flush=True)
        else:
            _err(report.human_line(r))
        if metrics is not None:
            metrics.record(r)

    notifier = Notifier()
    watcher = Watcher(
        directory, job, workers, age_minutes, job.shutdown, on_result, notifier, rescan_seconds
    )
    if metrics is not None:
        metrics.set_watching(True)
    code = EXIT_OK
    try:
        watcher.run()
    except OSError as e:
        _err(f"FAIL {directory}: cannot watch the directory: {e.strerror or e}")
        code = EXIT_FAIL
    finally:
        co.drain()
        if metrics is not None:
            metrics.set_watching(False)
        notifier.close()
    elapsed = time.perf_counter() - t0
    if as_json:
        summary = report.summary(watcher.results, int(elapsed * 1000), False, job.rules)
        print(report.json_line({"summary": summary}), flush=True)
    else:
        _err(report.human_summary(watcher.results, elapsed, False))
    return code


def _no_linear_algebra() -> None:
    """The kernels use no linear algebra; in the command's own process, two start-up costs of
    it are not paid. NumPy's OpenBLAS starts a thread per core on import that spins for about
    0.1 s of CPU before it sleeps (on a small sensor, a core taken from the start of every run):
    it is kept to one thread. numba probes for a BLAS the first time it loads a kernel, by
    importing scipy.linalg (0.5 to 0.7 s when SciPy is installed): it is told there is none."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.modules.setdefault("scipy.linalg.cython_blas", None)  # type: ignore[arg-type]


def _marked_quietly(p: Path) -> bool:
    from .coordinator import is_marked
    from .errors import PcapslimError

    try:
        return is_marked(p)
    except PcapslimError:
        return False


def _process(
    files: list[Path],
    job: Job,
    workers: int,
    as_json: bool,
    show_progress: bool,
    check_only: bool,
    list_marked: bool,
    on_result: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    from concurrent.futures import ThreadPoolExecutor

    from . import report
    from .coordinator import STATUS_MARKED, slim_in_place
    from .shutdown import signals_to_main

    bars = _Bars(files) if show_progress else None
    if bars is not None:
        job.on_progress = bars.update
    results: list[FileResult | None] = [None] * len(files)
    done = [False] * len(files)
    printed = 0

    def emit_ready() -> None:
        nonlocal printed
        while printed < len(results) and (results[printed] is not None or done[printed]):
            r = results[printed]
            printed += 1
            if r is None:
                continue  # not taken: the run was stopped
            if not as_json and (list_marked or r.status != STATUS_MARKED):
                line = report.human_line(r)
                if bars is not None:
                    bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
                else:
                    _err(line)

    def one(i: int) -> None:
        if job.shutdown is not None and job.shutdown.requested:
            return  # stopping: no new file (it is not listed)
        results[i] = r = slim_in_place(files[i], job)
        if on_result is not None:
            on_result(r)
        if bars is not None:
            bars.finish(str(files[i]))

    try:
        with signals_to_main():  # the progress bars' thread, and the workers
            if bars is not None:
                bars.start()
            pool = ThreadPoolExecutor(
                max_workers=max(1, min(workers, len(files) or 1)),
                thread_name_prefix="pcapslim-file",
            )
            futures = [pool.submit(one, i) for i in range(len(files))]
        with pool:
            for i, f in enumerate(futures):
                f.result()
                done[i] = True
                emit_ready()
    finally:
        if bars is not None:
            bars.stop()
    emit_ready()
    return [r for r in results if r is not None]


class _Bars:
    """One overall bar in bytes (rate, ETA) and one bar per file being worked on."""

    def __init__(self, files: list[Path]) -> None:
        import threading

        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        sizes = {}
        for p in files:
            try:
                sizes[str(p)] = os.stat(p).st_size
            except OSError:
                sizes[str(p)] = 0
        self.total = self.progress.add_task("all files", total=sum(sizes.values()) or 1)
        self.sizes = sizes
        self.tasks: dict[str, tuple[TaskID, int]] = {}  # path -> (task id, bytes reported)
        self.lock = threading.Lock()

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def update(self, path: str, done: int, total: int) -> None:
        with self.lock:
            if path not in self.tasks:
                tid = self.progress.add_task(os.path.basename(path), total=total or 1)
                self.tasks[path] = (tid, 0)
            tid, last = self.tasks[path]
            self.tasks[path] = (tid, done)
        self.progress.update(tid, completed=done)
        self.progress.advance(self.total, max(0, done - last))

    def finish(self, path: str) -> None:
        with self.lock:
            entry = self.tasks.pop(path, None)
            expected = self.sizes.get(path, 0)
        if entry is not None:
            tid, last = entry
            self.progress.remove_task(tid)
            self.progress.advance(self.total, max(0, expected - last))
        else:
            self.progress.advance(self.total, expected)


def main() -> None:
    _no_linear_algebra()
    app(prog_name="pcap-slim")
