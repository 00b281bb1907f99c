"""The pcap-slim command: a thin typed front over the run layer (pcapslim.run).

The flags become one `Options`; `--single`, `--dir` and `--watch` each become one call of the
run layer; this module prints what it hears back (the human lines and rich progress bars on
stderr, the JSON report on stdout) and turns the outcome into the exit code. Only typer loads at
start-up; the engine (and numba with it) loads inside the run, so `--help` and `--version`
answer at once.
"""

from __future__ import annotations

import enum
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from . import __version__
from .errors import EXIT_FAIL, EXIT_OK, DirectoryError, PcapslimError, UsageError
from .limits import LIMITS

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.progress import TaskID

    from .results import FileResult
    from .run import Options


class Output(enum.StrEnum):
    human = "human"
    json = "json"


class Rules(enum.StrEnum):
    compatible = "compatible"
    forensic = "forensic"


def _version(value: bool) -> None:
    """`pcap-slim X.Y.Z (kernels: ...)`: which kernels a run would use, and why."""
    if value:
        from .kernelset import describe

        try:
            kernels = describe()
        except PcapslimError as e:
            _err(f"pcap-slim: {e}")
            raise typer.Exit(e.exit_code) from None
        typer.echo(f"pcap-slim {__version__} (kernels: {kernels})")
        raise typer.Exit(EXIT_OK)


def _lo(name: str) -> float | None:
    return LIMITS[name][0]


def _hi(name: str) -> float | None:
    return LIMITS[name][1]


app = typer.Typer(add_completion=False, rich_markup_mode=None, pretty_exceptions_enable=False)


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def slim(
    ctx: typer.Context,
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Slim each of these captures in place, as --single does (for tcpdump -z, "
            "find -exec).",
            show_default=False,
        ),
    ] = None,
    write_to: Annotated[
        Path | None,
        typer.Option(
            "-w",
            "--write",
            help="With one capture (or - for standard input): write the slim copy here "
            "instead of in place (.gz, .zst: compressed); from - without it, to standard output.",
            show_default=False,
        ),
    ] = None,
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
        int,
        typer.Option(
            min=_lo("workers"),
            max=_hi("workers"),
            envvar="PCAP_SLIM_WORKERS",
            help="Files processed at once (--dir).",
        ),
    ] = 1,
    age_minutes: Annotated[
        float,
        typer.Option(
            min=_lo("age_minutes"),
            help="--dir only: skip files modified less than N minutes ago.",
        ),
    ] = 0,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files that would be slimmed; write nothing.")
    ] = False,
    check_only: Annotated[
        bool, typer.Option("--check-only", help="Analyse and report; write nothing.")
    ] = False,
    output: Annotated[
        Output, typer.Option(envvar="PCAP_SLIM_OUTPUT", help="Report format.")
    ] = Output.human,
    max_io_mbps: Annotated[
        float | None,
        typer.Option(
            min=_lo("max_io_mbps"),
            envvar="PCAP_SLIM_MAX_IO_MBPS",
            help="Cap read+write throughput, decimal MB/s, all workers.",
        ),
    ] = None,
    max_cpu_percent: Annotated[
        float | None,
        typer.Option(
            min=_lo("max_cpu_percent"),
            max=_hi("max_cpu_percent"),
            envvar="PCAP_SLIM_MAX_CPU_PERCENT",
            help="Cap this process's share of the machine's CPU.",
        ),
    ] = None,
    cpu_backoff_above: Annotated[
        float | None,
        typer.Option(
            min=_lo("cpu_backoff_above"),
            max=_hi("cpu_backoff_above"),
            envvar="PCAP_SLIM_CPU_BACKOFF_ABOVE",
            help="Lower the CPU target while the rest of the machine uses more than F %.",
        ),
    ] = None,
    cpu_backoff_strength: Annotated[
        float,
        typer.Option(
            min=_lo("cpu_backoff_strength"),
            max=_hi("cpu_backoff_strength"),
            envvar="PCAP_SLIM_CPU_BACKOFF_STRENGTH",
            help="How hard to back off, 0.0-1.0.",
        ),
    ] = 0.5,
    mmap: Annotated[bool, typer.Option("--mmap", help="Force memory-mapped reads.")] = False,
    no_mmap: Annotated[bool, typer.Option("--no-mmap", help="Force buffered reads.")] = False,
    rules: Annotated[
        Rules, typer.Option(envvar="PCAP_SLIM_RULES", help="Decision rules.")
    ] = Rules.compatible,
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
        typer.Option(
            min=_lo("rescan_seconds"),
            help="--watch: look through the directory this often as well.",
        ),
    ] = 60.0,
    metrics_file: Annotated[
        Path | None,
        typer.Option(
            envvar="PCAP_SLIM_METRICS_FILE",
            help="Write Prometheus metrics here (node_exporter textfile format).",
        ),
    ] = None,
    compress_level: Annotated[
        int | None,
        typer.Option(
            min=_lo("compress_level"),
            max=_hi("compress_level"),
            envvar="PCAP_SLIM_COMPRESS_LEVEL",
            help="Compressed captures: the level of the slim copy (gzip 1-9, default 6; zstd "
            "1-19, default 3).",
        ),
    ] = None,
    offset_map: Annotated[
        bool,
        typer.Option(
            "--offset-map",
            envvar="PCAP_SLIM_OFFSET_MAP",
            help="Write each file's old-to-new record offsets beside its marker.",
        ),
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Slim packet captures in place: keep every packet, header and handshake; cut encrypted
    payloads to their first 24 bytes."""
    if (dir is not None) + (single is not None) + bool(files) != 1:
        raise typer.BadParameter("give exactly one of --dir, --single and capture files")
    streaming = bool(files) and str(files[0]) == "-"  # type: ignore[index]
    if write_to is not None or streaming:
        if not files or len(files) != 1:
            raise typer.BadParameter("-w and - take one capture: pcap-slim IN -w OUT, or "
                                     "pcap-slim - [-w OUT]")  # fmt: skip
        if dry_run or check_only or watch or age_minutes or recursive or scheduler:
            raise typer.BadParameter(
                "a stream or a copy takes no --dry-run, --check-only, --watch, --age-minutes, "
                "--recursive or --scheduler"
            )
        raise typer.Exit(_stream(files[0], write_to, str(rules), output is Output.json))
    if mmap and no_mmap:
        raise typer.BadParameter("--mmap and --no-mmap exclude each other")
    if dir is None and age_minutes:
        raise typer.BadParameter("--age-minutes applies to --dir only")
    if dir is None and watch:
        raise typer.BadParameter("--watch applies to --dir only")
    if dir is None and (recursive or scheduler):
        raise typer.BadParameter("--recursive and --scheduler apply to --dir only")
    options = _options(ctx.params)
    as_json = output is Output.json
    if progress is None:
        progress = sys.stderr.isatty() and not as_json
    front = _Front(options, as_json, progress and not watch and not dry_run)
    if watch:
        assert dir is not None
        code = front.watch(dir)
    elif dir is not None:
        code = front.slim(dir, directory=True)
    else:
        code = front.slim_files([single] if single is not None else list(files or ()))
    if options.stop is not None and options.stop.stranded:
        # files left to threads blocked in the system: the report is out, the process ends
        # without waiting for them (their tmp files are taken over by the next run)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise typer.Exit(code)


def _stream(src: Path, write_to: Path | None, rules: str, as_json: bool) -> int:
    """pcap-slim - [-w OUT] and pcap-slim IN -w OUT: the capture read in order and slimmed as it
    comes (pcapslim.stream); the report on standard error, which leaves standard output to
    the capture."""
    from . import report
    from .results import STATUS_FAIL, STATUS_OK, FileResult
    from .stream import FileOutput, ReaderGone, StopFlag, fd_writer, slim_stream

    t0 = time.perf_counter()
    name = "-" if str(src) == "-" else str(src)
    out: FileOutput | None = None
    fd_in = 0
    result: FileResult
    try:
        if name != "-":
            fd_in = os.open(name, os.O_RDONLY)
        if write_to is not None:
            out = FileOutput(str(write_to))
        with StopFlag() as stop:
            write = out.write if out is not None else fd_writer(1)
            stats = slim_stream(fd_in, write, rules=rules, name=name, stopping=stop)
        if out is not None:
            out.commit()
            stats.out_bytes = out.disk_bytes
        result = FileResult(name, STATUS_OK, stats)
    except ReaderGone:
        return EXIT_OK  # whoever read the capture went away: nothing more to say
    except (PcapslimError, OSError) as e:  # OSError: the input, or where the copy goes
        if out is not None:
            out.abandon()
        result = FileResult(name, STATUS_FAIL, error=str(e))
    finally:
        if fd_in != 0:
            os.close(fd_in)
    ms = int((time.perf_counter() - t0) * 1000)
    if as_json:
        _err(report.json_report([result], ms, False, rules))
    else:
        _err(report.human_line(result))
        _err(report.human_summary([result], ms / 1000, False))
    return EXIT_OK if result.status == STATUS_OK else EXIT_FAIL


def _options(flags: dict[str, Any]) -> Options:
    """The run's options: each flag named like a field of Options is that field; the pair
    --mmap/--no-mmap is one; the stop is the command's own."""
    from dataclasses import fields

    from .run import Options
    from .shutdown import Shutdown

    given = {f.name: flags[f.name] for f in fields(Options) if f.name in flags}
    given.update(
        rules=str(flags["rules"]),
        mmap=True if flags["mmap"] else False if flags["no_mmap"] else None,
        metrics_file=str(flags["metrics_file"]) if flags["metrics_file"] is not None else None,
        stop=Shutdown(),
    )
    try:
        return Options(**given)
    except UsageError as e:
        raise typer.BadParameter(str(e)) from None


def _err(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


class _Front:
    """One run of the command: the run layer's callbacks become lines, bars and reports."""

    def __init__(self, options: Options, as_json: bool, show_progress: bool) -> None:
        self.options = options
        self.as_json = as_json
        self.show_progress = show_progress
        self.directory = False  # a directory run: files marked meanwhile are not listed
        self.t0 = time.perf_counter()
        self.bars: _Bars | None = None
        self.lines: _Lines | None = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def slim_files(self, targets: list[Path]) -> int:
        """--single FILE, or FILE...: each in place, in the given order."""
        return self.slim(targets[0], directory=False, targets=targets)

    def slim(self, target: Path, directory: bool, targets: list[Path] | None = None) -> int:
        """--dir, --single and files: a line per file (in the order of the listing, or as the
        files finish on a cluster), then the summary or the JSON report."""
        from . import report, run
        from .shutdown import EXIT_SECONDS

        o = self.options
        assert o.stop is not None
        self.directory = directory
        with o.stop.installed(exit_seconds=EXIT_SECONDS):
            try:
                if directory:
                    results = run.slim_dir(
                        target,
                        self._with_progress(),
                        on_result=self._result,
                        on_listed=self._listed,
                        on_notice=_err,
                    )
                else:
                    options = self._with_progress()
                    paths = targets or [target]
                    self._listed(paths)
                    results = run.slim_files(paths, options, on_result=self._result, on_notice=_err)
            except DirectoryError as e:
                if self.as_json:
                    print(report.json_report([], self._ms(), o.check_only, o.rules, error=str(e)))
                _err(f"FAIL {e}")
                return EXIT_FAIL
            except PcapslimError as e:  # the options, the installation, the cluster
                return _run_error(e)
            finally:
                self._stop_bars()
            if self.lines is not None:
                self.lines.flush()
            if o.dry_run:
                if not self.as_json:
                    _err(f"dry-run: {len(results)} file(s) would be slimmed")
                return EXIT_OK
            if self.as_json:
                print(report.json_report(results, self._ms(), o.check_only, o.rules))
            else:
                _err(report.human_summary(results, self.elapsed(), o.check_only))
            return _exit_code(results)

    def watch(self, directory: Path) -> int:
        """--watch: a line (or JSON object) per file as each finishes, a summary at the end."""
        from . import report, run
        from .sdnotify import Notifier
        from .shutdown import EXIT_SECONDS

        o = self.options
        assert o.stop is not None
        seen: list[FileResult] = []

        def on_result(r: FileResult) -> None:
            seen.append(r)
            if self.as_json:
                print(report.json_line(report.file_entry(r)), flush=True)
            else:
                _err(report.human_line(r))

        notifier = Notifier()
        code = EXIT_OK
        with o.stop.installed(exit_seconds=EXIT_SECONDS):
            try:
                run.watch_dir(directory, o, on_result=on_result, on_notice=_err, notifier=notifier)
            except DirectoryError as e:
                _err(f"FAIL {e}")
                code = EXIT_FAIL
            except PcapslimError as e:
                return _run_error(e)
            finally:
                notifier.close()
            if self.as_json:
                summary = report.summary(seen, self._ms(), False, o.rules)
                print(report.json_line({"summary": summary}), flush=True)
            else:
                _err(report.human_summary(seen, self.elapsed(), False))
        return code

    def _ms(self) -> int:
        return int(self.elapsed() * 1000)

    def _with_progress(self) -> Options:
        if not self.show_progress:
            return self.options
        from dataclasses import replace

        self.bars = _Bars()
        return replace(self.options, on_progress=self.bars.update)

    def _listed(self, files: list[Path]) -> None:
        """The files of the run, before the first is taken: the order of the human lines (a
        cluster's come as they finish) and the size of the overall bar."""
        if not self.as_json and self.options.scheduler is None and not self.options.dry_run:
            self.lines = _Lines([str(p) for p in files], self._print, listed=self.directory)
        if self.bars is not None:
            self.bars.start(files)

    def _result(self, r: FileResult) -> None:
        """A file finished: its line (human), or, in a dry run, its JSON line."""
        from . import report
        from .results import STATUS_MARKED

        if self.bars is not None:
            self.bars.finish(r.path)
        if self.as_json:
            if self.options.dry_run:
                print(report.json_line(report.file_entry(r)))
        elif self.lines is not None:
            self.lines.add(r)
        elif not (self.directory and r.status == STATUS_MARKED):  # not listed in --dir runs
            self._print(report.human_line(r))

    def _print(self, line: str) -> None:
        if self.bars is not None:
            self.bars.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            _err(line)

    def _stop_bars(self) -> None:
        if self.bars is not None:
            self.bars.stop()


def _run_error(e: PcapslimError) -> int:
    """An error of the whole run, before any file was touched: options that exclude each other
    are a usage error as typer words them; the installation and the cluster say what is wrong."""
    if type(e) is UsageError:
        raise typer.BadParameter(str(e)) from None
    _err(f"pcap-slim: {e}")
    return e.exit_code


def _exit_code(results: list[FileResult]) -> int:
    from .results import STATUS_FAIL

    return EXIT_FAIL if any(r.status == STATUS_FAIL for r in results) else EXIT_OK


class _Lines:
    """Human lines in the order of the listing, each printed once every file before it has
    been heard of; `flush` prints the rest (files a stopped run never took have none). In a
    directory run (`listed`), a file marked since the listing is heard of but has no line."""

    def __init__(self, paths: list[str], emit: Callable[[str], None], listed: bool) -> None:
        self._index = {p: i for i, p in enumerate(paths)}
        self._lines: list[str | None] = [None] * len(paths)  # "" heard of, with no line
        self._next = 0
        self._emit = emit
        self._listed = listed

    def add(self, r: FileResult) -> None:
        from . import report
        from .results import STATUS_MARKED

        quiet = self._listed and r.status == STATUS_MARKED
        i = self._index.get(r.path)
        if i is None:
            if not quiet:
                self._emit(report.human_line(r))
            return
        self._lines[i] = "" if quiet else report.human_line(r)
        while self._next < len(self._lines) and self._lines[self._next] is not None:
            line = self._lines[self._next]
            if line:
                self._emit(line)
            self._next += 1

    def flush(self) -> None:
        for line in self._lines[self._next :]:
            if line:
                self._emit(line)
        self._next = len(self._lines)


class _Bars:
    """One overall bar in bytes (rate, ETA) and one bar per file being worked on."""

    def __init__(self) -> None:
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
        self.sizes: dict[str, int] = {}
        self.tasks: dict[str, tuple[TaskID, int]] = {}  # path -> (task id, bytes reported)
        self.lock = threading.Lock()
        self.total: TaskID | None = None

    def start(self, files: list[Path]) -> None:
        from .shutdown import signals_to_main

        for p in files:
            try:
                self.sizes[str(p)] = os.stat(p).st_size
            except OSError:
                self.sizes[str(p)] = 0
        self.total = self.progress.add_task("all files", total=sum(self.sizes.values()) or 1)
        with signals_to_main():  # the bars' refresh thread leaves the stop signals to main
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
        if self.total is not None:
            self.progress.advance(self.total, max(0, done - last))

    def finish(self, path: str) -> None:
        with self.lock:
            entry = self.tasks.pop(path, None)
            expected = self.sizes.get(path, 0)
        if entry is not None:
            tid, last = entry
            self.progress.remove_task(tid)
            expected = max(0, expected - last)
        if self.total is not None:
            self.progress.advance(self.total, expected)


def _no_linear_algebra() -> None:
    """The kernels use no linear algebra; in the command's own process, two start-up costs of
    it are not paid. NumPy's OpenBLAS starts a thread per core on import that spins for about
    0.1 s of CPU before it sleeps (on a small sensor, a core taken from the start of every run):
    it is kept to one thread. numba probes for a BLAS the first time it loads a kernel, by
    importing scipy.linalg (0.5 to 0.7 s when SciPy is installed): it is told there is none."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sys.modules.setdefault("scipy.linalg.cython_blas", None)  # type: ignore[arg-type]


def main() -> None:
    _no_linear_algebra()
    app(prog_name="pcap-slim")
